"""``python -m datarun_operator [-n NAMESPACE ...] [--liveness URL]``: run the operator.

Equivalent to ``kopf run -m datarun_operator.handlers --standalone -A`` (or ``-n``); the chart's
Deployment uses this form. Settings come from DATARUN_OPERATOR_* variables (see settings.py).
"""

from __future__ import annotations

import argparse
import logging
import sys

import kopf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datarun_operator", description="Run the DataRun operator.")
    parser.add_argument(
        "-n", "--namespace", action="append", default=[], help="serve only this namespace (repeatable); default: all"
    )
    parser.add_argument("--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from datarun_operator import handlers  # registers the handlers

    del handlers
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=True,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

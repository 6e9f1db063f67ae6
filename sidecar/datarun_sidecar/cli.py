"""`datarun-sidecar fuse -c <coord_dir> -d "<datarun command>" ...`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import NoReturn

from datarun_sidecar.fuse import FuseSidecar, SidecarUsageError, parse_commands

# 128 + SIGTERM, what a shell reports for a process ended by it.
TERMINATED = 143


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # The kubelet's SIGTERM (pod deleted) must unwind the lifecycle so its `finally` unmounts; Python's default
    # would end the process on the spot and leave a dead FUSE mount that keeps the pod Terminating. Raised as
    # KeyboardInterrupt because datarun's own clean-up paths (spooled packs, half uploads) already handle that.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(
            "datarun-sidecar: terminated (SIGTERM); inputs unmounted, an unfinished upload left nothing visible",
            file=sys.stderr,
        )
        return TERMINATED


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="datarun-sidecar")
    sub = parser.add_subparsers(dest="kind", required=True)
    fuse = sub.add_parser("fuse", help="mount inputs, upload outputs when the app ends")
    fuse.add_argument("-c", dest="coord", required=True, help="coordination folder shared with the app")
    fuse.add_argument("-d", dest="commands", action="append", default=[], help="a datarun command (repeatable)")
    fuse.add_argument("--store", default=None, help="store URL (default: DATARUN_STORE, config, local default)")
    fuse.add_argument(
        "--termination-log",
        default=os.environ.get("DATARUN_TERMINATION_LOG", "/dev/termination-log"),
        help="where the result goes for Kubernetes ('' to disable)",
    )
    fuse.add_argument("--mount-timeout", type=float, default=300.0)
    fuse.add_argument("--app-heartbeat-timeout", type=float, default=60.0)
    pg = sub.add_parser("postgres", help="serve databases configured by dm_pg_opts / dm_pg_db_<id>")
    pg.add_argument("--store", default=None, help="store URL (default: DATARUN_STORE, config, local default)")
    pg.add_argument("--termination-log", default=os.environ.get("DATARUN_TERMINATION_LOG", "/dev/termination-log"))
    pg.add_argument("--work-dir", default=None, help="where the clusters live (default: a temp folder)")
    pg.add_argument("--config", default=None, help="YAML file equivalent to dm_pg_opts / dm_pg_db_<id>")
    pg.add_argument("--app-heartbeat-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    log_path = Path(args.termination_log) if args.termination_log else None
    if log_path is not None and not log_path.parent.exists():
        log_path = None
    if args.kind == "postgres":
        from datarun_sidecar.postgres import PostgresSidecar
        from datarun_sidecar.postgres_plan import PostgresSidecarError, plan_from_env, plan_from_yaml

        try:
            pg_plan = plan_from_yaml(Path(args.config)) if args.config else plan_from_env(os.environ)
        except PostgresSidecarError as err:
            print(f"datarun-sidecar: {err}", file=sys.stderr)
            return 2
        return PostgresSidecar(
            pg_plan,
            store=args.store,
            termination_log=log_path,
            work_dir=Path(args.work_dir) if args.work_dir else None,
            app_heartbeat_timeout=args.app_heartbeat_timeout,
        ).run()
    try:
        plan = parse_commands(args.commands)
    except SidecarUsageError as err:
        print(f"datarun-sidecar: {err}", file=sys.stderr)
        return 2
    sidecar = FuseSidecar(
        Path(args.coord),
        plan,
        termination_log=log_path,
        store=args.store,
        mount_timeout=args.mount_timeout,
        app_heartbeat_timeout=args.app_heartbeat_timeout,
    )
    return sidecar.run()


def entry() -> NoReturn:
    """The ``datarun-sidecar`` command: :func:`main`, then out at once.

    By the time ``main`` returns, the result is written and the lifecycle's ``finally`` has unmounted the
    inputs and stopped the servers. What the interpreter would still do (module teardown, the gcs/azure
    clients' finalizers) takes 50-80 ms and changes nothing, but the pod's run only ends when this process
    has, so it is skipped. In-process callers (tests) use ``main``, which returns.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing left to say on it
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()

"""The ``--kubeconfig`` option and the ``cluster`` marker of the cluster tests.

pytest honours ``pytest_addoption`` only in plugins and in the conftest files it loads before parsing the
command line (the rootdir's, and those of the directories named on it). tests/cluster/conftest.py re-exports
these hooks, which covers ``pytest tests/cluster --kubeconfig ...``; listing this module in ``pytest_plugins``
of tests/conftest.py makes ``--kubeconfig`` known to every invocation (``pytest --kubeconfig ...``).
"""

from __future__ import annotations

import contextlib

import pytest

MARKER = "cluster: needs a Kubernetes control plane (tests/cluster/build.sh; or --kubeconfig)"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cluster", "Kubernetes control plane (tests/cluster)")
    # ValueError: added already (this module is a plugin of tests/conftest.py and re-exported by the conftest).
    with contextlib.suppress(ValueError):
        group.addoption(
            "--kubeconfig",
            action="store",
            default=None,
            metavar="PATH",
            help="run the cluster tests against this existing cluster instead of starting a throwaway control "
            "plane; it must run kwok with tests/cluster/stages and have a Ready kwok node 'kwok-node-0' (e.g. "
            "one started by `python -m tests.cluster.controlplane`)",
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)

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
    # ValueError: added already, by this module as a plugin of tests/conftest.py re-exported by the conftest, or,
    # for --kubeconfig, by pytest-kind, whose option means the same: use this cluster.
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
    with contextlib.suppress(ValueError):
        group.addoption(
            "--kind",
            action="store_true",
            default=False,
            help="run the cluster tests on a kind cluster made by pytest-kind (needs Docker and kind; skipped "
            "with the reason where they are missing), with kwok's fake node added to it",
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)

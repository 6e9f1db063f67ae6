"""Fixtures of the cluster tests: a real kube-apiserver (with etcd and kwok) for the whole session.

``control_plane`` starts a throwaway one (tests/cluster/controlplane.py) from the binaries that
tests/cluster/build.sh builds, uses the cluster of ``--kubeconfig PATH``, or with ``--kind`` creates a kind cluster
through pytest-kind and runs kwok's fake node on it. Without binaries the tests are skipped, except under
``CI=true``, where that is an error. ``--kind`` needs a Docker engine and a ``kind`` binary; where either is missing
those runs skip and say why (kind needs a node image from a registry, which these machines cannot reach).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.cluster.controlplane import (
    NODE_NAME,
    BinariesMissingError,
    Cluster,
    ControlPlane,
    KwokOnCluster,
    find_binaries,
)
from tests.cluster.options import pytest_addoption, pytest_configure

__all__ = ["pytest_addoption", "pytest_configure"]


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    existing = request.config.getoption("kubeconfig", default=None)
    if existing:
        yield Cluster(Path(existing), NODE_NAME, None)
        return
    if request.config.getoption("kind", default=False):
        yield from _kind_cluster()
        return
    try:
        cp = ControlPlane()
    except BinariesMissingError as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {err}", pytrace=False)
        pytest.skip(str(err))
    with cp:
        yield Cluster(cp.kubeconfig, cp.node_name, cp)


def _kind_cluster() -> Iterator[Cluster]:
    why = _kind_missing()
    if why:
        pytest.skip(f"--kind: {why}")  # Docker/kind tooling is the one thing these tests may skip without
    from pytest_kind import KindCluster

    kind = KindCluster("datarun-test", kind_path=Path(str(shutil.which("kind"))), kubectl_path=find_binaries(
        names=("kubectl",))["kubectl"])  # fmt: skip
    kind.create()
    try:
        with KwokOnCluster(Path(kind.kubeconfig_path)):
            yield Cluster(Path(kind.kubeconfig_path), NODE_NAME, None)
    finally:
        kind.delete()


def _kind_missing() -> str:
    """Why a kind cluster cannot be had here ("" if it can)."""
    if shutil.which("kind") is None:
        return "no `kind` binary on PATH"
    if shutil.which("docker") is None:
        return "no `docker` on PATH"
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        return "the Docker engine does not answer (`docker info` failed)"
    try:
        import pytest_kind  # noqa: F401
    except ImportError:
        return "pytest-kind is not installed (pip install pytest-kind)"
    return ""


@pytest.fixture(scope="session")
def kube_api(control_plane: Cluster) -> Iterator[kubernetes.client.ApiClient]:
    """A kubernetes client for the control plane's kubeconfig."""
    config: Any = kubernetes.config  # untyped module
    client: kubernetes.client.ApiClient = config.new_client_from_config(
        config_file=str(control_plane.kubeconfig), persist_config=False
    )
    with client:
        yield client


@pytest.fixture
def core_v1(kube_api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(kube_api)

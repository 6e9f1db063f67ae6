"""Fixtures of the cluster tests: a real kube-apiserver (with etcd and kwok) for the whole session.

``control_plane`` starts a throwaway one (tests/cluster/controlplane.py) from the binaries that
tests/cluster/build.sh builds, or uses the cluster of ``--kubeconfig PATH``. Without binaries the tests are
skipped, except under ``CI=true``, where that is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.cluster.controlplane import NODE_NAME, BinariesMissingError, Cluster, ControlPlane
from tests.cluster.options import pytest_addoption, pytest_configure

__all__ = ["pytest_addoption", "pytest_configure"]


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    existing = request.config.getoption("kubeconfig", default=None)
    if existing:
        yield Cluster(Path(existing), NODE_NAME, None)
        return
    try:
        cp = ControlPlane()
    except BinariesMissingError as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {err}", pytrace=False)
        pytest.skip(str(err))
    with cp:
        yield Cluster(cp.kubeconfig, cp.node_name, cp)


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

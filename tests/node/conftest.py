"""Fixtures of the node tier: a real node (tests/node/node.py), fake-gcs-server on the pod network, the chart.

Everything a test does to the cluster goes through ``helm`` and ``kubectl``, as a user's would. The session:

1. starts the node (lock, etcd, apiserver, scheduler, controller-manager, containerd, kubelet, kube-proxy);
2. imports datarun's images from podman (images/build.sh) into containerd, and tags the stand-ins for the images
   the examples name (``busybox:1.36``: the debootstrap'd Debian base, which has ``sh`` and coreutils;
   ``postgres:15-bookworm``: the sidecar image, which has ``psql``), since no registry can be reached;
3. starts fake-gcs-server on the bridge's address, so that the operator, the sidecars and the host share one store;
4. ``helm install``s charts/datarun with the local images (``pullPolicy: Never``) into ``datarun-system``.

Without root, runc, the binaries or the images the tier is skipped with the reason, except under ``CI=true``,
where that is a broken setup and fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from datarun.config import Config
from datarun.repo import Client, connect
from tests.node.node import NodeCluster, node_missing
from tests.node.release import (
    OPERATOR_NAMESPACE,
    PodNetworkGCS,
    images_missing,
    import_images,
    install_chart,
    local_images,
)
from tests.store.emulators import gcs_missing


def _require(missing: str | None) -> None:
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {missing}; ./dev test builds everything the node tier needs", pytrace=False)
    pytest.skip(missing)


@pytest.fixture(scope="session")
def node() -> Iterator[NodeCluster]:
    _require(node_missing())
    images = local_images()
    _require(images_missing(images))
    cluster = NodeCluster()
    with cluster:
        import_images(cluster, images)
        yield cluster


@dataclass(frozen=True)
class NodeStore:
    url: str
    env: dict[str, str]
    client: Client
    """The host's view of the store, through datarun's public API."""


@pytest.fixture(scope="session")
def store(node: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeStore]:
    _require(gcs_missing())
    server = PodNetworkGCS(tmp_path_factory.mktemp("fake-gcs"))
    server.start()
    bucket = server.new_bucket()
    env = server.env()
    saved = {key: os.environ.get(key) for key in [*env, "DATARUN_CACHE_DIR"]}
    os.environ.update(env)
    os.environ["DATARUN_CACHE_DIR"] = str(tmp_path_factory.mktemp("host-cache"))
    url = f"gs://{bucket}/datarun"
    client = connect(url, config=Config(name="node tier", email="ci@example.org"))
    try:
        yield NodeStore(url=url, env=env, client=client)
    finally:
        client.close()
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def release(node: NodeCluster, store: NodeStore) -> str:
    """charts/datarun installed with helm, its operator Deployment Ready (webhooks served from inside)."""
    install_chart(node, local_images(), store.url, store.env)
    return OPERATOR_NAMESPACE

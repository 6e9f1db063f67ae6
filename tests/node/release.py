"""What the node tier and bench/bench_node.py share: the local images, the store on the pod network, the chart.

Everything goes through ``helm`` and ``kubectl`` (and ``ctr`` for images, as there is no registry).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from tests.node.node import GATEWAY, NodeCluster
from tests.store.emulators import FakeGCS

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "datarun-system"
RUN_NAMESPACE = "runs"
SECRET = "datarun-store"


@dataclass(frozen=True)
class Images:
    operator: str
    sidecar: str
    base: str


def local_images() -> Images:
    tag = version("datarun")
    return Images(
        operator=f"localhost/datarun-operator:{tag}",
        sidecar=f"localhost/datarun-sidecar:{tag}",
        base="localhost/datarun-base:bookworm",
    )


def images_missing(images: Images) -> str | None:
    for image in (images.operator, images.sidecar, images.base):
        if subprocess.run(["podman", "image", "exists", image], check=False).returncode != 0:
            return f"image {image} is missing from podman: run images/build.sh"
    return None


class PodNetworkGCS(FakeGCS):
    """fake-gcs-server on the bridge's address: the host and every pod reach it at the same URL."""

    @property
    def base_url(self) -> str:
        return f"http://{GATEWAY}:{self.port}"

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("-host") + 1] = GATEWAY
        return argv

    def env(self, port: int | None = None) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": f"http://{GATEWAY}:{port or self.port}"}


def import_images(node: NodeCluster, images: Images) -> None:
    """datarun's images from podman into containerd, plus stand-ins for the images the examples name."""
    node.import_podman_images(images.operator, images.sidecar, images.base)
    # No registry here: `busybox:1.36` is the debootstrap'd Debian base (sh, coreutils), `postgres:15-bookworm`
    # the sidecar image (it has psql). Tagging makes no copy.
    node.ctr("images", "tag", "--force", images.base, "docker.io/library/busybox:1.36")
    node.ctr("images", "tag", "--force", images.sidecar, "docker.io/library/postgres:15-bookworm")


def install_chart(node: NodeCluster, images: Images, store_url: str, store_env: dict[str, str]) -> None:
    """The Secret in both namespaces, then ``helm install --wait`` of charts/datarun with the local images."""
    for namespace in (OPERATOR_NAMESPACE, RUN_NAMESPACE):
        node.kubectl("create", "namespace", namespace)
        node.kubectl(
            "create", "secret", "generic", SECRET, "-n", namespace,
            *(f"--from-literal={key}={value}" for key, value in store_env.items()),
        )  # fmt: skip
    repository, tag = images.operator.rsplit(":", 1)
    sidecar_repository, sidecar_tag = images.sidecar.rsplit(":", 1)
    node.helm(
        "install", "datarun", str(ROOT / "charts" / "datarun"), "-n", OPERATOR_NAMESPACE,
        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
        "--set", f"sidecarImage.repository={sidecar_repository}", "--set", f"sidecarImage.tag={sidecar_tag}",
        "--set", "sidecarImage.pullPolicy=Never",
        "--set", f"wrapperImage.repository={sidecar_repository}", "--set", f"wrapperImage.tag={sidecar_tag}",
        "--set", f"store.url={store_url}", "--set", f"store.credentialsSecret={SECRET}",
        "--set", "operator.resyncSeconds=5",
        "--wait", "--timeout", "5m",
    )  # fmt: skip

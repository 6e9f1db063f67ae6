"""A real uvicorn server of the web view on loopback, over a store with two bundles."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from datarun.repo import Client
from datarun.store import LocalStore
from datarun.web.app import create_app


@dataclass(frozen=True)
class Site:
    base: str
    client: Client
    src: Path
    first: str  # bundle ids
    second: str
    big_sha256: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(client: Client, *, page_size: int = 200) -> Iterator[str]:
    """The web view of ``client`` served by uvicorn on a free loopback port; yields its base URL."""
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(client, page_size=page_size), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the web server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("web")
    src = root / "src"
    (src / "images" / "day1").mkdir(parents=True)
    (src / "meta.csv").write_text("id,name\n1,a\n")
    big = os.urandom(5 << 20) + b"tail"  # several chunks: the download is reassembled and checked
    (src / "images" / "day1" / "frame 1.bin").write_bytes(big)
    (src / "images" / "notes.txt").write_text("hello\n")
    (src / "images" / "link").symlink_to("notes.txt")
    client = Client(LocalStore(root / "store"), cache_dir=root / "cache", author=("ada", "ada@example.org"))
    client.create_repo("cams", "camera frames")
    first = client.upload("cams", src, "day one", label="latest").bundle.id
    (src / "meta.csv").write_text("id,name\n1,a\n2,b\n")
    (src / "images" / "notes.txt").unlink()
    (src / "images" / "link").unlink()
    (src / "added.txt").write_text("new\n")
    second = client.upload("cams", src, "day two", label="latest").bundle.id
    with serve(client, page_size=3) as base:
        yield Site(base, client, src, first, second, hashlib.sha256(big).hexdigest())
    client.close()

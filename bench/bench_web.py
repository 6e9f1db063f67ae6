"""The web view's bundle page for a bundle of 100,000 files, against listing it whole.

    .venv/bin/python bench/bench_web.py              # 100 folders x 1,000 files, 3 runs
    .venv/bin/python bench/bench_web.py --files 10000

Each run starts a fresh app and client (no tree, template or index cache from an earlier run)
behind a real uvicorn server on loopback, and times over HTTP: the bundle page's first page
(cold, then again), a page deep in the listing (the first such request indexes the bundle
once), another one, a folder's page. The peer row is what a page
that is not paged would at least cost: ``Client.list_files`` over the whole manifest. Bar: the
first page in < 300 ms.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import uvicorn

from datarun.repo import Client
from datarun.store import LocalStore
from datarun.web.app import create_app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.status == 200, url
        response.read()
    return time.perf_counter() - start


def one_run(root: Path, folders: int) -> dict[str, float]:
    client = Client(LocalStore(root / "store"), cache_dir=root / "cache")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(client), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}/repos/big/bundles/latest"
    middle = f"dir-{folders // 2:03d}"
    out = {
        "first page, cold": fetch(base),
        "first page, again": fetch(base),
        "page in the middle (after=), builds the listing": fetch(f"{base}?after={middle}/file-0500.txt"),
        "another page in the middle": fetch(f"{base}?after={middle}/file-0700.txt"),
        "a folder's first page": fetch(f"{base}/tree/dir-{folders - 1:03d}"),
    }
    start = time.perf_counter()
    bundle = client.resolve("big", label="latest")
    count = sum(1 for _ in client.list_files(bundle))
    out["peer: Client.list_files, whole manifest"] = time.perf_counter() - start
    assert count >= bundle.file_count
    server.should_exit = True
    thread.join(10)
    client.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    folders = max(args.files // 1000, 1)
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        root = Path(tmp)
        src = root / "src"
        for d in range(folders):
            folder = src / f"dir-{d:03d}"
            folder.mkdir(parents=True)
            for f in range(args.files // folders):
                (folder / f"file-{f:04d}.txt").write_bytes(b"%d/%d\n" % (d, f))
        client = Client(LocalStore(root / "store"), cache_dir=root / "cache")
        client.create_repo("big")
        bundle = client.upload("big", src, "many files", label="latest").bundle
        client.close()
        runs = [one_run(root, folders) for _ in range(args.runs)]
    print(f"\nbundle of {bundle.file_count} files in {folders} folders, page size 200, {args.runs} runs\n")
    print("| request | ms, range over runs | bar |\n|---|---|---|")
    for key in runs[0]:
        values = [r[key] * 1000 for r in runs]
        bar = "< 300" if key == "first page, cold" else ""
        print(f"| {key} | {min(values):.0f} - {max(values):.0f} | {bar} |")
    return 0 if max(r["first page, cold"] for r in runs) < 0.3 else 1


if __name__ == "__main__":
    sys.exit(main())

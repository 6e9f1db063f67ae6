"""Cloud backends under faults: flaky and dead networks, bad credentials, missing buckets,
racing label writers, and an emulator killed in the middle of an upload."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from datarun.cas.packs import PackWriter
from datarun.errors import ConflictError, NotFoundError, PreconditionFailed, StoreError
from datarun.model import Label
from datarun.repo import Client
from datarun.store import ObjectStore
from datarun.store.retry import RetryPolicy
from tests.store.emulators import (
    DEV_KEY,
    Azurite,
    Emulator,
    closed_port,
    start_azurite,
    start_fake_gcs,
)

# -- a misbehaving loopback proxy ------------------------------------------------------------


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN, as a crashing peer or a middlebox would. The shutdown
    wakes a pump thread blocked in recv on this socket; until it lets go, close alone would
    not reach the network."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """A TCP proxy to ``127.0.0.1:<upstream>`` that spoils the first ``count`` connections
    (all of them when ``count`` is None). Modes:

    - ``close``: accept, then close at once;
    - ``reset``: read the request, then reset the connection;
    - ``delay``: hold the request ``delay`` seconds, then forward it (a slow network);
    - ``cut``: forward the request, then reset instead of returning the answer, so the
      server did the work but the client never hears of it.

    At most ``max_connections`` are served at once (two threads each); more are reset.
    """

    def __init__(
        self,
        upstream_port: int,
        mode: str = "reset",
        count: int | None = 2,
        delay: float = 0.0,
        max_connections: int = 64,
    ) -> None:
        assert mode in ("close", "reset", "delay", "cut")
        self.upstream_port = upstream_port
        self.mode = mode
        self.count = count
        self.delay = delay
        self.accepted = 0
        self.faulted = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stop = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._acceptor = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._acceptor.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(5)
        self._listener.close()
        with self._lock:
            live = list(self._sockets)
        for sock in live:  # shutdown, unlike close, wakes a thread blocked in recv
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                faulty = self.count is None or self.faulted < self.count
                if faulty:
                    self.faulted += 1
            if not self._slots.acquire(blocking=False):
                _reset(client)
                continue
            thread = threading.Thread(target=self._serve, args=(client, faulty), daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, client: socket.socket, faulty: bool) -> None:
        upstream: socket.socket | None = None
        try:
            self._track(client)
            if faulty and self.mode == "close":
                client.close()
                return
            if faulty and self.mode == "reset":
                client.settimeout(5)
                with contextlib.suppress(OSError):
                    client.recv(65536)
                _reset(client)
                return
            if faulty and self.mode == "delay" and self._stop.wait(self.delay):
                return
            upstream = self._track(socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5))
            upstream.settimeout(None)
            forward = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            forward.start()
            if faulty and self.mode == "cut":
                with contextlib.suppress(OSError):
                    upstream.recv(1)  # the first byte of the answer: the server has done the work
                _reset(client)
            else:
                self._pump(upstream, client)
            forward.join(5)
        except OSError:
            _reset(client)
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
                    with self._lock:
                        self._sockets.discard(sock)
            self._slots.release()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def bucket(cloud: Emulator) -> Iterator[str]:
    name = cloud.new_bucket()
    yield name
    cloud.drop_bucket(name)


def small_tree(root: Path) -> Path:
    (root / "d").mkdir(parents=True)
    (root / "d" / "one.txt").write_text("one\n" * 500)
    (root / "two.bin").write_bytes(os.urandom(300_000))
    return root


def same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in files
    )


# -- (a) flaky and dead networks ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["close", "reset", "cut", "delay"])
def test_operations_and_transfers_survive_spoiled_connections(
    cloud: Emulator, bucket: str, mode: str, tmp_path: Path
) -> None:
    with FaultProxy(cloud.port, mode, count=2, delay=2.5) as proxy:
        # A short read timeout turns the delayed connections into timeouts worth retrying.
        store = cloud.store(bucket, port=proxy.port, read_timeout=1.0 if mode == "delay" else 30.0)
        try:
            # First call meets both spoiled connections; in "cut" mode the create lands on the
            # server twice-unheard, and the retry must recognise its own write, not report a conflict.
            created = store.put_if_absent("labels/x", b"v1")
            assert proxy.faulted == 2
            assert store.read("labels/x") == (b"v1", created)
            moved = store.put_if_match("labels/x", b"v2", created.etag)
            with pytest.raises(PreconditionFailed):
                store.put_if_match("labels/x", b"v3", created.etag)
            assert store.head("labels/x") == moved
            store.put("packs/ab/p1", bytes(range(256)) * 64)
            assert store.get_range("packs/ab/p1", 256, 4) == bytes([0, 1, 2, 3])
            assert [i.key for i in store.list("packs/")] == ["packs/ab/p1"]
            store.delete("packs/ab/p1")

            client = Client(store, cache_dir=tmp_path / "cache")
            client.create_repo("flaky")
            src = small_tree(tmp_path / "src")
            result = client.upload("flaky", src, "through a bad network", label="latest")
            out = tmp_path / "out"
            client.download(client.resolve("flaky", label="latest"), out)
            assert same_tree(src, out)
            assert client.verify(result.bundle).ok
        finally:
            store.close()


def test_a_lost_answer_to_a_conditional_write_is_not_a_conflict(cloud: Emulator, bucket: str) -> None:
    with FaultProxy(cloud.port, "cut", count=0) as proxy:
        store = cloud.store(bucket, port=proxy.port)
        try:
            proxy.count = proxy.faulted + 1  # spoil exactly the next connection
            first = store.put_if_absent("label", b"mine")
            assert proxy.faulted == 1
            with pytest.raises(PreconditionFailed):
                store.put_if_absent("label", b"someone else")
            proxy.count = proxy.faulted + 1
            # The pooled connection is reused, so open a fresh one by closing the pool first.
            store.close()
            store = cloud.store(bucket, port=proxy.port)
            second = store.put_if_match("label", b"mine too", first.etag)
            assert store.read("label") == (b"mine too", second)
        finally:
            store.close()


def test_a_dead_network_fails_fast_naming_store_and_object(cloud: Emulator, bucket: str, tmp_path: Path) -> None:
    payload = tmp_path / "pack"
    payload.write_bytes(b"x" * 100_000)
    with FaultProxy(cloud.port, "reset", count=None) as proxy:
        store = cloud.store(bucket, port=proxy.port)
        try:
            checks: list[tuple[str, Callable[[], object]]] = [
                ("read", lambda: store.read("packs/ab/abcdef")),
                ("write", lambda: store.put("packs/ab/abcdef", payload)),
                ("list keys under", lambda: list(store.list("index/"))),
            ]
            for action, call in checks:
                started = time.monotonic()
                with pytest.raises(StoreError) as err:
                    call()
                elapsed = time.monotonic() - started
                message = str(err.value)
                assert elapsed < 10, f"{action} took {elapsed:.1f} s to give up"
                assert f"store `{store.url}`: cannot {action}" in message
                assert "`packs/ab/abcdef`" in message or "`index/`" in message
                assert "after 5 attempts" in message and "reachable" in message
        finally:
            store.close()


# -- (b) credentials, missing buckets, closed ports --------------------------------------------


def reads_and_writes(store: ObjectStore) -> list[Callable[[], object]]:
    return [lambda: store.read("k"), lambda: store.put("k", b"x"), lambda: list(store.list(""))]


def test_wrong_account_key_is_one_line_about_credentials(azurite_server: Azurite, tmp_path: Path) -> None:
    container = azurite_server.new_bucket()
    wrong_key = "QUJD" * 22  # valid base64, wrong key
    for key in (wrong_key, "not!base64"):
        env = azurite_server.env(key=key)
        store = azurite_server.store(container, env=env)
        try:
            for call in reads_and_writes(store):
                with pytest.raises(StoreError) as err:
                    call()
                message = str(err.value)
                assert "\n" not in message
                assert "access denied" in message and "check the credentials" in message
                assert "AZURE_STORAGE_CONNECTION_STRING" in message and "DATARUN_AZURE_STORAGE_KEY" in message
                assert key not in message and env["AZURE_STORAGE_CONNECTION_STRING"] not in message
                assert key not in repr(store) and key not in repr(err.value.__cause__)
        finally:
            store.close()
    azurite_server.drop_bucket(container)


class _Forbidden(http.server.BaseHTTPRequestHandler):
    def _deny(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"error": {"code": 403, "message": "caller does not have storage.objects.get access"}})
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_PUT = do_DELETE = _deny

    def log_message(self, *args: Any) -> None:
        pass


def test_gcs_access_denied_is_one_line_about_credentials(gcs_server: Emulator) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forbidden)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        store = gcs_server.store("somebucket", env={"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{server.server_port}"})
        try:
            for call in (lambda: store.read("k"), lambda: store.put("k", b"x"), lambda: store.head("k")):
                with pytest.raises(StoreError) as err:
                    call()
                assert "access denied" in str(err.value) and "check the credentials" in str(err.value)
                assert "GOOGLE_APPLICATION_CREDENTIALS" in str(err.value)
        finally:
            store.close()
    finally:
        server.shutdown()
        server.server_close()


def test_a_missing_container_or_bucket_says_how_to_create_it(cloud: Emulator) -> None:
    store = cloud.store("no-such-bucket-here")
    hint = "az storage container create --name no-such-bucket-here" if isinstance(cloud, Azurite) else "gs://no-such-"
    try:
        for call in (
            lambda: store.read("k"),
            lambda: store.head("k"),
            lambda: store.put("k", b"x"),
            lambda: store.put_if_absent("k", b"x"),
            lambda: list(store.list("")),
        ):
            with pytest.raises(StoreError) as err:
                call()
            assert "does not exist" in str(err.value) and hint in str(err.value)
            assert not isinstance(err.value, NotFoundError)
    finally:
        store.close()


def test_an_unreachable_endpoint_fails_within_seconds(cloud: Emulator, bucket: str) -> None:
    store = cloud.store(bucket, port=closed_port())
    try:
        started = time.monotonic()
        with pytest.raises(StoreError) as err:
            store.read("repos/x/repo.json")
        assert time.monotonic() - started < 10
        assert f"store `{store.url}`: cannot read `repos/x/repo.json`" in str(err.value)
        assert "connection refused" in str(err.value)
    finally:
        store.close()


# -- (c) racing label writers --------------------------------------------------------------------


def test_concurrent_label_moves_have_contiguous_history(store: ObjectStore, tmp_path: Path) -> None:
    client = Client(store, cache_dir=tmp_path / "cache")
    client.create_repo("race")
    src = tmp_path / "src"
    src.mkdir()
    bundles = []
    for i in range(4):
        (src / "f.txt").write_text(f"version {i}\n")
        bundles.append(client.upload("race", src, f"v{i}").bundle.id)

    barrier = threading.Barrier(32)
    wins: list[Label] = []
    conflicts: list[int] = []
    surprises: list[BaseException] = []

    def mover(n: int) -> None:
        barrier.wait()
        try:
            wins.append(client.set_label("race", "latest", bundles[n % 4], retries=0))
        except ConflictError:
            conflicts.append(n)
        except BaseException as err:
            surprises.append(err)

    threads = [threading.Thread(target=mover, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not surprises
    assert wins and len(wins) + len(conflicts) == 32
    history = client.label_history("race", "latest")
    assert [h.seq for h in history] == list(range(1, len(wins) + 1))
    assert sorted(w.seq for w in wins) == [h.seq for h in history]
    final = client.get_label("race", "latest")
    assert final.seq == len(wins) and final.bundle == history[-1].bundle


# -- (d) an emulator killed in the middle of an upload ------------------------------------------


class SmallPackWriter(PackWriter):
    """4 MiB packs instead of 32 MiB, so 64 MiB of data makes many packs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target_size = 4 << 20


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["azurite", "gcs"])
def test_killed_mid_upload_shows_no_bundle_and_the_rerun_reuses_packs(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Azurite flushes its metadata every 5 s and on SIGTERM; a SIGKILL would also lose writes it
    # had acknowledged, which real Azure never does. fake-gcs-server's filesystem backend writes
    # through, so it gets a real SIGKILL.
    if kind == "azurite":
        server: Emulator = start_azurite(tmp_path / "emulator")
        sig = signal.SIGTERM
    else:
        server = start_fake_gcs(tmp_path / "emulator", persistent=True)
        sig = signal.SIGKILL
    try:
        bucket = server.new_bucket()
        monkeypatch.setattr("datarun.transfer.upload.PackWriter", SmallPackWriter)
        src = tmp_path / "src"
        src.mkdir()
        for i in range(8):
            (src / f"part-{i}.bin").write_bytes(os.urandom(8 << 20))
        total = 64 << 20

        store = server.store(bucket, policy=RetryPolicy(attempts=3, deadline=5))
        client = Client(store, cache_dir=tmp_path / "cache-1")
        client.create_repo("big")
        stored: list[str] = []
        lock = threading.Lock()
        real_put = store.put

        def put_then_maybe_kill(key: str, payload: Any) -> Any:
            info = real_put(key, payload)
            # Count index segments, not packs: a segment is written only after its pack, so two
            # segments in means two packs the next upload can find (packs alone are invisible).
            if key.startswith("index/"):
                with lock:
                    stored.append(key)
                    if len(stored) == 2:
                        server.stop(sig)
            return info

        monkeypatch.setattr(store, "put", put_then_maybe_kill)
        started = time.monotonic()
        with pytest.raises(StoreError) as err:
            client.upload("big", src, "interrupted", label="latest")
        assert time.monotonic() - started < 60
        assert f"store `{store.url}`" in str(err.value)
        client.close()

        server.start()
        store = server.store(bucket)
        client = Client(store, cache_dir=tmp_path / "cache-2")
        try:
            assert client.list_bundles("big") == []
            with pytest.raises(NotFoundError):
                client.get_label("big", "latest")
            assert len(list(store.list("index/"))) >= 2
            result = client.upload("big", src, "again", label="latest")
            assert result.stats.bytes_total == total
            assert 0 < result.stats.bytes_new < total, "packs written before the kill are reused"
            assert [b.id for b in client.list_bundles("big")] == [result.bundle.id]
            out = tmp_path / "out"
            client.download(result.bundle, out)
            for i in range(8):
                name = f"part-{i}.bin"
                assert hashlib.sha256((out / name).read_bytes()).digest() == (
                    hashlib.sha256((src / name).read_bytes()).digest()
                )
        finally:
            client.close()
    finally:
        server.stop()


# -- large objects go up in parallel blocks / resumable chunks ---------------------------------


def test_large_files_stream_up_in_pieces(cloud: Emulator, bucket: str, tmp_path: Path) -> None:
    big = tmp_path / "big"
    data = os.urandom(20 << 20)  # above both backends' single-request limit (8 MiB)
    big.write_bytes(data)
    store = cloud.store(bucket)
    try:
        info = store.put("packs/ff/big", big)
        assert info.size == len(data) == store.head("packs/ff/big").size
        for start in (0, (4 << 20) - 3, (8 << 20) - 1, len(data) - 10):
            assert store.get_range("packs/ff/big", start, 4096) == data[start : start + 4096]
        created = store.put_if_absent("packs/ff/big2", big)
        if isinstance(cloud, Azurite):
            # fake-gcs-server checks ifGenerationMatch only on single-request uploads, not on a
            # resumable upload sent in several chunks (real GCS checks both), so only Azurite
            # can show the create-only refusal for a multi-piece upload.
            with pytest.raises(PreconditionFailed):
                store.put_if_absent("packs/ff/big2", big)
        assert store.read("packs/ff/big2") == (data, created)
    finally:
        store.close()


def test_store_errors_do_not_carry_the_account_key(azurite_server: Azurite) -> None:
    """Even an exception's own repr (shown by --debug) must not carry the account key."""
    store = azurite_server.store("missing-container-zz")
    try:
        with pytest.raises(StoreError) as err:
            store.read("k")
        text = repr(err.value) + str(err.value.__cause__) + str(err.value.__context__)
        assert DEV_KEY not in text
        assert err.value.__suppress_context__
    finally:
        store.close()

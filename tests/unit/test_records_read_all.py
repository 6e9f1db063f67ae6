"""Reading many records: in parallel, in key order, and without listing what is not needed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from datarun.records import Records, dumps
from datarun.repo import Client
from datarun.store import LocalStore, ObjectInfo
from tests.store.counting import CountingStore


class _SlowReads(CountingStore):
    """A real local store whose GETs take a round trip's time, with the most in flight at once."""

    def __init__(self, inner: LocalStore, vanish: str = "") -> None:
        super().__init__(inner)
        self.vanish = vanish  # deleted between the LIST and its GET, as by a concurrent writer
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(0.02)
            if key == self.vanish:
                self.inner.delete(key)
            return super().read(key)
        finally:
            with self._lock:
                self.in_flight -= 1


def test_records_come_back_in_key_order_from_parallel_reads(tmp_path: Path) -> None:
    store = _SlowReads(LocalStore(tmp_path / "s"))
    for i in range(300):  # more than one window of 8 keys per worker
        store.put(f"things/{i:04d}.json", dumps({"n": i}))
    records = Records(store, workers=8)
    got = [r["n"] for r in records.read_all("things/")]
    assert got == list(range(300))
    assert store.most_in_flight > 1, "the GETs ran one at a time"
    assert store.most_in_flight <= 8


def test_a_record_deleted_between_the_list_and_its_read_is_left_out(tmp_path: Path) -> None:
    store = _SlowReads(LocalStore(tmp_path / "s"), vanish="things/0002.json")
    for i in range(5):
        store.put(f"things/{i:04d}.json", dumps({"n": i}))
    assert [r["n"] for r in Records(store).read_all("things/")] == [0, 1, 3, 4]


def test_label_list_reads_its_labels_in_parallel(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x")
    inner = LocalStore(tmp_path / "store")
    with Client(inner, cache_dir=tmp_path / "cache") as client:
        client.create_repo("r")
        bundle = client.upload("r", src, "one").bundle
        for n in range(40):
            client.set_label("r", f"l{n:02d}", bundle.id)
    store = _SlowReads(inner)
    with Client(store, cache_dir=tmp_path / "cache", workers=2) as client:
        labels = client.list_labels("r")
    assert [lbl.name for lbl in labels] == [f"l{n:02d}" for n in range(40)]
    assert {lbl.bundle for lbl in labels} == {bundle.id}
    assert store.most_in_flight > 1


def test_repo_list_finds_the_repos_by_folder_not_by_listing_every_key(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("x")
    inner = LocalStore(tmp_path / "store")
    with Client(inner, cache_dir=tmp_path / "cache") as client:
        for name in ("b", "a"):
            client.create_repo(name)
            client.upload(name, src, "one")
    inner.put("repos/half/bundles/x.json", b"{}")  # a folder with no repo record is no repo
    store = CountingStore(inner)
    with Client(store, cache_dir=tmp_path / "cache") as client:
        assert [r.name for r in client.list_repos()] == ["a", "b"]
    assert store.folder_prefixes == ["repos/"]
    assert "repos/" not in store.prefixes

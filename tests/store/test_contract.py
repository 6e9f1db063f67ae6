"""The ObjectStore contract: every backend must pass every test here unchanged."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from datarun.errors import ObjectNotFound, PreconditionFailed, UsageError
from datarun.repo import Client
from datarun.store import ObjectStore, backend_for


def test_put_then_read_returns_bytes_and_a_version(store: ObjectStore) -> None:
    info = store.put("a/b", b"hello")
    data, read_info = store.read("a/b")
    assert data == b"hello"
    assert info.size == read_info.size == 5
    assert info.etag == read_info.etag


def test_put_overwrites_and_changes_the_version(store: ObjectStore) -> None:
    first = store.put("k", b"one")
    second = store.put("k", b"two!")
    assert store.read("k")[0] == b"two!"
    assert first.etag != second.etag


def test_put_streams_from_a_file(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "payload"
    src.write_bytes(b"x" * 100_000)
    store.put("big", src)
    assert store.head("big").size == 100_000
    assert src.exists(), "a file outside the staging folder is copied, not consumed"


def test_missing_keys_raise_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.read("nope")
    with pytest.raises(ObjectNotFound):
        store.head("nope")
    with pytest.raises(ObjectNotFound):
        store.get_range("nope", 0, 1)
    assert not store.exists("nope")


def test_put_if_absent_creates_once(store: ObjectStore) -> None:
    store.put_if_absent("once", b"first")
    with pytest.raises(PreconditionFailed):
        store.put_if_absent("once", b"second")
    assert store.read("once")[0] == b"first"


def test_put_if_match_is_compare_and_swap(store: ObjectStore) -> None:
    v1 = store.put_if_absent("label", b"v1")
    v2 = store.put_if_match("label", b"v2", v1.etag)
    with pytest.raises(PreconditionFailed):
        store.put_if_match("label", b"v3", v1.etag)  # stale version
    assert store.read("label")[0] == b"v2"
    store.put_if_match("label", b"v3", v2.etag)
    assert store.read("label")[0] == b"v3"


def test_put_if_match_on_missing_key_raises_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.put_if_match("ghost", b"x", "some-etag")


def test_get_range_reads_slices_and_is_short_at_the_end(store: ObjectStore) -> None:
    store.put("r", bytes(range(256)))
    assert store.get_range("r", 10, 5) == bytes([10, 11, 12, 13, 14])
    assert store.get_range("r", 250, 100) == bytes(range(250, 256))
    assert store.get_range("r", 256, 10) == b""


def test_list_is_sorted_filtered_and_honours_start_after(store: ObjectStore) -> None:
    for key in ["p/b", "p/a", "p/c/d", "q/x", "pz"]:
        store.put(key, key.encode())
    assert [i.key for i in store.list("p/")] == ["p/a", "p/b", "p/c/d"]
    assert [i.key for i in store.list("p")] == ["p/a", "p/b", "p/c/d", "pz"]
    assert [i.key for i in store.list("p/", start_after="p/a")] == ["p/b", "p/c/d"]
    assert [i.key for i in store.list("p/c")] == ["p/c/d"]
    assert list(store.list("nothing/")) == []
    sizes = {i.key: i.size for i in store.list("")}
    assert sizes["p/c/d"] == 5


def test_list_folders_names_each_folder_that_holds_a_key_once(store: ObjectStore) -> None:
    for key in ("repos/b/repo.json", "repos/b/bundles/1.json", "repos/a-z/repo.json", "repos/a/x/y/z.json"):
        store.put(key, b"{}")
    store.put("repos/top.json", b"{}")  # a key, not a folder
    store.put("reposx/c/repo.json", b"{}")  # outside the prefix by one character
    store.put("repos/gone/repo.json", b"{}")
    store.delete("repos/gone/repo.json")  # a folder whose last key went holds nothing
    assert list(store.list_folders("repos/")) == ["repos/a-z/", "repos/a/", "repos/b/"]
    assert list(store.list_folders("repos/a/")) == ["repos/a/x/"]
    assert list(store.list_folders("repos/b/bundles/")) == []
    assert list(store.list_folders("nothing/")) == []
    assert list(store.list_folders("")) == ["repos/", "reposx/"]
    with pytest.raises(ValueError, match="ending in `/`"):
        list(store.list_folders("repos"))


def test_list_folders_pages_through_many_folders(store: ObjectStore) -> None:
    names = [f"r{i:04d}" for i in range(1_200)]  # more than one page of GCS's 1,000
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: store.put(f"repos/{name}/repo.json", b"{}"), names))
    assert list(store.list_folders("repos/")) == [f"repos/{name}/" for name in names]


def test_delete_removes_and_is_idempotent(store: ObjectStore) -> None:
    store.put("gone", b"x")
    store.delete("gone")
    store.delete("gone")
    assert not store.exists("gone")


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", "", "a/../b"])
def test_unsafe_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(UsageError):
        store.put(key, b"x")


def test_create_only_race_has_exactly_one_winner(store: ObjectStore) -> None:
    wins: list[int] = []
    losses: list[int] = []
    barrier = threading.Barrier(32)

    def racer(n: int) -> None:
        barrier.wait()
        try:
            store.put_if_absent("race", str(n).encode())
            wins.append(n)
        except PreconditionFailed:
            losses.append(n)

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 31
    assert store.read("race")[0] == str(wins[0]).encode()


def test_cas_race_has_exactly_one_winner_per_round(store: ObjectStore) -> None:
    base = store.put_if_absent("cas", b"0")
    wins: list[int] = []
    barrier = threading.Barrier(16)

    def racer(n: int) -> None:
        barrier.wait()
        try:
            store.put_if_match("cas", str(n).encode(), base.etag)
            wins.append(n)
        except PreconditionFailed:
            pass

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.read("cas")[0] == str(wins[0]).encode()


def test_whole_bundle_and_label_flow(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "one.txt").write_text("one\n" * 1000)
    (src / "two.bin").write_bytes(bytes(range(256)) * 5000)
    client = Client(store, cache_dir=tmp_path / "cache")
    client.create_repo("flow", "contract")
    first = client.upload("flow", src, "first", label="latest")
    (src / "two.bin").write_bytes(b"changed")
    second = client.upload("flow", src, "second", label="latest")
    assert [b.id for b in client.list_bundles("flow")] == [first.bundle.id, second.bundle.id]
    assert client.get_label("flow", "latest").bundle == second.bundle.id
    assert [h.bundle for h in client.label_history("flow", "latest")] == [first.bundle.id, second.bundle.id]
    changes = [(c.path, c.change) for c in client.diff(first.bundle, second.bundle)]
    assert changes == [("two.bin", "modified")]
    out = tmp_path / "out"
    client.download(client.resolve("flow", bundle=first.bundle.id), out)
    assert (out / "d" / "one.txt").read_text() == "one\n" * 1000
    assert (out / "two.bin").read_bytes() == bytes(range(256)) * 5000
    assert client.verify(second.bundle).ok


def test_the_backend_name_is_what_its_url_says_and_only_a_folder_has_local_paths(store: ObjectStore) -> None:
    # `datarun config show` names the backend from the URL alone (no credentials needed); the
    # store it would open must say the same of itself.
    assert store.backend_name == backend_for(store.url)
    assert store.backend_name in ("memory", "local", "azure", "gcs")
    store.put("packs/aa/x", b"frame")
    path = store.local_path("packs/aa/x")
    if store.backend_name == "local":
        root = store.local_path()
        assert root is not None and path == root / "packs/aa/x" and path.read_bytes() == b"frame"
    else:
        assert path is None and store.local_path() is None

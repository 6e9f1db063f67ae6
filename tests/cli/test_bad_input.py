"""Bad input: one clear line naming the thing and the fix, a documented exit code, nothing lost."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import orjson
import pytest
import zstandard

from datarun.errors import ConflictError, ExitCode
from datarun.ids import new_ksuid
from datarun.layout import manifest_key
from datarun.model import Bundle
from datarun.repo import Client, connect
from datarun.store import LocalStore
from tests.cli.conftest import Env, make_tree


def _repo_with_bundle(env: Env) -> str:
    env.ok("repo", "create", "--repo", "r")
    src = make_tree(env.tmp / "src")
    return env.ok("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--label", "v1").last_line


def test_unknown_repo_label_and_bundle_exit_3_with_a_hint(env: Env) -> None:
    result = env.run("bundle", "list", "--repo", "nope")
    assert result.code == ExitCode.NOT_FOUND
    assert "repo `nope` not found" in result.err and "datarun repo create --repo nope" in result.err
    _repo_with_bundle(env)
    result = env.run("label", "get", "--repo", "r", "--label", "missing")
    assert result.code == ExitCode.NOT_FOUND
    assert "label `missing` not found in repo `r`" in result.err and "datarun label list --repo r" in result.err
    ghost = new_ksuid()
    result = env.run("bundle", "download", "--repo", "r", "--bundle", ghost, "--destination", str(env.tmp / "d"))
    assert result.code == ExitCode.NOT_FOUND and f"bundle `{ghost}` not found in repo `r`" in result.err
    result = env.run(
        "bundle",
        "download",
        "file",
        "--file",
        "no/such",
        "--repo",
        "r",
        "--label",
        "v1",
        "--destination",
        str(env.tmp / "d"),
    )
    assert result.code == ExitCode.NOT_FOUND and "file `no/such` not found" in result.err
    assert result.err.count("\n") == 1, "one line, no traceback"


@pytest.mark.parametrize("label", ["bad/label", "..", "-dash", "white space"])
def test_invalid_label_is_a_usage_error_before_any_data_is_written(env: Env, label: str) -> None:
    env.ok("repo", "create", "--repo", "r")
    src = make_tree(env.tmp / "src")
    result = env.run("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--label", label)
    assert result.code == ExitCode.USAGE
    assert f"invalid label `{label}`" in result.err
    assert not (env.store / "packs").exists()


def test_invalid_repo_name_and_ambiguous_selection(env: Env) -> None:
    result = env.run("repo", "create", "--repo", "Bad Name")
    assert result.code == ExitCode.USAGE and "invalid repo name `Bad Name`" in result.err
    bundle = _repo_with_bundle(env)
    result = env.run("bundle", "verify", "--repo", "r", "--bundle", bundle, "--label", "v1")
    assert result.code == ExitCode.USAGE and "exactly one of --bundle or --label" in result.err
    result = env.run("bundle", "verify", "--repo", "r", "--bundle", "not-an-id")
    assert result.code == ExitCode.USAGE and "is not a bundle id" in result.err


def test_repo_created_twice_is_a_conflict(env: Env) -> None:
    env.ok("repo", "create", "--repo", "r")
    result = env.run("repo", "create", "--repo", "r")
    assert result.code == ExitCode.CONFLICT and "repo `r` already exists" in result.err


def test_label_race_has_one_winner_per_round_and_full_history(env: Env) -> None:
    env.ok("repo", "create", "--repo", "r")
    src = make_tree(env.tmp / "src")
    bundles = [
        env.ok("bundle", "upload", "--path", str(src), "--message", str(i), "--repo", "r").last_line for i in range(4)
    ]
    wins: list[str] = []
    losses: list[str] = []
    barrier = threading.Barrier(16)

    def racer(n: int) -> None:
        client = connect(env.url)
        barrier.wait()
        try:
            client.set_label("r", "race", bundles[n % 4], retries=0)
            wins.append(bundles[n % 4])
        except ConflictError as err:
            assert "moved by another writer" in str(err)
            losses.append(bundles[n % 4])
        finally:
            client.close()

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) >= 1 and len(wins) + len(losses) == 16
    client = connect(env.url)
    history = client.label_history("r", "race")
    assert [h.seq for h in history] == list(range(1, len(wins) + 1))
    assert client.get_label("r", "race").bundle == history[-1].bundle

    def patient(n: int) -> None:
        own = connect(env.url)
        own.set_label("r", "patient", bundles[n % 4], retries=100)
        own.close()

    threads = [threading.Thread(target=patient, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [h.seq for h in client.label_history("r", "patient")] == list(range(1, 17))


def test_label_set_with_wrong_expectation_is_a_conflict(env: Env) -> None:
    bundle = _repo_with_bundle(env)
    result = env.run("label", "set", "--repo", "r", "--label", "v1", "--bundle", bundle, "--expect", new_ksuid())
    assert result.code == ExitCode.CONFLICT and "points at" in result.err
    env.ok("label", "set", "--repo", "r", "--label", "v1", "--bundle", bundle, "--expect", bundle)


def test_destination_not_empty_is_refused_without_force(env: Env) -> None:
    _repo_with_bundle(env)
    dest = env.tmp / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    result = env.run("bundle", "download", "--repo", "r", "--label", "v1", "--destination", str(dest))
    assert result.code == ExitCode.CONFLICT and "is not empty; pass --force" in result.err
    assert sorted(p.name for p in dest.iterdir()) == ["mine.txt"]
    env.ok("bundle", "download", "--repo", "r", "--label", "v1", "--destination", str(dest), "--force")
    assert (dest / "mine.txt").read_text() == "keep me" and (dest / "a" / "b.txt").exists()


def test_missing_path_and_file_instead_of_folder(env: Env) -> None:
    env.ok("repo", "create", "--repo", "r")
    missing = env.tmp / "nowhere"
    result = env.run("bundle", "upload", "--path", str(missing), "--message", "m", "--repo", "r")
    assert result.code == ExitCode.LOCAL_IO and f"`{missing}` does not exist" in result.err
    afile = env.tmp / "file.txt"
    afile.write_text("x")
    result = env.run("bundle", "upload", "--path", str(afile), "--message", "m", "--repo", "r")
    assert result.code == ExitCode.LOCAL_IO and "is not a folder" in result.err


def test_unreadable_file_is_a_local_error_naming_it(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from datarun.cli.main import main

    # Root reads anything, so as root the CLI runs with the effective uid of `nobody` (the saved
    # uid stays root and is restored after), in a folder everyone can reach.
    base = Path(tempfile.mkdtemp(prefix="datarun-perm-"))
    try:
        base.chmod(0o777)
        src = make_tree(base / "src")
        locked = src / "a" / "b.txt"
        locked.chmod(0o000)
        for path in base.rglob("*"):
            if path.is_dir():
                path.chmod(0o777)
        monkeypatch.setenv("DATARUN_CACHE_DIR", str(base / "cache"))
        monkeypatch.setenv("DATARUN_CONFIG", str(base / "config.yaml"))
        monkeypatch.setenv("DATARUN_HOME", str(base / "home"))
        store = f"file://{base / 'store'}"
        capsys.readouterr()
        assert main(["--store", store, "repo", "create", "--repo", "r"]) == 0
        for path in base.rglob("*"):
            if path != locked and not path.is_symlink():
                path.chmod(0o777)
        dropped = os.geteuid() == 0
        if dropped:
            os.seteuid(65534)
        try:
            code = main(["--store", store, "bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r"])
        finally:
            if dropped:
                os.seteuid(0)
        err = capsys.readouterr().err
        assert code == ExitCode.LOCAL_IO, err
        assert f"cannot read `{locked}`" in err and "Permission denied" in err and "check its permissions" in err
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_store_that_cannot_be_written_is_a_store_error(env: Env) -> None:
    result = env.run("--store", "file:///proc/datarun-nope", "repo", "create", "--repo", "r")
    assert result.code == ExitCode.STORE
    assert "store `file:///proc/datarun-nope`" in result.err


def _craft_bundle(env: Env, entries: list[dict[str, object]]) -> str:
    """Write a manifest by hand, bypassing the writer's checks, as a hostile writer would."""
    lines = [orjson.dumps({"format": "datarun-manifest", "version": 1, "chunker": "x"})]
    lines += [orjson.dumps(e) for e in entries]
    plain = b"".join(line + b"\n" for line in lines)
    manifest_id = blake3.blake3(plain).hexdigest()
    store = LocalStore(env.store)
    store.put(manifest_key(manifest_id), zstandard.ZstdCompressor().compress(plain))
    bundle = Bundle(new_ksuid(), "r", "evil", "2026-01-01T00:00:00Z", manifest_id, 1, 0)
    store.put_if_absent(f"repos/r/bundles/{bundle.id}.json", orjson.dumps(bundle.to_json()))
    return bundle.id


@pytest.mark.parametrize(
    "entry",
    [
        {"p": "../evil", "k": "f", "m": 420, "t": 0, "s": 0, "c": []},
        {"p": "/etc/evil", "k": "f", "m": 420, "t": 0, "s": 0, "c": []},
        {"p": "ok/../../evil", "k": "f", "m": 420, "t": 0, "s": 0, "c": []},
        {"p": "link", "k": "l", "m": 511, "t": 0, "l": "../../outside"},
    ],
)
def test_manifest_paths_escaping_the_destination_are_refused(env: Env, entry: dict[str, object]) -> None:
    env.ok("repo", "create", "--repo", "r")
    bundle = _craft_bundle(env, [entry])
    dest = env.tmp / "deep" / "dest"
    result = env.run("bundle", "download", "--repo", "r", "--bundle", bundle, "--destination", str(dest))
    assert result.code == ExitCode.INTEGRITY
    assert "unsafe" in result.err
    assert not (env.tmp / "deep" / "evil").exists() and not (env.tmp / "evil").exists()
    assert not dest.exists() or not any(dest.iterdir())


def test_a_chain_of_links_climbing_out_is_refused(env: Env) -> None:
    """Each link alone normalises inside the bundle; together `c` would reach the destination's parent."""
    env.ok("repo", "create", "--repo", "r")
    entries: list[dict[str, object]] = [
        {"p": "a", "k": "d", "m": 493, "t": 0},
        {"p": "a/b", "k": "l", "m": 511, "t": 0, "l": ".."},
        {"p": "c", "k": "l", "m": 511, "t": 0, "l": "a/b/.."},
    ]
    bundle = _craft_bundle(env, entries)
    dest = env.tmp / "chain" / "dest"
    result = env.run("bundle", "download", "--repo", "r", "--bundle", bundle, "--destination", str(dest))
    assert result.code == ExitCode.INTEGRITY, result.err
    assert "unsafe symlink 'c' -> 'a/b/..'" in result.err
    assert not (dest / "c").is_symlink()


@pytest.mark.parametrize(
    ("first", "what"),
    [
        ({"p": "a", "k": "f", "m": 420, "t": 0, "s": 0, "c": []}, "file"),
        ({"p": "a", "k": "l", "m": 511, "t": 0, "l": "x"}, "symlink"),
    ],
    ids=["under-a-file", "under-a-link"],
)
def test_an_entry_inside_a_file_or_link_is_refused(env: Env, first: dict[str, object], what: str) -> None:
    env.ok("repo", "create", "--repo", "r")
    inner = {"p": "a/b", "k": "f", "m": 420, "t": 0, "s": 0, "c": []}
    bundle = _craft_bundle(env, [first, inner])
    dest = env.tmp / "inside" / "dest"
    result = env.run("bundle", "download", "--repo", "r", "--bundle", bundle, "--destination", str(dest))
    assert result.code == ExitCode.INTEGRITY, result.err
    assert f"entry `a/b` lies inside `a`, which is a {what}" in result.err
    listing = env.run("bundle", "list", "files", "--repo", "r", "--bundle", bundle)
    assert listing.code == ExitCode.INTEGRITY, listing.err


@pytest.mark.parametrize("what", ["file name", "symlink target"])
def test_a_name_that_is_not_utf8_is_a_local_error_naming_it_and_commits_nothing(env: Env, what: str) -> None:
    env.ok("repo", "create", "--repo", "r")
    src = env.tmp / "latin1"
    src.mkdir()
    (src / "ok.txt").write_text("fine")
    if what == "file name":
        Path(os.fsdecode(bytes(src) + b"/caf\xe9.txt")).write_text("x")
    else:
        os.symlink(os.fsdecode(b"caf\xe9.txt"), src / "link")
    result = env.run("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--label", "v1")
    assert result.code == ExitCode.LOCAL_IO, result.err
    assert f"the {what} of `" in result.err and "is not valid UTF-8" in result.err and "rename it" in result.err
    assert "internal error" not in result.err
    assert env.ok("bundle", "list", "--repo", "r").out.strip() == ""
    assert env.run("label", "get", "--repo", "r", "--label", "v1").code == ExitCode.NOT_FOUND


def test_records_from_a_newer_format_are_refused_on_read_too(env: Env) -> None:
    bundle_id = _repo_with_bundle(env)
    store = LocalStore(env.store)
    key = f"repos/r/bundles/{bundle_id}.json"
    record = orjson.loads(store.read(key)[0])
    store.put(key, orjson.dumps({**record, "format": 2}))
    result = env.run("bundle", "get", "--repo", "r", "--bundle", bundle_id)
    assert result.code == ExitCode.USAGE, result.err
    assert f"record `{key}` has format v2" in result.err and "upgrade datarun" in result.err

    store.put(key, b"{not json")
    result = env.run("bundle", "get", "--repo", "r", "--bundle", bundle_id)
    assert result.code == ExitCode.INTEGRITY, result.err
    assert f"record `{key}` is corrupt" in result.err


def test_a_store_of_a_newer_format_is_refused_by_readers(env: Env) -> None:
    _repo_with_bundle(env)
    LocalStore(env.store).put("datarun-store.json", orjson.dumps({"format": "datarun-store", "version": 2}))
    for args in (["bundle", "list", "--repo", "r"], ["repo", "list"], ["label", "get", "--repo", "r", "--label", "v1"]):
        result = env.run(*args)
        assert result.code == ExitCode.USAGE, (args, result.err)
        assert "uses format v2" in result.err and "Upgrade datarun" in result.err


@pytest.mark.parametrize(
    ("marker", "detail"),
    [
        (b'{"format": "datarun-store", "vers', "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"format": "something-else", "version": 1}', "its `format` is 'something-else'"),
        (b'{"format": "datarun-store", "version": "1"}', "its `version` is '1'"),
        (b'{"format": "datarun-store"}', "its `version` is None"),
    ],
)
def test_a_corrupt_store_marker_is_an_integrity_error_naming_it(env: Env, marker: bytes, detail: str) -> None:
    bundle_id = _repo_with_bundle(env)
    store = LocalStore(env.store)
    store.put("datarun-store.json", marker)
    src = make_tree(env.tmp / "src2")
    for args in (
        ["repo", "list"],
        ["bundle", "get", "--repo", "r", "--bundle", bundle_id],
        ["label", "get", "--repo", "r", "--label", "v1"],
        ["repo", "create", "--repo", "other"],
        ["bundle", "upload", "--path", str(src), "--message", "m2", "--repo", "r", "--label", "v2"],
    ):
        result = env.run(*args)
        assert result.code == ExitCode.INTEGRITY, (args, result.err)
        assert "internal error" not in result.err
        assert f"store marker `datarun-store.json` in store `{env.url}` is corrupt ({detail}" in result.err
        assert "restore it from a backup" in result.err
    # Refused before anything was written, and the marker is left as it was for the user to repair.
    assert store.read("datarun-store.json")[0] == marker
    assert [info.key for info in store.list("repos/") if "/bundles/" in info.key] == [
        f"repos/r/bundles/{bundle_id}.json"
    ]
    assert not any(info.key.startswith("repos/other/") for info in store.list("repos/"))
    assert not any("/labels/v2" in info.key for info in store.list("repos/"))


def test_download_refuses_to_write_through_a_symlink_in_the_destination(env: Env) -> None:
    _repo_with_bundle(env)
    dest = env.tmp / "dest"
    outside = env.tmp / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "a").symlink_to(outside)
    result = env.run("bundle", "download", "--repo", "r", "--label", "v1", "--destination", str(dest), "--force")
    assert result.code == ExitCode.INTEGRITY and "symlink" in result.err
    assert list(outside.iterdir()) == []


def test_corrupt_pack_is_detected_by_verify_and_download_naming_the_file(env: Env) -> None:
    env.ok("repo", "create", "--repo", "r")
    src = env.tmp / "src"
    src.mkdir()
    (src / "victim.bin").write_bytes(os.urandom(200_000))
    env.ok("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--label", "v1")
    pack = next(p for p in (env.store / "packs").rglob("*") if p.is_file())
    data = bytearray(pack.read_bytes())
    data[100_000] ^= 0xFF
    pack.write_bytes(bytes(data))
    result = env.run("bundle", "verify", "--repo", "r", "--label", "v1")
    assert result.code == ExitCode.INTEGRITY
    assert "BAD victim.bin" in result.out and "1 damaged file" in result.err
    dest = env.tmp / "dest"
    result = env.run("bundle", "download", "--repo", "r", "--label", "v1", "--destination", str(dest))
    assert result.code == ExitCode.INTEGRITY and "`victim.bin`" in result.err and "hash check" in result.err
    assert list(dest.iterdir()) == [], "no half-written or temp file is left behind"


def _big_tree(root: Path, files: int, size: int) -> Path:
    root.mkdir()
    for i in range(files):
        with (root / f"part-{i}.bin").open("wb") as out:
            for _ in range(size // (1 << 20)):
                out.write(os.urandom(1 << 20))
    return root


def _bundles(env: Env) -> list[str]:
    return env.ok("bundle", "list", "--repo", "r").out.splitlines()


def test_kill_9_mid_upload_leaves_no_bundle_and_the_retry_reuses_packs(env: Env) -> None:
    env.ok("repo", "create", "--repo", "r")
    src = _big_tree(env.tmp / "src", 6, 32 << 20)
    proc = env.spawn("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--json")
    deadline = time.monotonic() + 60
    while not (env.store / "index").exists() or not any((env.store / "index").iterdir()):
        assert time.monotonic() < deadline and proc.poll() is None, "no pack was written before the upload ended"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _bundles(env) == []
    result = env.ok("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--json")
    stats = orjson.loads("\n".join(result.out.strip().splitlines()[:-1]))["stats"]
    assert stats["bytes_new"] < stats["bytes_total"], "packs written before the kill are reused"
    assert len(_bundles(env)) == 1


def test_sigterm_mid_upload_exits_130_and_cleans_its_spool(env: Env) -> None:
    env.ok("repo", "create", "--repo", "r")
    src = _big_tree(env.tmp / "src", 6, 32 << 20)
    proc = env.spawn("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r")
    deadline = time.monotonic() + 60
    while not (env.store / "packs").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "interrupted" in err
    assert _bundles(env) == []
    assert list((env.store / ".tmp").glob("pack-*")) == []
    assert list((env.store / ".tmp").glob("manifest-*")) == []


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if proc.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs to test a full disk: {proc.stderr!r}")
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr!r}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_store_and_destination(env: Env, tiny_disk: Path) -> None:
    src = env.tmp / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(8 << 20))
    full = f"file://{tiny_disk / 'store'}"
    env.ok("--store", full, "repo", "create", "--repo", "r")
    result = env.run("--store", full, "bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r")
    assert result.code in (ExitCode.STORE, ExitCode.LOCAL_IO), result.err
    assert "No space left on device" in result.err and "free some" in result.err
    assert env.ok("--store", full, "bundle", "list", "--repo", "r").out == ""
    # And as a download destination.
    env.ok("repo", "create", "--repo", "r")
    env.ok("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--label", "v1")
    shutil.rmtree(tiny_disk / "store", ignore_errors=True)
    result = env.run("bundle", "download", "--repo", "r", "--label", "v1", "--destination", str(tiny_disk / "dest"))
    assert result.code == ExitCode.LOCAL_IO and "No space left on device" in result.err
    assert [p.name for p in (tiny_disk / "dest").iterdir()] == [], "the temp file was removed"


def test_client_api_raises_typed_errors(env: Env) -> None:
    client = Client(LocalStore(env.store), cache_dir=env.tmp / "cache")
    with pytest.raises(ConflictError):
        client.create_repo("r")
        client.create_repo("r")

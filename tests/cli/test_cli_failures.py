"""Failure paths of the CLI: exact exit codes, one line naming the thing and the fix, nothing lost.

Exit codes (datarun.errors.ExitCode): 2 usage, 3 not found, 4 conflict, 5 integrity, 6 store,
7 local IO, 130 interrupted.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import orjson
import pytest
import zstandard

from datarun.cas.chunker import CHUNKER_ID
from datarun.errors import ConflictError, ExitCode
from datarun.ids import new_ksuid
from datarun.layout import manifest_key
from datarun.model import Bundle, Label
from datarun.repo import connect
from datarun.transfer import Uploader
from tests.cli.conftest import Env, Result

MiB = 1 << 20


def _single_line_error(result: Result) -> None:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err


def _small_tree(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    (root / "a" / "b.txt").write_bytes(b"bee\n")
    (root / "data.bin").write_bytes(os.urandom(50_000))
    return root


def _repo_with_bundle(env: Env, label: str = "v1") -> str:
    env.ok("repo", "create", "--repo", "r")
    src = _small_tree(env.tmp / "src")
    return env.ok("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--label", label).last_line


def _bundle_lines(env: Env, store: str | None = None) -> list[str]:
    args = ["--store", store] if store else []
    return env.ok(*args, "bundle", "list", "--repo", "r").out.splitlines()


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------------------------------
# 2. unknown repo / label / bundle


def test_unknown_repo_is_exit_3_naming_it_and_hinting_repo_create(env: Env) -> None:
    src = _small_tree(env.tmp / "src")
    env.ok("repo", "create", "--repo", "other")  # the store exists, the repo does not
    for args in (
        ["bundle", "list", "--repo", "nope"],
        ["label", "get", "--repo", "nope", "--label", "x"],
        ["label", "list", "--repo", "nope"],
        ["repo", "get", "--repo", "nope"],
        ["bundle", "upload", "--path", str(src), "--message", "m", "--repo", "nope"],
    ):
        result = env.run(*args)
        assert result.code == ExitCode.NOT_FOUND, (args, result.err)
        assert "repo `nope` not found" in result.err, args
        assert "`datarun repo create --repo nope" in result.err, args
        _single_line_error(result)
    assert not (env.store / "packs").exists(), "the failed upload wrote no data"


def test_unknown_label_is_exit_3_naming_it_and_hinting_label_list(env: Env) -> None:
    _repo_with_bundle(env)
    for args in (
        ["label", "get", "--repo", "r", "--label", "ghost"],
        ["label", "history", "--repo", "r", "--label", "ghost"],
        ["bundle", "list", "files", "--repo", "r", "--label", "ghost"],
        ["bundle", "download", "--repo", "r", "--label", "ghost", "--destination", str(env.tmp / "d")],
        ["bundle", "verify", "--repo", "r", "--label", "ghost"],
    ):
        result = env.run(*args)
        assert result.code == ExitCode.NOT_FOUND, (args, result.err)
        assert "label `ghost` not found in repo `r`" in result.err, args
        assert "`datarun label list --repo r`" in result.err, args
        _single_line_error(result)
    assert not (env.tmp / "d").exists()


def test_unknown_bundle_is_exit_3_naming_it_and_hinting_bundle_list(env: Env) -> None:
    real = _repo_with_bundle(env)
    ghost = new_ksuid()
    for args in (
        ["bundle", "list", "files", "--repo", "r", "--bundle", ghost],
        ["bundle", "download", "--repo", "r", "--bundle", ghost, "--destination", str(env.tmp / "d")],
        ["bundle", "verify", "--repo", "r", "--bundle", ghost],
        ["bundle", "get", "--repo", "r", "--bundle", ghost],
        ["bundle", "diff", "--repo", "r", "--bundle", real, "--with-bundle", ghost],
        ["label", "set", "--repo", "r", "--label", "v1", "--bundle", ghost],
    ):
        result = env.run(*args)
        assert result.code == ExitCode.NOT_FOUND, (args, result.err)
        assert f"bundle `{ghost}` not found in repo `r`" in result.err, args
        assert "`datarun bundle list --repo r`" in result.err, args
        _single_line_error(result)
    assert env.ok("label", "get", "--repo", "r", "--label", "v1").out.strip() == real


def test_unknown_file_in_bundle_is_exit_3_naming_it_and_hinting_list_files(env: Env) -> None:
    _repo_with_bundle(env)
    dest = env.tmp / "d"
    result = env.run(
        "bundle",
        "download",
        "file",
        "--file",
        "no/such.txt",
        "--repo",
        "r",
        "--label",
        "v1",
        "--destination",
        str(dest),
    )
    assert result.code == ExitCode.NOT_FOUND, result.err
    assert "file `no/such.txt` not found" in result.err
    _single_line_error(result)
    assert not dest.exists()
    # Every other not-found message says which command lists what exists (errors.py: "Messages
    # name the thing and say how to fix it"); this one should point at `bundle list files`.
    assert "datarun bundle list files" in result.err, result.err


# ---------------------------------------------------------------------------------------
# 3. invalid names


@pytest.mark.parametrize("label", ["bad/label", "..", "-x", "a b", ""])
def test_invalid_label_on_label_set_is_exit_2(env: Env, label: str) -> None:
    bundle = _repo_with_bundle(env)
    result = env.run("label", "set", "--repo", "r", "--label", label, "--bundle", bundle)
    assert result.code == ExitCode.USAGE, result.err
    assert f"invalid label `{label}`" in result.err and "letters, digits" in result.err
    _single_line_error(result)
    assert not (env.store / "repos" / "r" / "labels" / f"{label}.json").exists()


@pytest.mark.parametrize("label", ["bad/label", ".."])
def test_invalid_label_on_upload_fails_before_any_data_is_written(env: Env, label: str) -> None:
    env.ok("repo", "create", "--repo", "r")
    src = _small_tree(env.tmp / "src")
    result = env.run("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--label", label)
    assert result.code == ExitCode.USAGE, result.err
    assert f"invalid label `{label}`" in result.err
    assert result.out == ""
    for prefix in ("packs", "index", "manifests", "repos/r/bundles", "repos/r/labels"):
        assert _files_under(env.store / prefix) == [], prefix
    assert _files_under(env.store / ".tmp") == []


@pytest.mark.parametrize("name", ["Bad", "../x", "a/b", "with space", "", "-lead", ".."])
def test_invalid_repo_name_is_exit_2_and_creates_nothing(env: Env, name: str) -> None:
    result = env.run("repo", "create", "--repo", name)
    assert result.code == ExitCode.USAGE, result.err
    assert f"invalid repo name `{name}`" in result.err and "lowercase letters, digits" in result.err
    _single_line_error(result)
    assert _files_under(env.store / "repos") == []
    src = _small_tree(env.tmp / "src")
    result = env.run("bundle", "upload", "--path", str(src), "--message", "m", "--repo", name)
    assert result.code == ExitCode.USAGE and f"invalid repo name `{name}`" in result.err
    assert _files_under(env.store / "packs") == []


# ---------------------------------------------------------------------------------------
# 4. label races


def _race(url: str, name: str, bundles: list[str], threads: int, retries: int) -> tuple[list[Label], list[str]]:
    wins: list[Label] = []
    losses: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)
    unexpected: list[BaseException] = []

    def racer(n: int) -> None:
        client = connect(url)
        try:
            barrier.wait()
            try:
                moved = client.set_label("r", name, bundles[n % len(bundles)], retries=retries)
            except ConflictError as err:
                with lock:
                    losses.append(str(err))
                return
            with lock:
                wins.append(moved)
        except BaseException as err:
            with lock:
                unexpected.append(err)
        finally:
            client.close()

    workers = [threading.Thread(target=racer, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert unexpected == []
    return wins, losses


def _check_history(url: str, name: str, moves: int) -> None:
    client = connect(url)
    try:
        history = client.label_history("r", name)
        current = client.get_label("r", name)
    finally:
        client.close()
    assert len(history) == moves
    assert [h.seq for h in history] == list(range(1, moves + 1)), "history seqs are contiguous, no gaps"
    assert history[0].previous == ""
    for before, after in itertools.pairwise(history):
        assert after.previous == before.bundle, f"move #{after.seq} did not start from move #{before.seq}"
    assert (current.bundle, current.seq) == (history[-1].bundle, history[-1].seq)


def test_concurrent_label_set_without_retries_loses_no_move(env: Env) -> None:
    env.ok("repo", "create", "--repo", "r")
    src = _small_tree(env.tmp / "src")
    bundles = [
        env.ok("bundle", "upload", "--path", str(src), "--message", str(i), "--repo", "r").last_line for i in range(4)
    ]
    threads = 16
    successes = 0
    for _round in range(3):  # round 1 creates the label (create-only), later rounds move it (CAS)
        wins, losses = _race(env.url, "race", bundles, threads, retries=0)
        assert len(wins) >= 1 and len(wins) + len(losses) == threads
        assert all("moved by another writer" in msg and "--retries" in msg for msg in losses)
        successes += len(wins)
        assert sorted(w.seq for w in wins) == list(range(successes - len(wins) + 1, successes + 1))
        _check_history(env.url, "race", successes)


def test_concurrent_label_set_with_retries_all_succeed(env: Env) -> None:
    env.ok("repo", "create", "--repo", "r")
    src = _small_tree(env.tmp / "src")
    bundles = [
        env.ok("bundle", "upload", "--path", str(src), "--message", str(i), "--repo", "r").last_line for i in range(4)
    ]
    wins, losses = _race(env.url, "patient", bundles, 16, retries=50)
    assert losses == [] and len(wins) == 16
    assert sorted(w.seq for w in wins) == list(range(1, 17))
    _check_history(env.url, "patient", 16)


# ---------------------------------------------------------------------------------------
# 5. compare-and-swap expectation


def test_label_set_with_wrong_expect_is_exit_4_and_moves_nothing(env: Env) -> None:
    current = _repo_with_bundle(env)
    other = env.ok("bundle", "upload", "--path", str(env.tmp / "src"), "--message", "2", "--repo", "r").last_line
    wrong = new_ksuid()
    result = env.run("label", "set", "--repo", "r", "--label", "v1", "--bundle", other, "--expect", wrong)
    assert result.code == ExitCode.CONFLICT, result.err
    assert f"label `v1` in repo `r` points at {current}, not {wrong}" in result.err
    _single_line_error(result)
    result = env.run("label", "set", "--repo", "r", "--label", "v1", "--bundle", other, "--expect", "")
    assert result.code == ExitCode.CONFLICT and f"points at {current}, not nothing" in result.err
    result = env.run("label", "set", "--repo", "r", "--label", "fresh", "--bundle", other, "--expect", current)
    assert result.code == ExitCode.CONFLICT and "points at nothing" in result.err
    assert env.ok("label", "get", "--repo", "r", "--label", "v1").out.strip() == current
    assert len(env.ok("label", "history", "--repo", "r", "--label", "v1").out.splitlines()) == 1
    assert env.run("label", "get", "--repo", "r", "--label", "fresh").code == ExitCode.NOT_FOUND
    env.ok("label", "set", "--repo", "r", "--label", "v1", "--bundle", other, "--expect", current)
    assert env.ok("label", "get", "--repo", "r", "--label", "v1").out.strip() == other


# ---------------------------------------------------------------------------------------
# 6. interrupted uploads


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """192 MiB of incompressible data in 6 files: six 32 MiB packs, slow enough to interrupt."""
    root = tmp_path_factory.mktemp("big") / "src"
    root.mkdir()
    for i in range(6):
        with (root / f"part-{i}.bin").open("wb") as out:
            for _ in range(32):
                out.write(os.urandom(MiB))
    return root


def _wait_for(predicate: Any, proc: subprocess.Popen[str], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the upload ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def _stored_packs(store: Path) -> list[Path]:
    return _files_under(store / "packs")


def _upload_stats(env: Env, src: Path) -> dict[str, Any]:
    result = env.ok("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--json")
    stats: dict[str, Any] = json.loads("\n".join(result.out.strip().splitlines()[:-1]))["stats"]
    return stats


# The child runs the real CLI on a store whose index-segment writes take a few seconds, as a
# cloud PUT can: a pack is then durable in `packs/` well before its segment is, and the kill
# deterministically lands after a pack was written, however fast this machine polls.
_SLOW_SEGMENTS = """
import sys, time
from datarun.store.local import LocalStore
_put = LocalStore.put
def put(self, key, payload):
    if key.startswith("index/"):
        time.sleep(5)
    return _put(self, key, payload)
LocalStore.put = put
from datarun.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_after_a_pack_is_indexed_retry_dedups_against_it(env: Env, big_tree: Path) -> None:
    env.ok("repo", "create", "--repo", "r")
    proc = env.spawn("bundle", "upload", "--path", str(big_tree), "--message", "m", "--repo", "r", "--json")
    try:
        _wait_for(lambda: bool(_files_under(env.store / "index")), proc, "a pack and its index segment were written")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    segments = _files_under(env.store / "index")
    packs = {p.name for p in _stored_packs(env.store)}
    assert segments and all(s.name in packs for s in segments), "a segment never points at a missing pack"
    assert _bundle_lines(env) == []

    stats = _upload_stats(env, big_tree)
    assert stats["bytes_new"] <= stats["bytes_total"] - 16 * MiB, stats
    bundle = _bundle_lines(env)
    assert len(bundle) == 1
    verify = env.run("bundle", "verify", "--repo", "r", "--bundle", bundle[0].split(" , ")[0])
    assert verify.code == ExitCode.OK, verify.err


def test_sigterm_mid_upload_exits_130_with_nothing_visible_and_no_spool_left(env: Env, big_tree: Path) -> None:
    env.ok("repo", "create", "--repo", "r")
    proc = env.spawn("bundle", "upload", "--path", str(big_tree), "--message", "m", "--repo", "r")
    try:
        _wait_for(lambda: bool(_stored_packs(env.store)), proc, "a pack was written")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "interrupted" in err and out == ""
    assert _bundle_lines(env) == []
    spool = env.store / ".tmp"
    leftovers = [p.name for p in spool.iterdir()] if spool.exists() else []
    assert [n for n in leftovers if n.startswith(("pack-", "manifest-", "put-"))] == []


def test_sigterm_while_upload_waits_for_a_free_pack_slot_leaves_no_spool(
    env: Env, big_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --workers 1 at most 2 packs are in flight, so sealing the 3rd waits for the 1st; a
    SIGTERM that lands in that wait (a real signal, through the CLI's own handler) must still
    clean every spooled pack."""
    env.ok("repo", "create", "--repo", "r")
    original = Uploader._reap_one
    callers: list[str] = []

    def reap_one_then_signal(self: Uploader) -> None:
        if not callers:
            callers.append(sys._getframe(1).f_code.co_name)
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
        original(self)

    monkeypatch.setattr(Uploader, "_reap_one", reap_one_then_signal)
    result = env.run("--workers", "1", "bundle", "upload", "--path", str(big_tree), "--message", "m", "--repo", "r")
    assert callers == ["_seal"], "the signal arrived while a sealed pack waited for an upload slot"
    assert result.code == ExitCode.INTERRUPTED, result.err
    assert "interrupted" in result.err
    assert _bundle_lines(env) == []
    leftovers = sorted(p.name for p in (env.store / ".tmp").iterdir())
    assert [n for n in leftovers if n.startswith(("pack-", "manifest-", "put-"))] == []


# ---------------------------------------------------------------------------------------
# 7. corrupt data


def test_corrupt_pack_fails_verify_and_download_naming_the_file(env: Env) -> None:
    env.ok("repo", "create", "--repo", "r")
    src = env.tmp / "src"
    src.mkdir()
    (src / "a_ok.txt").write_bytes(b"fine\n")
    (src / "victim.bin").write_bytes(os.urandom(3 * MiB))
    (src / "z_ok.txt").write_bytes(b"also fine\n")
    env.ok("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--label", "v1")
    packs = _stored_packs(env.store)
    assert len(packs) == 1
    data = bytearray(packs[0].read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + 16):
        data[i] ^= 0xFF
    packs[0].write_bytes(bytes(data))

    result = env.run("bundle", "verify", "--repo", "r", "--label", "v1")
    assert result.code == ExitCode.INTEGRITY, result.err
    bad = [line for line in result.out.splitlines() if line.startswith("BAD ")]
    assert len(bad) == 1 and bad[0].startswith("BAD victim.bin: "), result.out
    assert "1 damaged file(s)" in result.err
    as_json = env.run("bundle", "verify", "--repo", "r", "--label", "v1", "--json")
    assert as_json.code == ExitCode.INTEGRITY
    report = json.loads(as_json.out)
    assert report["ok"] is False and [p.split(":")[0] for p in report["problems"]] == ["victim.bin"]

    dest = env.tmp / "dest"
    result = env.run("bundle", "download", "--repo", "r", "--label", "v1", "--destination", str(dest))
    assert result.code == ExitCode.INTEGRITY, result.err
    assert "`victim.bin`" in result.err and "hash check" in result.err
    _single_line_error(result)
    assert not (dest / "victim.bin").exists(), "no file with wrong content at the final path"
    assert [p.name for p in dest.rglob("*") if ".datarun-" in p.name] == [], "temp files are removed"

    one = env.tmp / "one"
    result = env.run(
        "bundle", "download", "file", "--file", "victim.bin", "--repo", "r", "--label", "v1", "--destination", str(one)
    )
    assert result.code == ExitCode.INTEGRITY and "`victim.bin`" in result.err
    assert list(one.iterdir()) == []


# ---------------------------------------------------------------------------------------
# 8. hostile manifests


def _craft_bundle(env: Env, entries: list[dict[str, Any]]) -> str:
    """Store a manifest written by hand (no writer checks) and a bundle record naming it."""
    header = {"format": "datarun-manifest", "version": 1, "chunker": CHUNKER_ID}
    plain = b"".join(orjson.dumps(line) + b"\n" for line in [header, *entries])
    manifest_id = str(blake3.blake3(plain).hexdigest())
    files = [e for e in entries if e["k"] == "f"]
    bundle = Bundle(
        new_ksuid(), "r", "crafted", "2026-01-01T00:00:00Z", manifest_id, len(files), sum(e["s"] for e in files)
    )
    client = connect(env.url)
    try:
        client.meta.put(manifest_key(manifest_id), zstandard.ZstdCompressor().compress(plain))
        record = orjson.dumps(bundle.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        client.meta.put_if_absent(f"repos/r/bundles/{bundle.id}.json", record)
    finally:
        client.close()
    return bundle.id


def _real_file_entry(env: Env, content: bytes, mode: int) -> dict[str, Any]:
    """A manifest entry with real, verifiable chunks, so only path checks can stop the write."""
    src = env.tmp / f"payload-{hashlib.sha256(content).hexdigest()[:8]}"
    src.mkdir()
    (src / "payload").write_bytes(content)
    (src / "payload").chmod(mode)
    bundle_id = env.ok("bundle", "upload", "--path", str(src), "--message", "p", "--repo", "r").last_line
    files = json.loads(env.ok("bundle", "list", "files", "--repo", "r", "--bundle", bundle_id, "--json").out)
    client = connect(env.url)
    try:
        bundle = client.get_bundle("r", bundle_id)
        entry = next(iter(client.list_files(bundle)))
    finally:
        client.close()
    assert files[0]["path"] == "payload"
    return entry.to_json()


def _snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (outside ``skip``) with size and mtime for files and links."""
    out: dict[str, tuple[int, int]] = {}
    for path in root.rglob("*"):
        if any(path == s or s in path.parents for s in skip):
            continue
        st = path.lstat()
        out[str(path)] = (0, 0) if path.is_dir() and not path.is_symlink() else (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize(
    "case",
    ["dotdot", "nested-dotdot", "absolute-etc-passwd", "absolute-into-tmp", "symlink-out", "symlink-then-file"],
)
def test_manifest_with_unsafe_paths_is_refused_and_nothing_escapes(env: Env, case: str) -> None:
    env.ok("repo", "create", "--repo", "r")
    passwd = Path("/etc/passwd")
    passwd_before = (passwd.read_bytes(), passwd.stat().st_ino, passwd.stat().st_mtime_ns) if passwd.exists() else None
    dest = env.tmp / "deep" / "dest"
    dest.parent.mkdir()
    payload = _real_file_entry(env, b"evil payload\n", 0o644)
    entries: list[dict[str, Any]]
    if case == "dotdot":
        entries = [{**payload, "p": "../evil"}]
    elif case == "nested-dotdot":
        entries = [{**payload, "p": "ok/../../evil"}]
    elif case == "absolute-etc-passwd":
        # Same bytes and mode as the real file, so even a datarun bug could not damage this machine.
        assert passwd_before is not None
        real = _real_file_entry(env, passwd_before[0], passwd.stat().st_mode & 0o777)
        entries = [{**real, "p": "/etc/passwd", "t": passwd_before[2]}]
    elif case == "absolute-into-tmp":
        entries = [{**payload, "p": str(env.tmp / "abs-evil")}]
    elif case == "symlink-out":
        entries = [{"p": "link", "k": "l", "m": 0o777, "t": 0, "l": "../../outside"}]
    else:
        (env.tmp / "outside").mkdir()
        entries = [
            {"p": "sub", "k": "l", "m": 0o777, "t": 0, "l": "../../outside"},
            {**payload, "p": "sub/evil"},
        ]
    bundle_id = _craft_bundle(env, entries)
    before = _snapshot(env.tmp, {env.store, env.tmp / "cache", dest})

    result = env.run("bundle", "download", "--repo", "r", "--bundle", bundle_id, "--destination", str(dest))
    assert result.code == ExitCode.INTEGRITY, result.err
    assert "unsafe" in result.err
    _single_line_error(result)
    assert _snapshot(env.tmp, {env.store, env.tmp / "cache", dest}) == before, "nothing written outside --destination"
    assert not (env.tmp / "deep" / "evil").exists() and not (env.tmp / "abs-evil").exists()
    assert not (env.tmp / "outside" / "evil").exists()
    assert not dest.exists() or [p for p in dest.rglob("*") if p.is_symlink() or p.is_file()] == []
    if passwd_before is not None:
        assert (passwd.read_bytes(), passwd.stat().st_ino, passwd.stat().st_mtime_ns) == passwd_before

    verify = env.run("bundle", "verify", "--repo", "r", "--bundle", bundle_id)
    assert verify.code == ExitCode.INTEGRITY and "unsafe" in verify.out


# ---------------------------------------------------------------------------------------
# 9. destination not empty


def test_download_into_non_empty_destination_needs_force(env: Env) -> None:
    _repo_with_bundle(env)
    dest = env.tmp / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_bytes(b"keep me")
    result = env.run("bundle", "download", "--repo", "r", "--label", "v1", "--destination", str(dest))
    assert result.code == ExitCode.CONFLICT, result.err
    assert f"destination `{dest}` is not empty; pass --force" in result.err
    _single_line_error(result)
    assert sorted(p.name for p in dest.iterdir()) == ["mine.txt"]

    env.ok("bundle", "download", "--repo", "r", "--label", "v1", "--destination", str(dest), "--force")
    assert (dest / "mine.txt").read_bytes() == b"keep me"
    assert (dest / "a" / "b.txt").read_bytes() == b"bee\n"

    result = env.run(
        "bundle", "download", "file", "--file", "a/b.txt", "--repo", "r", "--label", "v1", "--destination", str(dest)
    )
    assert result.code == ExitCode.CONFLICT and "already exists; pass --force" in result.err
    (dest / "a" / "b.txt").write_bytes(b"edited")
    env.ok(
        "bundle",
        "download",
        "file",
        "--file",
        "a/b.txt",
        "--repo",
        "r",
        "--label",
        "v1",
        "--destination",
        str(dest),
        "--force",
    )
    assert (dest / "a" / "b.txt").read_bytes() == b"bee\n"

    afile = env.tmp / "a-file"
    afile.write_bytes(b"x")
    result = env.run("bundle", "download", "--repo", "r", "--label", "v1", "--destination", str(afile), "--force")
    assert result.code == ExitCode.LOCAL_IO and f"destination `{afile}` is a file" in result.err


# ---------------------------------------------------------------------------------------
# 10. local paths


def test_upload_of_missing_path_is_exit_7_naming_it(env: Env) -> None:
    env.ok("repo", "create", "--repo", "r")
    missing = env.tmp / "nowhere"
    result = env.run("bundle", "upload", "--path", str(missing), "--message", "m", "--repo", "r")
    assert result.code == ExitCode.LOCAL_IO, result.err
    assert f"path `{missing}` does not exist" in result.err and "--path" in result.err
    _single_line_error(result)
    assert _bundle_lines(env) == []


def test_upload_of_a_file_instead_of_a_folder_is_exit_7(env: Env) -> None:
    env.ok("repo", "create", "--repo", "r")
    afile = env.tmp / "file.txt"
    afile.write_bytes(b"x")
    result = env.run("bundle", "upload", "--path", str(afile), "--message", "m", "--repo", "r")
    assert result.code == ExitCode.LOCAL_IO, result.err
    assert f"path `{afile}` is not a folder" in result.err
    _single_line_error(result)
    assert _bundle_lines(env) == []


def _without_dac_override() -> list[str]:
    """Root reads files whatever their mode; without CAP_DAC_OVERRIDE/READ_SEARCH it cannot."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root needs util-linux setpriv to drop CAP_DAC_OVERRIDE for this test"
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.parametrize("what", ["file", "folder"])
def test_unreadable_entry_is_exit_7_naming_it(env: Env, what: str) -> None:
    env.ok("repo", "create", "--repo", "r")
    src = _small_tree(env.tmp / "src")
    locked = src / "a" / "b.txt" if what == "file" else src / "a"
    locked.chmod(0o000)
    try:
        proc = subprocess.run(
            [
                *_without_dac_override(),
                sys.executable,
                "-m",
                "datarun.cli.main",
                "--store",
                env.url,
                "bundle",
                "upload",
                "--path",
                str(src),
                "--message",
                "m",
                "--repo",
                "r",
            ],
            env=env.environ(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        locked.chmod(0o755)
    assert proc.returncode == ExitCode.LOCAL_IO, proc.stderr
    action = "read" if what == "file" else "read folder"
    assert f"cannot {action} `{locked}`: Permission denied; check its permissions" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _bundle_lines(env) == []


# ---------------------------------------------------------------------------------------
# 11. full disk


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs. Skipped outside CI if it cannot be mounted; a failure under CI=true."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        why = f"cannot mount a 2 MiB tmpfs to emulate a full disk: {proc.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def _fill(disk: Path) -> None:
    with (disk / "filler").open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError:
            pass


def test_upload_to_a_full_store_is_exit_6(env: Env, tiny_disk: Path) -> None:
    src = env.tmp / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(8 * MiB))
    store = f"file://{tiny_disk / 'store'}"
    env.ok("--store", store, "repo", "create", "--repo", "r")
    result = env.run("--store", store, "bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r")
    assert result.code == ExitCode.STORE, result.err
    assert "No space left on device" in result.err and "free some" in result.err
    assert f"store `{store}`" in result.err, "the message says the store is what is full"
    assert f"cannot read `{src / 'big.bin'}`" not in result.err, "the source file was readable"
    _single_line_error(result)
    assert _bundle_lines(env, store) == []
    assert [p.name for p in _files_under(tiny_disk / "store" / ".tmp")] == []


def test_small_upload_to_a_full_store_is_exit_6(env: Env, tiny_disk: Path) -> None:
    src = _small_tree(env.tmp / "src")
    store = f"file://{tiny_disk / 'store'}"
    env.ok("--store", store, "repo", "create", "--repo", "r")
    _fill(tiny_disk)
    result = env.run("--store", store, "bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r")
    assert result.code == ExitCode.STORE, result.err
    assert "No space left on device" in result.err and "free some" in result.err
    assert "internal error" not in result.err
    _single_line_error(result)
    (tiny_disk / "filler").unlink()
    assert _bundle_lines(env, store) == []
    assert [p.name for p in _files_under(tiny_disk / "store" / ".tmp")] == []


def test_download_to_a_full_disk_is_exit_7(env: Env, tiny_disk: Path) -> None:
    src = env.tmp / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(8 * MiB))
    env.ok("repo", "create", "--repo", "r")
    env.ok("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "r", "--label", "v1")
    dest = tiny_disk / "dest"
    result = env.run("bundle", "download", "--repo", "r", "--label", "v1", "--destination", str(dest))
    assert result.code == ExitCode.LOCAL_IO, result.err
    assert "No space left on device" in result.err and "free some disk space" in result.err
    assert f"`{dest / 'big.bin'}`" in result.err
    _single_line_error(result)
    assert list(dest.iterdir()) == [], "the partial temp file was removed"


# ---------------------------------------------------------------------------------------
# 12. unusable store


def test_store_that_cannot_be_created_is_exit_6_naming_it(env: Env) -> None:
    store = "file:///proc/datarun-nope"
    result = env.run("--store", store, "repo", "create", "--repo", "r")
    assert result.code == ExitCode.STORE, result.err
    assert f"store `{store}`" in result.err
    _single_line_error(result)

"""Runs on Azurite: two processes racing updates of one run, and `run import` of a container.

Two processes update the same run at once: every change lands, no version is lost.

Azure's ``If-None-Match: *`` on ``runs/records/<id>/<N+1>.json`` is the compare-and-swap; each
process tags the run N times with its own tags, so any lost update would show as a missing tag,
a gap in the versions, or a version whose change is missing from the feed.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import orjson
import pytest

from datarun.ids import new_ksuid
from datarun.runs import CHANGES, Run, RunStore
from tests.cli.conftest import Env
from tests.store.emulators import Azurite

pytestmark = pytest.mark.slow

UPDATES = 12

WORKER = textwrap.dedent(
    """
    import sys
    from datarun.errors import PreconditionFailed
    from datarun.runs import RunStore
    from datarun.store.azure import AzureStore

    class Counting(RunStore):
        lost = 0

        def _write(self, run):
            try:
                return super()._write(run)
            except PreconditionFailed:
                Counting.lost += 1
                raise

    url, run_id, who, count, start_file = sys.argv[1:6]
    store = Counting(AzureStore.from_url(url))
    import os, time
    while not os.path.exists(start_file):  # both start together, so the updates really race
        time.sleep(0.005)
    for i in range(int(count)):
        store.tag(run_id, (f"{who}-{i}",))
    print("done", Counting.lost)
    """
)


def test_two_processes_racing_updates_lose_no_version(azurite_server: Azurite, tmp_path: object) -> None:
    bucket = azurite_server.new_bucket()
    meta = azurite_server.store(bucket)
    try:
        store = RunStore(meta)
        run = store.create(Run(id=new_ksuid(), start="2023-06-09T14:28:56Z", title="race"))
        start_file = os.path.join(str(tmp_path), "go")
        env = {**os.environ, **azurite_server.env()}
        url = f"az://{bucket}/datarun"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, url, run.id, who, str(UPDATES), start_file],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for who in ("a", "b")
        ]
        open(start_file, "w").close()
        lost = 0
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err
            word, count = out.split()
            assert word == "done"
            lost += int(count)
        print(f"lost races (re-read and retried): {lost}")
        assert lost > 0, "the writers never collided, so this run proved nothing about the CAS"

        versions = store.history(run.id)
        assert [v.version for v in versions] == list(range(1, 2 * UPDATES + 2)), "no gap, no overwrite"
        final = versions[-1]
        assert sorted(final.tags) == sorted(f"{w}-{i}" for w in "ab" for i in range(UPDATES))
        # Each version adds exactly one tag to the one before: no update was applied to a stale read.
        for before, after in itertools.pairwise(versions):
            assert after.tags[: len(before.tags)] == before.tags and len(after.tags) == len(before.tags) + 1
        feed = [orjson.loads(meta.read(info.key)[0]) for info in meta.list(CHANGES)]
        assert sorted(d["version"] for d in feed) == [v.version for v in versions]
        assert {d["version"]: d for d in feed}[final.version] == final.to_json()
    finally:
        meta.close()
        azurite_server.drop_bucket(bucket)


def test_import_indexes_an_exekias_container_in_place(
    azurite_server: Azurite, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exekias user's container: runs appear at once, their files stay where they are."""
    bucket = azurite_server.new_bucket()
    lake = azurite_server.store(bucket, "project-a")
    try:
        lake.put("20230609-142856-alpha/params.json", b'{"description": "sample", "model": {"lr": 0.02}}')
        lake.put("20230609-142856-alpha/out/loss.csv", b"step,loss\n1,0.5\n")
        lake.put("2023/20230610-090000-beta/params.json", b'{"description": "other"}')
        lake.put("2023/20230610-090000-beta/model.bin", b"\x00" * 1000)
        lake.put("notes/readme.txt", b"not a run")
        for key, value in azurite_server.env().items():
            monkeypatch.setenv(key, value)
        result = env.ok("run", "import", f"az://{bucket}/project-a")
        ids = result.out.split()
        assert len(ids) == 2 and "imported 2 new runs" in result.err
        docs = [orjson.loads(env.ok("run", "show", i, "--json").out) for i in ids]  # in key order
        assert [(d["title"], d["params"]) for d in docs] == [
            ("beta", {"description": "other"}),
            ("alpha", {"description": "sample", "model": {"lr": 0.02}}),
        ]
        assert docs[0]["source"] == {"kind": "import", "uri": f"az://{bucket}/project-a/2023/20230610-090000-beta/"}
        assert env.ok("run", "files", ids[0]).out.splitlines() == [
            "source , model.bin , 1000",
            "source , params.json , 24",
        ]
        env.ok("run", "download", ids[1], "--destination", str(env.tmp / "alpha"))
        assert (env.tmp / "alpha" / "out" / "loss.csv").read_bytes() == b"step,loss\n1,0.5\n"
        assert not (env.store / "packs").exists(), "nothing was copied into datarun's store"
    finally:
        lake.close()
        azurite_server.drop_bucket(bucket)

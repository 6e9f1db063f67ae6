"""The real `datarun` CLI on Azurite and fake-gcs-server: what a user types, what a user sees.

The store contract and the faults are proven at the ObjectStore level in test_contract.py and
test_cloud_faults.py; this file proves the same things survive the trip through the CLI:
store selection by URL, environment and config file, exit codes, one-line errors without
secrets, racing `label set` processes, and an emulator killed under a running upload.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from datarun.errors import ExitCode
from tests.store.emulators import DEV_KEY, Azurite, Emulator, FakeGCS, closed_port, start_azurite, start_fake_gcs


@dataclass
class Ran:
    code: int
    out: str
    err: str


@dataclass
class Cli:
    """Runs `python -m datarun.cli.main` in a fresh process with an isolated home and cache."""

    tmp: Path
    url: str
    credentials: dict[str, str]

    def environ(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "DATARUN_", "STORAGE_EMULATOR"))}
        return {
            **base,
            "DATARUN_HOME": str(self.tmp / "home"),
            "DATARUN_CACHE_DIR": str(self.tmp / "cache"),
            "DATARUN_CONFIG": str(self.tmp / "config.yaml"),
            "DATARUN_STORE": self.url,
            **self.credentials,
            **extra,
        }

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "datarun.cli.main", *args]

    def run(self, *args: str, **extra: str) -> Ran:
        done = subprocess.run(self.argv(*args), env=self.environ(**extra), capture_output=True, text=True, timeout=120)
        return Ran(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, **extra: str) -> str:
        ran = self.run(*args, **extra)
        assert ran.code == 0, ran.err
        return ran.out


def cli_for(server: Emulator, bucket: str, tmp: Path, port: int | None = None) -> Cli:
    scheme = "az" if isinstance(server, Azurite) else "gs"
    creds = server.env(port) if isinstance(server, Azurite | FakeGCS) else {}
    return Cli(tmp, f"{scheme}://{bucket}/team", creds)


@pytest.fixture
def bucket(cloud: Emulator) -> Iterator[str]:
    name = cloud.new_bucket()
    yield name
    cloud.drop_bucket(name)


def tree(root: Path, seed: int = 0) -> Path:
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "deeper" / "table.csv").write_text("".join(f"{i},{i * seed}\n" for i in range(20_000)))
    (root / "blob.bin").write_bytes(os.urandom(3 << 20))
    (root / "empty").mkdir()
    return root


def upload_json(out: str) -> dict[str, Any]:
    """`bundle upload --json` prints the JSON and then, as always, the bundle id on the last line."""
    body: dict[str, Any] = json.loads("\n".join(out.strip().splitlines()[:-1]))
    return body


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_whole_cli_flow_on_a_cloud_store(cloud: Emulator, bucket: str, tmp_path: Path) -> None:
    cli = cli_for(cloud, bucket, tmp_path)
    cli.ok("repo", "create", "--repo", "exp", "--description", "cloud flow")
    src = tree(tmp_path / "src")
    first = cli.ok("bundle", "upload", "--path", str(src), "--message", "v1", "--repo", "exp", "--label", "main")
    first_id = first.strip().splitlines()[-1]
    v1_files = files_of(src)
    (src / "nested" / "deeper" / "table.csv").write_text("changed\n")
    second = cli.ok("bundle", "upload", "--path", str(src), "--message", "v2", "--repo", "exp", "--json")
    stats = upload_json(second)["stats"]
    assert stats["bytes_new"] < (1 << 20), "the unchanged 3 MiB blob is deduplicated on the cloud store too"
    second_id = upload_json(second)["bundle"]["id"]

    assert cli.ok("label", "get", "--repo", "exp", "--label", "main").strip() == first_id
    listed = [b["id"] for b in json.loads(cli.ok("bundle", "list", "--repo", "exp", "--json"))]
    assert listed == [first_id, second_id]
    diff = cli.ok("bundle", "diff", "--repo", "exp", "--bundle", first_id, "--with-bundle", second_id)
    assert "nested/deeper/table.csv" in diff and "blob.bin" not in diff

    out = tmp_path / "out"
    cli.ok("bundle", "download", "--repo", "exp", "--label", "main", "--destination", str(out))
    assert files_of(out) == v1_files
    assert (out / "empty").is_dir()
    cli.ok("bundle", "verify", "--repo", "exp", "--bundle", second_id)


def test_an_azure_command_does_not_import_aiohttp(azurite_server: Azurite, tmp_path: Path) -> None:
    """kopf installs aiohttp beside the CLI; the Azure SDK would import its aiohttp transport
    (~110 ms) on every command although the CLI never uses it."""
    assert importlib.util.find_spec("aiohttp"), "the test venv has kopf, and kopf brings aiohttp"
    bucket = azurite_server.new_bucket()
    try:
        cli = cli_for(azurite_server, bucket, tmp_path)
        cli.ok("repo", "create", "--repo", "r", "--description", "d")
        probe = "import runpy, sys; sys.argv = ['datarun', 'repo', 'list']; "
        probe += "import atexit; atexit.register(lambda: print('aiohttp' in sys.modules, file=sys.stderr)); "
        probe += "runpy.run_module('datarun.cli.main', run_name='__main__')"
        done = subprocess.run([sys.executable, "-c", probe], env=cli.environ(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("r , d , ")
        assert done.stderr.strip().splitlines()[-1] == "False"
    finally:
        azurite_server.drop_bucket(bucket)


def test_config_create_records_the_cloud_store_and_a_credential_file(azurite_server: Azurite, tmp_path: Path) -> None:
    bucket = azurite_server.new_bucket()
    try:
        secret_file = tmp_path / "secret" / "connection-string"  # as a Kubernetes Secret volume mounts it
        secret_file.parent.mkdir()
        secret_file.write_text(azurite_server.connection_string() + "\n")
        cli = Cli(tmp_path, "", {})
        no_store = {"DATARUN_STORE": ""}
        cli.ok("config", "create", "--store", f"az://{bucket}/cfg", "--credential", str(secret_file), **no_store)
        shown = json.loads(cli.ok("config", "show", "--json", **no_store))
        assert shown["backend"] == "azure" and shown["store"] == f"az://{bucket}/cfg"
        assert shown["credential"] == str(secret_file)
        assert DEV_KEY not in json.dumps(shown)
        # No Azure variable in the environment: the credential file alone gets us in.
        cli.ok("repo", "create", "--repo", "viaconfig", **no_store)
        assert "viaconfig" in cli.ok("repo", "list", **no_store)
    finally:
        azurite_server.drop_bucket(bucket)


def test_store_failures_are_one_line_with_the_fix_and_no_secret(cloud: Emulator, bucket: str, tmp_path: Path) -> None:
    unreachable = cli_for(cloud, bucket, tmp_path, port=closed_port())
    started = time.monotonic()
    ran = unreachable.run("repo", "list", DATARUN_STORE_RETRIES="2")
    assert time.monotonic() - started < 20
    assert ran.code == ExitCode.STORE, ran.err
    assert ran.err.count("\n") == 1 and "reachable" in ran.err and "Traceback" not in ran.err

    missing = cli_for(cloud, "no-such-bucket-here", tmp_path)
    ran = missing.run("repo", "list")
    assert ran.code == ExitCode.STORE, ran.err
    assert "no-such-bucket-here" in ran.err and "create it with" in ran.err and ran.err.count("\n") == 1

    if isinstance(cloud, Azurite):
        wrong_key = DEV_KEY[:-8] + "AAAAAAA="
        bad = Cli(tmp_path, f"az://{bucket}/team", cloud.env(key=wrong_key))
        ran = bad.run("repo", "list")
        assert ran.code == ExitCode.STORE, ran.err
        assert "credentials" in ran.err and "AZURE_STORAGE_CONNECTION_STRING" in ran.err
        assert wrong_key not in ran.err and DEV_KEY not in ran.err and ran.err.count("\n") == 1


@pytest.mark.slow
def test_32_racing_label_set_processes_have_one_winner_per_round(cloud: Emulator, bucket: str, tmp_path: Path) -> None:
    cli = cli_for(cloud, bucket, tmp_path)
    cli.ok("repo", "create", "--repo", "r")
    src = tmp_path / "src"
    src.mkdir()
    bundles = []
    for i in range(3):
        (src / "f").write_text(str(i))
        bundles.append(cli.ok("bundle", "upload", "--path", str(src), "--message", str(i), "--repo", "r").split()[-1])

    expected = ""  # round 1: create-only; later rounds: compare-and-swap from the last winner
    winners: list[str] = []
    for round_no in range(2):
        # Every racer moves the label *away* from `expected`, so once one wins, the rest must see
        # a different bundle than they expect and lose; a racer re-setting the same bundle would
        # legitimately pass a later --expect check.
        targets = [b for b in bundles if b != expected]
        argvs = [
            cli.argv("label", "set", "--repo", "r", "--label", "race", "--bundle", targets[n % 2], "--expect", expected)
            for n in range(32)
        ]
        procs = [
            subprocess.Popen(a, env=cli.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for a in argvs
        ]
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda p: (p.communicate(timeout=120), p.returncode), procs))
        codes = [code for _, code in results]
        assert codes.count(0) == 1, f"round {round_no}: {codes}"
        assert all(c in (0, ExitCode.CONFLICT) for c in codes), [err for (_, err), _ in results]
        winner = argvs[codes.index(0)][argvs[0].index("--bundle") + 1]
        winners.append(winner)
        expected = winner
    history = json.loads(cli.ok("label", "history", "--repo", "r", "--label", "race", "--json"))
    assert [h["seq"] for h in history] == [1, 2]
    assert [h["bundle"] for h in history] == winners


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["azurite", "gcs"])
def test_killing_the_emulator_under_a_cli_upload(kind: str, tmp_path: Path) -> None:
    server: Emulator = (
        start_azurite(tmp_path / "emulator")
        if kind == "azurite"
        else start_fake_gcs(tmp_path / "emulator", persistent=True)
    )
    try:
        bucket = server.new_bucket()
        cli = cli_for(server, bucket, tmp_path)
        cli.ok("repo", "create", "--repo", "big")
        src = tmp_path / "src"
        src.mkdir()
        for i in range(6):  # 6 x 24 MiB: several 32 MiB packs, so the kill lands between two of them
            (src / f"part-{i}.bin").write_bytes(os.urandom(24 << 20))
        argv = cli.argv("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "big", "--label", "v")
        upload = subprocess.Popen(
            argv,
            env=cli.environ(DATARUN_STORE_RETRIES="2", DATARUN_STORE_RETRY_SECONDS="2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        watcher = server.store(bucket, "team")
        try:
            deadline = time.monotonic() + 60
            while not any(True for _ in watcher.list("index/")):
                assert upload.poll() is None, "the upload ended before a single pack was indexed"
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            watcher.close()
        # fake-gcs-server's filesystem backend writes through, so it can take a real SIGKILL;
        # Azurite flushes its metadata on SIGTERM (real Azure never loses an acknowledged write).
        server.stop(signal.SIGTERM if kind == "azurite" else signal.SIGKILL)
        _, err = upload.communicate(timeout=120)
        assert upload.returncode == ExitCode.STORE, err
        assert f"store `{cli.url}`" in err and "Traceback" not in err

        server.start()
        assert json.loads(cli.ok("bundle", "list", "--repo", "big", "--json")) == []
        assert cli.run("label", "get", "--repo", "big", "--label", "v").code == ExitCode.NOT_FOUND
        again = upload_json(
            cli.ok("bundle", "upload", "--path", str(src), "--message", "m", "--repo", "big", "--label", "v", "--json")
        )
        total = 6 * (24 << 20)
        assert again["stats"]["bytes_total"] == total
        assert again["stats"]["bytes_new"] < total, "packs indexed before the kill are not sent again"
        assert cli.ok("label", "get", "--repo", "big", "--label", "v").strip() == again["bundle"]["id"]
    finally:
        server.stop()

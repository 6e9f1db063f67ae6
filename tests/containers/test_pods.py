"""The operator's pods in real containers: ``get_pod`` -> ``podman kube play`` -> ``parse_pod_result``.

Each test renders the exact pod the operator builds for a DataRun (settings pointing at the local
images, ``imagePullPolicy: Never``), runs it with podman against fake-gcs-server on the host, and
checks the outcome twice: through the store (datarun's public API on the host) and through the
pod status, as the operator reads it. The app's image is plain Debian (``sh`` and coreutils, no
datarun at all). What podman does not do as Kubernetes does is stated per test and in
tests/containers/kubeplay.py: termination-log files and Secrets are provided the way the kubelet
provides them, and pods share the host's network to reach the emulator.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from datarun_operator.builder import FUSE, MAIN, POSTGRES, get_pod
from datarun_operator.models import DataRun, Phase
from datarun_operator.result import parse_pod_result
from datarun_operator.settings import ImageSettings, Settings, StoreSettings, TimeoutSettings
from tests.containers.conftest import Images, RunStore
from tests.containers.kubeplay import PlayedPod, play
from tests.store.emulators import free_port

pytestmark = [pytest.mark.containers, pytest.mark.slow]


def settings_for(images: Images, store: RunStore, wrapper: str = "") -> Settings:
    return Settings(
        images=ImageSettings(sidecar=images.sidecar, wrapper=wrapper or images.wrapper, pull_policy="Never"),
        store=StoreSettings(url=store.url, credentials_secret=store.secret),
        # Short enough that a broken pod fails the test instead of hanging it.
        timeouts=TimeoutSettings(ready_seconds=120, heartbeat_seconds=30, mount_seconds=60, app_heartbeat_seconds=60),
    )


def datarun(spec: dict[str, Any]) -> DataRun:
    body = {
        "apiVersion": "datarun.io/v1alpha1",
        "kind": "DataRun",
        "metadata": {"name": f"ct-{secrets.token_hex(4)}", "namespace": "team", "uid": str(uuid.uuid4())},
        "spec": spec,
    }
    return DataRun.from_body(body)


def run_pod(
    run: DataRun, pinned: dict[str, str], images: Images, store: RunStore, tmp_path: Path, wrapper: str = ""
) -> tuple[dict[str, Any], PlayedPod]:
    pod = get_pod(run, pinned, settings_for(images, store, wrapper))
    return pod, play(pod, tmp_path / "pod")


def seed_input(store: RunStore, tmp_path: Path) -> str:
    """A bundle `numbers@v1` with two files; returns its id."""
    src = tmp_path / "numbers"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("1\n2\n3\n")
    (src / "sub" / "b.txt").write_text("4\n5\n")
    store.client.create_repo("numbers")
    return store.client.upload("numbers", src, "seed", label="v1").bundle.id


COPY_APP = (
    'set -e; cat "$DATARUN_INPUT_NUMBERS/a.txt" "$DATARUN_INPUT_NUMBERS/sub/b.txt" > "$DATARUN_OUTPUT_RESULT/all.txt";'
    ' wc -l < "$DATARUN_OUTPUT_RESULT/all.txt" > "$DATARUN_OUTPUT_RESULT/count.txt"; echo copied'
)


def test_unmodified_app_reads_inputs_and_writes_labelled_outputs(
    images: Images, run_store: RunStore, tmp_path: Path
) -> None:
    """A downloaded input and one output, in an app image that knows nothing of datarun.

    Inputs use ``mode: download``: the sidecar writes them into the shared ``/data`` emptyDir
    before it reports ready, so the app reads them without FUSE (podman shares emptyDirs between
    containers as Kubernetes does). Ids come back through the fuse sidecar's termination message.
    """
    seed = seed_input(run_store, tmp_path)
    run_store.client.create_repo("results")
    run = datarun(
        {
            "image": images.base,
            "command": ["sh", "-c"],
            "args": [COPY_APP],
            "params": {"lr": "0.1", "note": "two words"},
            "inputs": [{"name": "numbers", "repo": "numbers", "label": "v1", "path": "in/numbers", "mode": "download"}],
            "outputs": [{"name": "result", "repo": "results", "path": "out/result", "label": "latest"}],
        }
    )
    pod, played = run_pod(run, {"numbers": seed}, images, run_store, tmp_path)

    assert pod["spec"]["containers"][0]["image"] == images.base
    assert played.pod["status"]["phase"] == "Succeeded", played.describe()
    assert played.container(MAIN)["state"]["terminated"]["exitCode"] == 0
    assert "copied" in played.logs[MAIN]

    # The store: a new bundle in `results`, labelled, holding what the app wrote from the input.
    label = run_store.client.get_label("results", "latest")
    bundle = run_store.client.get_bundle("results", label.bundle)
    out = tmp_path / "downloaded"
    run_store.client.download(bundle, out)
    assert (out / "all.txt").read_text() == "1\n2\n3\n4\n5\n"
    assert (out / "count.txt").read_text().strip() == "5"
    assert [(i.repo, i.bundle) for i in bundle.provenance.inputs] == [("numbers", seed)]
    assert bundle.provenance.run is not None
    assert bundle.provenance.run.run_id == f"team/{run.name}/{run.uid}"
    assert bundle.provenance.run.image == images.base
    assert bundle.provenance.run.params == {"lr": "0.1", "note": "two words"}

    # The pod status: the termination message carries the id, and the operator's parser finds it.
    message = json.loads(played.container(FUSE)["state"]["terminated"]["message"])
    assert [o["bundle"] for o in message["outputs"] if o.get("uploaded")] == [bundle.id]
    result = parse_pod_result(played.pod)
    assert result.phase is Phase.SUCCEEDED, result
    assert result.app_exit_code == 0
    assert [(o.name, o.repo, o.bundle, o.label) for o in result.outputs] == [("result", "results", bundle.id, "latest")]


def test_mounted_input_is_a_real_fuse_mount_in_the_privileged_sidecar(
    images: Images, run_store: RunStore, tmp_path: Path
) -> None:
    """``mode: mount``: the fuse sidecar is privileged and mounts the pinned bundle with FUSE.

    What podman cannot express: mount propagation. Kubernetes carries the sidecar's mount to the
    app through ``mountPropagation: Bidirectional`` / ``HostToContainer`` on the shared volume;
    ``podman kube play`` 4.3 ignores the field and mounts emptyDirs rprivate, so the app's
    container sees the empty mount point (checked by hand: ``ls`` lists nothing), so reading a
    mounted input is covered by tests/mount and tests/protocol, not here. The closest real thing
    is tested: the privileged container opens /dev/fuse and mounts the pinned bundle (it reports
    ready, naming the bundle, only once the mount answers), the wrapper then runs the app, and
    the output is uploaded and reported as usual.
    """
    seed = seed_input(run_store, tmp_path)
    run_store.client.create_repo("results")
    run = datarun(
        {
            "image": images.base,
            "command": ["sh", "-c"],
            "args": ['echo "written next to a mount" > "$DATARUN_OUTPUT_RESULT/note.txt"'],
            "inputs": [{"name": "numbers", "repo": "numbers", "label": "v1", "path": "in/numbers"}],
            "outputs": [{"name": "result", "repo": "results", "path": "out/result", "label": "latest"}],
        }
    )
    pod, played = run_pod(run, {"numbers": seed}, images, run_store, tmp_path)

    fuse_spec = next(c for c in pod["spec"]["containers"] if c["name"] == FUSE)
    assert fuse_spec["securityContext"] == {"privileged": True}
    assert played.pod["status"]["phase"] == "Succeeded", played.describe()
    ready = json.loads(played.coord["fuse/ready"])
    assert seed in json.dumps(ready), ready
    assert played.coord.get("mountdone", "").strip() == "ready"
    result = parse_pod_result(played.pod)
    assert result.phase is Phase.SUCCEEDED, result
    (output,) = result.outputs
    assert output.bundle == run_store.client.get_label("results", "latest").bundle
    # The output folder sits on the same /data volume the sidecar mounts under (Bidirectional there).
    out = tmp_path / "out"
    run_store.client.download(run_store.client.get_bundle("results", output.bundle), out)
    assert (out / "note.txt").read_text() == "written next to a mount\n"


def test_failing_app_records_its_exit_code_and_uploads_nothing(
    images: Images, run_store: RunStore, tmp_path: Path
) -> None:
    """The app exits 3: the wrapper exits 3, the pod fails, no bundle is made, the label never moves.

    The app's last log lines become main's termination message (FallbackToLogsOnError, which
    the harness applies the way the kubelet does) and so the run's message.
    """
    seed = seed_input(run_store, tmp_path)
    run_store.client.create_repo("results")
    run = datarun(
        {
            "image": images.base,
            "command": ["sh", "-c"],
            "args": ['echo partial > "$DATARUN_OUTPUT_RESULT/half.txt"; echo "boom: bad input" >&2; exit 3'],
            "inputs": [{"name": "numbers", "repo": "numbers", "label": "v1", "path": "in/numbers", "mode": "download"}],
            "outputs": [{"name": "result", "repo": "results", "path": "out/result", "label": "latest"}],
        }
    )
    _, played = run_pod(run, {"numbers": seed}, images, run_store, tmp_path)

    assert played.pod["status"]["phase"] == "Failed", played.describe()
    main = played.container(MAIN)["state"]["terminated"]
    assert main["exitCode"] == 3
    assert "boom: bad input" in main["message"]
    assert played.container(FUSE)["state"]["terminated"]["exitCode"] == 0
    assert run_store.client.list_bundles("results") == []
    assert run_store.client.list_labels("results") == []

    result = parse_pod_result(played.pod)
    assert result.phase is Phase.FAILED
    assert result.reason == "AppFailed"
    assert result.app_exit_code == 3
    assert "boom: bad input" in result.message
    (output,) = result.outputs
    assert output.bundle == ""
    assert output.error, output


def test_postgres_run_uploads_the_dump_as_a_labelled_bundle(
    images: Images, run_store: RunStore, tmp_path: Path
) -> None:
    """A DataRun with a database: the app creates a table, the sidecar dumps it into a bundle.

    The app image here is the sidecar image, for its ``psql`` (plain Debian has no client). Pods
    share the host's network, so the server's 127.0.0.1 port is a free host port. The init
    container copies the wrapper out of the sidecar image, the chart's default, instead of the
    small wrapper image the other tests use.
    """
    run_store.client.create_repo("dumps")
    port = free_port()
    sql = "CREATE TABLE readings (id int PRIMARY KEY, value text); INSERT INTO readings VALUES (1, 'one'), (2, 'two');"
    run = datarun(
        {
            "image": images.sidecar,
            "command": ["sh", "-c"],
            "args": [f'psql -v ON_ERROR_STOP=1 "$DATARUN_DATABASE_DB_URL" -c "{sql}" && echo created'],
            "databases": [{"name": "db", "port": port, "outputRepo": "dumps", "outputLabel": "latest"}],
        }
    )
    pod, played = run_pod(run, {}, images, run_store, tmp_path, wrapper=images.sidecar)

    assert [c["name"] for c in pod["spec"]["containers"]] == [MAIN, POSTGRES]
    assert pod["spec"]["initContainers"][0]["image"] == images.sidecar
    assert played.pod["status"]["phase"] == "Succeeded", played.describe()
    assert "created" in played.logs[MAIN]

    label = run_store.client.get_label("dumps", "latest")
    result = parse_pod_result(played.pod)
    assert result.phase is Phase.SUCCEEDED, result
    assert [(o.name, o.repo, o.bundle) for o in result.outputs] == [("db", "dumps", label.bundle)]

    bundle = run_store.client.get_bundle("dumps", label.bundle)
    out = tmp_path / "dump"
    run_store.client.download(bundle, out)
    dumps = [p for p in out.rglob("*") if p.is_file()]
    assert dumps, "the bundle holds no dump"
    # The host's pg_restore turns the custom-format dump back into SQL: the table and its rows.
    text = "".join(
        subprocess.run(["pg_restore", "-f", "-", str(p)], capture_output=True, text=True, check=False).stdout
        for p in dumps
    )
    assert "CREATE TABLE public.readings" in text, [p.name for p in dumps]
    assert "1\tone" in text
    assert "2\ttwo" in text

"""Pure builders: a DataRun becomes a Pod manifest, and a Pod's status becomes a run result.

No I/O and no kopf here (an import-linter contract keeps it so): the handlers fetch and send,
these functions decide. The pod, for a DataRun ``x`` with inputs, outputs and a database::

    pod x-run  (restartPolicy Never, ownerReference -> DataRun x)
      init  datarun-init       copies wrap_application.sh into the `datarun-bin` emptyDir and
                               creates the input/output folders under /data
      main  main               wrap_application.sh -c /coord -b fuse -b postgres -- <command> <args>
                               /data: HostToContainer (sees the sidecar's FUSE mounts)
      side  datarun-fuse       datarun-sidecar fuse -c /coord -d "config create ..." -d "bundle mount ..."
                               -d "bundle upload ..."; privileged and /data Bidirectional ONLY when an
                               input is mounted (FUSE needs /dev/fuse and CAP_SYS_ADMIN)
      side  datarun-postgres   datarun-sidecar postgres, configured by dm_pg_opts / dm_pg_db_<name>
    volumes: datarun-coord, datarun-bin, datarun-data, datarun-cache (emptyDirs), and the
             credential file's Secret when one is configured

Sidecars write their result (sidecar/PROTOCOL.md) to /dev/termination-log; the kubelet copies it
into the pod status, where :func:`parse_pod_result` reads it.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from datarun_operator.models import (
    API_VERSION,
    DATA_ROOT,
    KIND,
    PARAMS_FILE,
    CacheMedium,
    DataRun,
    DataRunSpec,
    InputMode,
    OutputStatus,
    Phase,
    SpecError,
)
from datarun_operator.runrecord import record_id
from datarun_operator.settings import Settings

MAIN = "main"
FUSE = "datarun-fuse"
POSTGRES = "datarun-postgres"
INIT = "datarun-init"
SIDECARS = (FUSE, POSTGRES)

MANAGED_BY = "datarun-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RUN = "datarun.io/run"
ANNOTATION_OUTPUTS = "datarun.io/outputs"
ANNOTATION_PARAMS = "datarun.io/params"
TERMINATION_LOG = "/dev/termination-log"

VOL_COORD = "datarun-coord"
VOL_BIN = "datarun-bin"
VOL_DATA = "datarun-data"
VOL_CACHE = "datarun-cache"
VOL_CREDENTIALS = "datarun-credentials"
VOL_PARAMS = "datarun-params"
CREDENTIAL_FILE = "credential"

# wrap_application.sh's own exit codes (see its header and sidecar/PROTOCOL.md)
EXIT_UPLOAD_FAILED = 75
EXIT_NOT_READY = 76
EXIT_NO_ANSWER = 77

MESSAGE_LIMIT = 1024


def pod_name(run_name: str) -> str:
    """Deterministic, so a retried or restarted create finds the pod instead of making a second one."""
    return f"{run_name}-run"


def env_suffix(name: str) -> str:
    return name.upper().replace("-", "_")


def data_path(relative: str) -> str:
    return f"{DATA_ROOT}/{relative}"


def store_of(spec: DataRunSpec, settings: Settings) -> tuple[str, str]:
    """(store URL, credentials Secret name) for this run; the spec's override wins."""
    url = spec.store.url if spec.store is not None else settings.store.url
    secret = settings.store.credentials_secret
    if spec.store is not None and spec.store.credentials_secret:
        secret = spec.store.credentials_secret
    if not url:
        raise SpecError("spec.store.url", "no store is configured: set spec.store.url, or store.url in the chart")
    return url, secret


# -- serialised maps for the postgres sidecar ---------------------------------------------------

_SEPARATORS = ";:|,!#%&@^~=+*\x1e\x1f"


def serialize_map(entries: Mapping[str, str | bool]) -> str:
    """datamon's ``<entry_sep><kv_sep>k:v;flag`` format (datarun_sidecar.serialmap), with separators
    chosen so that no key or value contains them."""
    text = "".join(f"{k}{v if isinstance(v, str) else ''}" for k, v in entries.items())
    free = [c for c in _SEPARATORS if c not in text]
    if len(free) < 2:
        raise ValueError("no free separator characters for a serialised map")
    entry_sep, kv_sep = free[0], free[1]
    body = entry_sep.join(k if v is True else f"{k}{kv_sep}{v}" for k, v in entries.items() if v is not False)
    return f"{entry_sep}{kv_sep}{body}"


# -- the pod ------------------------------------------------------------------------------------
# The builders below serve two callers: get_pod (a DataRun's own pod) and the mutating webhook
# (datarun_operator.webhook, an existing pod such as an Argo step). Both go through build_injection,
# so a DataRun pod and an injected pod get the very same sidecars, volumes and wrapper.


@dataclass(frozen=True, kw_only=True)
class RunIdentity:
    """Who runs the app, as the sidecars record it in bundle provenance and default messages."""

    description: str
    """``DataRun team/job``; may hold ``$(VAR)`` references to the sidecars' env (the kubelet expands
    them in commands and env values), which is how a pod names itself before it has a name or uid."""
    env: tuple[Mapping[str, Any], ...]
    """The sidecars' env that defines ``DATARUN_RUN_ID`` (and the variables ``description`` uses)."""


def datarun_identity(run: DataRun) -> RunIdentity:
    return RunIdentity(
        description=f"DataRun {run.namespace}/{run.name}",
        env=(
            {"name": "DATARUN_RUN_ID", "value": f"{run.namespace}/{run.name}/{run.uid}"},
            # The run record the operator writes at pin time; the sidecars add their outputs to it.
            {"name": "DATARUN_RUN_RECORD", "value": record_id(run)},
        ),
    )


def _field_ref(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


POD_IDENTITY = RunIdentity(
    # A mutating webhook sees a pod before the apiserver gives it a uid (and, with generateName, a
    # name), so the pod names itself through the downward API when its containers start.
    description="pod $(DATARUN_POD_NAMESPACE)/$(DATARUN_POD_NAME)",
    env=(
        _field_ref("DATARUN_POD_NAMESPACE", "metadata.namespace"),
        _field_ref("DATARUN_POD_NAME", "metadata.name"),
        _field_ref("DATARUN_POD_UID", "metadata.uid"),
        {"name": "DATARUN_RUN_ID", "value": "$(DATARUN_POD_NAMESPACE)/$(DATARUN_POD_NAME)/$(DATARUN_POD_UID)"},
    ),
)
"""The identity of a pod the webhook injects into."""


def _source(
    name: str, bundle: str | None, label: str | None, pinned_inputs: Mapping[str, str]
) -> tuple[str, str] | None:
    """("bundle", id) when pinned or given, else ("label", name) for the sidecar to resolve; None: no source."""
    if name in pinned_inputs:
        return "bundle", pinned_inputs[name]
    if bundle:
        return "bundle", bundle
    if label:
        return "label", label
    return None


def fuse_commands(
    spec: DataRunSpec, identity: RunIdentity, pinned_inputs: Mapping[str, str], store_url: str
) -> list[str]:
    """The ``-d`` strings of the fuse sidecar (parsed by datarun_sidecar.fuse.parse_commands).

    An input missing from ``pinned_inputs`` is mounted by its ``bundle``, or else by its ``label``,
    which the sidecar then pins itself before mounting."""
    commands = [shlex.join(["config", "create", f"--name={identity.description}", f"--store={store_url}"])]
    for inp in spec.inputs:
        kind, value = _source(inp.name, inp.bundle, inp.label, pinned_inputs) or ("label", "")
        commands.append(
            shlex.join(
                [
                    "bundle",
                    "mount",
                    f"--repo={inp.repo}",
                    f"--{kind}={value}",
                    f"--mount={data_path(inp.path)}",
                    f"--mode={inp.mode.value}",
                ]
            )
        )
    for out in spec.outputs:
        words = [
            "bundle",
            "upload",
            f"--repo={out.repo}",
            f"--path={data_path(out.path)}",
            f"--message={out.message or default_message(identity, out.name)}",
        ]
        if out.label:
            words.append(f"--label={out.label}")
        if out.upload_on_failure:
            words.append("--upload-on-failure")
        commands.append(shlex.join(words))
    return commands


def default_message(identity: RunIdentity, output: str) -> str:
    return f"output {output} of {identity.description}"


def postgres_env(
    spec: DataRunSpec, identity: RunIdentity, pinned_inputs: Mapping[str, str], settings: Settings
) -> list[dict[str, Any]]:
    """``dm_pg_opts`` and one ``dm_pg_db_<name>`` per database (datarun_sidecar.postgres.plan_from_env)."""
    env = [{"name": "dm_pg_opts", "value": serialize_map({"c": settings.pod.coord_dir})}]
    for db in spec.databases:
        entries: dict[str, str | bool] = {"p": str(db.port)}
        if db.output_repo:
            entries["r"] = db.output_repo
            entries["m"] = db.output_message or default_message(identity, db.name)
        if db.output_label:
            entries["l"] = db.output_label
        if db.source_repo:
            entries["sr"] = db.source_repo
            source = _source(db.name, db.source_bundle, db.source_label, pinned_inputs)
            if source is not None:
                entries["sb" if source[0] == "bundle" else "sl"] = source[1]
        env.append({"name": f"dm_pg_db_{db.name}", "value": serialize_map(entries)})
    return env


def _mounts_fuse(spec: DataRunSpec) -> bool:
    return any(inp.mode is InputMode.MOUNT for inp in spec.inputs)


def _sidecar_env(
    spec: DataRunSpec, identity: RunIdentity, settings: Settings, store_url: str, secret: str
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "DATARUN_STORE", "value": store_url},
        {"name": "DATARUN_CACHE_DIR", "value": settings.pod.cache_dir},
        {"name": "DATARUN_TERMINATION_LOG", "value": TERMINATION_LOG},
        *(dict(e) for e in identity.env),
        {"name": "DATARUN_IMAGE", "value": spec.image},
    ]
    if secret and settings.store.credentials_file_key:
        env.append(
            {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{settings.pod.credentials_dir}/{CREDENTIAL_FILE}"}
        )
    return env


def _sidecar_common(
    spec: DataRunSpec, identity: RunIdentity, settings: Settings, store_url: str, secret: str
) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [
        {"name": VOL_COORD, "mountPath": settings.pod.coord_dir},
        {"name": VOL_CACHE, "mountPath": settings.pod.cache_dir},
    ]
    if secret and settings.store.credentials_file_key:
        mounts.append({"name": VOL_CREDENTIALS, "mountPath": settings.pod.credentials_dir, "readOnly": True})
    container: dict[str, Any] = {
        "image": settings.images.sidecar,
        "imagePullPolicy": settings.images.pull_policy,
        "env": _sidecar_env(spec, identity, settings, store_url, secret),
        "volumeMounts": mounts,
        # The sidecar writes its result JSON here; the kubelet puts it in the pod status.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    if secret:
        # Credentials never appear in the manifest: every key of the Secret becomes an env var.
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    return container


def data_env(spec: DataRunSpec) -> list[dict[str, Any]]:
    """Where the app finds its inputs, outputs and databases (the same in a DataRun and an injected pod)."""
    env: list[dict[str, Any]] = []
    env.extend({"name": f"DATARUN_INPUT_{env_suffix(i.name)}", "value": data_path(i.path)} for i in spec.inputs)
    env.extend({"name": f"DATARUN_OUTPUT_{env_suffix(o.name)}", "value": data_path(o.path)} for o in spec.outputs)
    env.extend(
        {
            "name": f"DATARUN_DATABASE_{env_suffix(d.name)}_URL",
            "value": f"postgresql://postgres@127.0.0.1:{d.port}/postgres",
        }
        for d in spec.databases
    )
    return env


def _user_env(spec: DataRunSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    for var in spec.env:
        item: dict[str, Any] = {"name": var.name}
        if var.value_from is not None:
            item["valueFrom"] = var.value_from
        else:
            item["value"] = var.value or ""
        env.append(item)
    return env


def _init_script(spec: DataRunSpec, settings: Settings) -> str:
    wrapper = f"{settings.pod.bin_dir}/wrap_application.sh"
    lines = [
        "set -eu",
        f"cp {shlex.quote(settings.images.wrapper_path)} {shlex.quote(wrapper)}",
        f"chmod 0755 {shlex.quote(wrapper)}",
    ]
    folders = [data_path(i.path) for i in spec.inputs] + [data_path(o.path) for o in spec.outputs]
    if folders:
        lines.append("mkdir -p " + " ".join(shlex.quote(f) for f in folders))
    return "\n".join(lines)


def _fuse_container(
    spec: DataRunSpec,
    identity: RunIdentity,
    pinned_inputs: Mapping[str, str],
    settings: Settings,
    store_url: str,
    secret: str,
) -> dict[str, Any]:
    fuse = _sidecar_common(spec, identity, settings, store_url, secret)
    command = [
        "datarun-sidecar",
        "fuse",
        "-c",
        settings.pod.coord_dir,
        "--store",
        store_url,
        "--termination-log",
        TERMINATION_LOG,
        "--mount-timeout",
        str(settings.timeouts.mount_seconds),
        "--app-heartbeat-timeout",
        str(settings.timeouts.app_heartbeat_seconds),
    ]
    for text in fuse_commands(spec, identity, pinned_inputs, store_url):
        command += ["-d", text]
    data_mount: dict[str, Any] = {"name": VOL_DATA, "mountPath": DATA_ROOT}
    if _mounts_fuse(spec):
        # Only this container is privileged, and only when it mounts: FUSE needs /dev/fuse and
        # CAP_SYS_ADMIN, and Bidirectional propagation (which Kubernetes allows only in privileged
        # containers) is what carries the mounts to the app's container.
        data_mount["mountPropagation"] = "Bidirectional"
        fuse["securityContext"] = {"privileged": True}
    fuse["volumeMounts"] = [*fuse["volumeMounts"], data_mount]
    return {"name": FUSE, "command": command, **fuse}


def _postgres_container(
    spec: DataRunSpec,
    identity: RunIdentity,
    pinned_inputs: Mapping[str, str],
    settings: Settings,
    store_url: str,
    secret: str,
) -> dict[str, Any]:
    pg = _sidecar_common(spec, identity, settings, store_url, secret)
    pg["env"] = [*pg["env"], *postgres_env(spec, identity, pinned_inputs, settings)]
    command = [
        "datarun-sidecar",
        "postgres",
        "--store",
        store_url,
        "--termination-log",
        TERMINATION_LOG,
        "--app-heartbeat-timeout",
        str(settings.timeouts.app_heartbeat_seconds),
    ]
    return {"name": POSTGRES, "command": command, **pg}


def wrapper_argv(settings: Settings, kinds: Sequence[str]) -> list[str]:
    """``wrap_application.sh`` and its options, up to and including the ``--`` before the app."""
    t = settings.timeouts
    return [
        f"{settings.pod.bin_dir}/wrap_application.sh",
        "-c",
        settings.pod.coord_dir,
        *(w for kind in kinds for w in ("-b", kind)),
        "-r",
        str(t.ready_seconds),
        "-u",
        str(t.upload_seconds),
        "-h",
        str(t.heartbeat_seconds),
        "--",
    ]


def _volumes(spec: DataRunSpec, settings: Settings, secret: str, use_fuse: bool) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": VOL_COORD, "emptyDir": {}}, {"name": VOL_BIN, "emptyDir": {}}]
    if use_fuse:
        volumes.append({"name": VOL_DATA, "emptyDir": {}})
    cache: dict[str, Any] = {}
    if spec.cache is not None:
        if spec.cache.size_limit:
            cache["sizeLimit"] = spec.cache.size_limit
        if spec.cache.medium is CacheMedium.MEMORY:
            cache["medium"] = "Memory"
    volumes.append({"name": VOL_CACHE, "emptyDir": cache})
    if secret and settings.store.credentials_file_key:
        volumes.append(
            {
                "name": VOL_CREDENTIALS,
                "secret": {
                    "secretName": secret,
                    "items": [{"key": settings.store.credentials_file_key, "path": CREDENTIAL_FILE}],
                    "defaultMode": 0o440,
                },
            }
        )
    return volumes


@dataclass(frozen=True, kw_only=True)
class Injection:
    """What datarun adds to a pod around its app container; get_pod and the webhook both apply it."""

    wrapper: list[str]
    """Put in front of the app's command: ``wrap_application.sh -c ... -b ... --``."""
    env: list[dict[str, Any]]
    """Appended to the app container's env."""
    volume_mounts: list[dict[str, Any]]
    """Appended to the app container's volumeMounts."""
    init_container: dict[str, Any]
    sidecars: list[dict[str, Any]]
    volumes: list[dict[str, Any]]


def build_injection(
    spec: DataRunSpec, identity: RunIdentity, pinned_inputs: Mapping[str, str], settings: Settings
) -> Injection | None:
    """The sidecars, volumes, init container and wrapper for ``spec``'s inputs, outputs and databases;
    None when it has none (the app then runs as is: no wrapper, no sidecar, no store needed).

    Raises SpecError if a store is needed and none is configured."""
    use_fuse = bool(spec.inputs or spec.outputs)
    use_postgres = bool(spec.databases)
    if not (use_fuse or use_postgres):
        return None
    store_url, secret = store_of(spec, settings)
    kinds = [k for k, used in (("fuse", use_fuse), ("postgres", use_postgres)) if used]
    mounts: list[dict[str, Any]] = [
        {"name": VOL_COORD, "mountPath": settings.pod.coord_dir},
        {"name": VOL_BIN, "mountPath": settings.pod.bin_dir, "readOnly": True},
    ]
    init_mounts: list[dict[str, Any]] = [{"name": VOL_BIN, "mountPath": settings.pod.bin_dir}]
    sidecars: list[dict[str, Any]] = []
    if use_fuse:
        data_mount: dict[str, Any] = {"name": VOL_DATA, "mountPath": DATA_ROOT}
        if _mounts_fuse(spec):
            # The sidecar's FUSE mounts (made under /data) propagate to the host and from there
            # into the app's container; HostToContainer needs no privilege.
            data_mount["mountPropagation"] = "HostToContainer"
        mounts.append(data_mount)
        init_mounts.append({"name": VOL_DATA, "mountPath": DATA_ROOT})
        sidecars.append(_fuse_container(spec, identity, pinned_inputs, settings, store_url, secret))
    if use_postgres:
        sidecars.append(_postgres_container(spec, identity, pinned_inputs, settings, store_url, secret))
    return Injection(
        wrapper=wrapper_argv(settings, kinds),
        env=data_env(spec),
        volume_mounts=mounts,
        init_container={
            "name": INIT,
            "image": settings.images.wrapper,
            "imagePullPolicy": settings.images.pull_policy,
            "command": ["sh", "-c", _init_script(spec, settings)],
            "volumeMounts": init_mounts,
        },
        sidecars=sidecars,
        volumes=_volumes(spec, settings, secret, use_fuse),
    )


# -- params.json ----------------------------------------------------------------------------------
# spec.params reaches the app as a file through the downward API: the pod carries the JSON in an
# annotation and a downwardAPI volume turns that annotation into params.json. Unlike a ConfigMap
# this needs no second object (no create-before-the-pod ordering, no RBAC for configmaps, nothing
# to garbage-collect), and the file is exactly as immutable as the pod. The price is the size:
# all annotations of a pod share 256 KiB, which bounds params well above what params.json holds.

PARAMS_VOLUME: dict[str, Any] = {
    "name": VOL_PARAMS,
    "downwardAPI": {
        "items": [{"path": PARAMS_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_PARAMS}']"}}],
        "defaultMode": 0o444,
    },
}


def params_json(spec: DataRunSpec) -> str:
    """``spec.params`` as the one JSON object the app reads (keys sorted, so a pod is reproducible)."""
    return json.dumps(spec.params, sort_keys=True, separators=(",", ":"), allow_nan=False)


def params_mount(spec: DataRunSpec) -> dict[str, Any]:
    """params.json alone (subPath) in the working folder, over whatever the folder holds."""
    folder = spec.working_dir.rstrip("/")
    return {"name": VOL_PARAMS, "mountPath": f"{folder}/{PARAMS_FILE}", "subPath": PARAMS_FILE, "readOnly": True}


def get_pod(run: DataRun, pinned_inputs: Mapping[str, str], settings: Settings) -> dict[str, Any]:
    """The pod that runs ``run`` with its inputs pinned to ``pinned_inputs`` (name -> bundle id).

    ``pinned_inputs`` must hold every input and every database with a source (the handler pins
    labels before calling this). Raises SpecError if the run needs a store and none is configured.
    """
    spec = run.spec
    needed = [i.name for i in spec.inputs] + [d.name for d in spec.databases if d.source_repo]
    missing = [name for name in needed if name not in pinned_inputs]
    if missing:
        raise ValueError(f"inputs not pinned: {', '.join(missing)}")
    injection = build_injection(spec, datarun_identity(run), pinned_inputs, settings)

    main: dict[str, Any] = {
        "name": MAIN,
        "image": spec.image,
        "env": [
            *_user_env(spec),
            {"name": "DATARUN_RUN", "value": run.name},
            *(injection.env if injection else []),
            *(
                {"name": f"DATARUN_PARAM_{key}", "value": value}
                for key, value in sorted(spec.params.items())
                if isinstance(value, str)
            ),
        ],
        "workingDir": spec.working_dir,
        # A failing app's last log lines become the termination message, and so the run's reason.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.resources is not None:
        resources = {
            k: dict(v) for k, v in (("requests", spec.resources.requests), ("limits", spec.resources.limits)) if v
        }
        if resources:
            main["resources"] = resources
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [main]}
    if injection is None:
        main["command"] = [*spec.command, *spec.args]
    else:
        main["command"] = [*injection.wrapper, *spec.command, *spec.args]
        main["volumeMounts"] = injection.volume_mounts
        pod_spec["containers"].extend(injection.sidecars)
        pod_spec["initContainers"] = [injection.init_container]
        pod_spec["volumes"] = injection.volumes
    main["volumeMounts"] = [*main.get("volumeMounts", []), params_mount(spec)]
    pod_spec["volumes"] = [*pod_spec.get("volumes", []), PARAMS_VOLUME]
    if settings.pod.service_account:
        pod_spec["serviceAccountName"] = settings.pod.service_account
    if settings.pod.node_selector:
        pod_spec["nodeSelector"] = dict(settings.pod.node_selector)
    if settings.pod.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.pod.tolerations]

    outputs = [{"name": o.name, "repo": o.repo, "path": data_path(o.path)} for o in spec.outputs]
    outputs += [{"name": d.name, "repo": d.output_repo, "path": ""} for d in spec.databases if d.output_repo]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(run.name),
            "namespace": run.namespace,
            "labels": {**settings.pod.labels, LABEL_MANAGED_BY: MANAGED_BY, LABEL_RUN: run.name},
            # Which DataRun output each sidecar result belongs to, for parse_pod_result.
            "annotations": {
                **settings.pod.annotations,
                ANNOTATION_OUTPUTS: json.dumps(outputs, separators=(",", ":")),
                ANNOTATION_PARAMS: params_json(spec),
            },
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": run.name,
                    "uid": run.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": pod_spec,
    }


# -- the result ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SidecarReport:
    """One sidecar container at the end: its exit and its termination message, parsed."""

    container: str
    exit_code: int | None
    reason: str
    result: Mapping[str, Any] | None
    problem: str = ""
    """Why ``result`` is None although the container ended (missing or unreadable message)."""


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What a pod says about its run; the handlers turn it into the DataRun's status."""

    phase: Phase
    reason: str
    message: str
    outputs: tuple[OutputStatus, ...] = ()
    app_exit_code: int | None = None
    start_time: str | None = None
    completion_time: str | None = None


def _clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _terminated(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not status:
        return None
    state = status.get("state") or {}
    term = state.get("terminated")
    return term if isinstance(term, dict) else None


def _waiting(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not status:
        return None
    wait = (status.get("state") or {}).get("waiting")
    return wait if isinstance(wait, dict) else None


def _sidecar_report(name: str, status: Mapping[str, Any] | None) -> SidecarReport:
    term = _terminated(status)
    if term is None:
        return SidecarReport(container=name, exit_code=None, reason="", result=None, problem="it did not end")
    code = term.get("exitCode")
    reason = str(term.get("reason") or "")
    text = str(term.get("message") or "").strip()
    if not text:
        why = f"exited with code {code}" + (f" ({reason})" if reason else "") + " without a result"
        return SidecarReport(container=name, exit_code=code, reason=reason, result=None, problem=why)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        why = f"its termination message is not JSON (truncated at 4096 bytes?): {text[:80]!r}"
        return SidecarReport(container=name, exit_code=code, reason=reason, result=None, problem=why)
    if not isinstance(data, dict) or "status" not in data:
        return SidecarReport(
            container=name, exit_code=code, reason=reason, result=None, problem="its termination message has no status"
        )
    return SidecarReport(container=name, exit_code=code, reason=reason, result=data)


def _declared_outputs(pod: Mapping[str, Any]) -> list[dict[str, str]]:
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_OUTPUTS, "[]")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def _outputs(pod: Mapping[str, Any], reports: list[SidecarReport]) -> tuple[tuple[OutputStatus, ...], set[str]]:
    """Every declared output with its bundle or why it has none; and the names of failed uploads."""
    declared = _declared_outputs(pod)
    # The fuse sidecar names an output by its label or path; the DataRun's name comes from the
    # annotation the builder wrote, matched on (repo, path). Databases are named by their id.
    by_location = {(d.get("repo", ""), d.get("path", "")): d.get("name", "") for d in declared if d.get("path")}
    out: dict[str, OutputStatus] = {}
    failed: set[str] = set()
    for report in reports:
        if report.result is None:
            continue
        for item in report.result.get("outputs") or []:
            if not isinstance(item, dict):
                continue
            repo, path = str(item.get("repo", "")), str(item.get("path", ""))
            if not repo:
                continue  # a database without an output repo: nothing was meant to be uploaded
            name = by_location.get((repo, path)) if path else None
            name = name or str(item.get("name", ""))
            if item.get("error"):
                failed.add(name)
            out[name] = OutputStatus(
                name=name,
                repo=repo,
                bundle=str(item.get("bundle") or "") if item.get("uploaded") else "",
                label=str(item.get("label") or ""),
                error=str(item.get("error") or item.get("skipped_reason") or ""),
            )
    for d in declared:
        name = d.get("name", "")
        if name and name not in out:
            out[name] = OutputStatus(name=name, repo=d.get("repo", ""), error="no result from the sidecar")
    order = {d.get("name", ""): i for i, d in enumerate(declared)}
    return tuple(sorted(out.values(), key=lambda o: (order.get(o.name, len(order)), o.name))), failed


def _pending_message(pod: Mapping[str, Any]) -> tuple[str, str]:
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return str(cond.get("reason") or "Unschedulable"), _clip(str(cond.get("message") or "not scheduled yet"))
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            wait = _waiting(cs)
            if wait and wait.get("reason") not in (None, "PodInitializing", "ContainerCreating"):
                detail = f": {wait['message']}" if wait.get("message") else ""
                return str(wait["reason"]), _clip(f"container {cs.get('name')}: {wait['reason']}{detail}")
    return "PodPending", "waiting for the pod to start"


def parse_pod_result(pod: Mapping[str, Any]) -> RunResult:
    """Read a run's state from its pod: the phase, the outputs from the sidecars' termination
    messages, and the reason, from the exit codes of the wrapper (75/76/77, or the app's own)."""
    status = pod.get("status") or {}
    pod_phase = str(status.get("phase") or "Pending")
    start = status.get("startTime")
    statuses = {cs.get("name"): cs for cs in status.get("containerStatuses") or []}
    main_term = _terminated(statuses.get(MAIN))
    main_code = main_term.get("exitCode") if main_term else None
    sidecar_names = [
        c.get("name") for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") in SIDECARS
    ]

    if pod_phase not in ("Succeeded", "Failed"):
        if pod_phase == "Running":
            if main_term is not None:
                return RunResult(
                    phase=Phase.UPLOADING,
                    reason="AppEnded",
                    message=f"the app exited with code {main_code}; the sidecars are uploading",
                    app_exit_code=main_code if main_code not in (EXIT_NOT_READY, EXIT_NO_ANSWER) else None,
                    start_time=start,
                )
            if (statuses.get(MAIN) or {}).get("state", {}).get("running") is not None:
                return RunResult(phase=Phase.RUNNING, reason="Running", message="the app is running", start_time=start)
        if pod_phase == "Unknown":
            return RunResult(
                phase=Phase.RUNNING,
                reason="PodUnknown",
                message=_clip(str(status.get("message") or "the pod's node stopped reporting")),
                start_time=start,
            )
        reason, message = _pending_message(pod)
        return RunResult(phase=Phase.PENDING, reason=reason, message=message, start_time=start)

    reports = [_sidecar_report(name, statuses.get(name)) for name in sidecar_names]
    outputs, failed = _outputs(pod, reports)
    finished = [
        str(t["finishedAt"]) for cs in statuses.values() if (t := _terminated(cs)) is not None and t.get("finishedAt")
    ]
    end = max(finished) if finished else None
    codes = [r.result.get("appExitCode") for r in reports if r.result is not None]
    known = [c for c in codes if isinstance(c, int)]
    app_code: int | None = known[0] if known else None
    wrapper_codes = (EXIT_UPLOAD_FAILED, EXIT_NOT_READY, EXIT_NO_ANSWER)
    if app_code is None and main_code is not None and (not reports or main_code not in wrapper_codes):
        app_code = main_code  # without sidecars there is no wrapper: every code is the app's
    problems = [f"{r.container}: {r.problem}" for r in reports if r.result is None]
    failed_outputs = [o for o in outputs if o.name in failed]

    def result(phase: Phase, reason: str, message: str) -> RunResult:
        return RunResult(
            phase=phase,
            reason=reason,
            message=_clip(message),
            outputs=outputs,
            app_exit_code=app_code,
            start_time=start,
            completion_time=end,
        )

    if pod_phase == "Succeeded":
        if problems:
            return result(
                Phase.FAILED,
                "ResultUnreadable",
                "the pod succeeded but a result is missing, so output bundle ids are unknown (the uploads may have "
                "happened and labels moved): " + "; ".join(problems),
            )
        uploaded = sum(1 for o in outputs if o.bundle)
        return result(Phase.SUCCEEDED, "Succeeded", f"the app succeeded; {uploaded} of {len(outputs)} outputs uploaded")

    # -- the pod failed: find the first cause ---------------------------------------------------
    if status.get("reason") in ("Evicted", "DeadlineExceeded", "Preempting", "NodeLost", "Shutdown"):
        return result(Phase.FAILED, f"Pod{status['reason']}", str(status.get("message") or status["reason"]))
    for cs in status.get("initContainerStatuses") or []:
        term = _terminated(cs)
        if term is not None and term.get("exitCode") not in (0, None):
            detail = str(term.get("message") or term.get("reason") or "")
            return result(
                Phase.FAILED,
                "InitFailed",
                f"init container {cs.get('name')} exited with code {term.get('exitCode')}"
                f" (is the wrapper image right?): {detail}",
            )
    if main_term is None:
        return result(Phase.FAILED, "PodFailed", str(status.get("message") or "the pod failed before the app ended"))
    not_ready = [
        r for r in reports if r.result is not None and r.result.get("appExitCode") is None and r.result.get("errors")
    ]
    if main_code == EXIT_NOT_READY and app_code is None:
        why = [f"{r.container}: {'; '.join(map(str, r.result.get('errors') or []))}" for r in not_ready if r.result]
        why += problems
        return result(
            Phase.FAILED, "SidecarNotReady", "a sidecar failed before the app started: " + ("; ".join(why) or "?")
        )
    if main_term.get("reason") == "OOMKilled":
        return result(
            Phase.FAILED, "AppOOMKilled", "the app ran out of memory (OOMKilled); raise resources.limits.memory"
        )
    if app_code is not None and app_code != 0:
        tail = str(main_term.get("message") or "").strip()
        message = f"the app exited with code {app_code}" + (f": {tail}" if tail else "")
        return result(Phase.FAILED, "AppFailed", message)
    if failed_outputs:
        details = "; ".join(f"output `{o.name}` ({o.repo}): {o.error}" for o in failed_outputs)
        return result(Phase.FAILED, "UploadFailed", details)
    if main_code == EXIT_NO_ANSWER or problems:
        return result(
            Phase.FAILED,
            "SidecarUnresponsive",
            "a sidecar stopped answering before it reported its result: " + ("; ".join(problems) or "?"),
        )
    for report in reports:
        if report.exit_code not in (0, None):
            return result(
                Phase.FAILED, "SidecarFailed", f"{report.container} exited with code {report.exit_code} {report.reason}"
            )
    return result(Phase.FAILED, "PodFailed", str(status.get("message") or f"the wrapper exited with code {main_code}"))

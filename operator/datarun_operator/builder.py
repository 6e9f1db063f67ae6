"""Pure builders: a DataRun becomes a Pod manifest (and the webhook's injection into a pod).

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

What the sidecars are told (their commands and env) is :mod:`datarun_operator.wire`; what the
finished pod says is read by :mod:`datarun_operator.result`.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from datarun_operator.models import API_VERSION, DATA_ROOT, KIND, PARAMS_FILE, CacheMedium, DataRun, DataRunSpec
from datarun_operator.settings import Settings
from datarun_operator.wire import (
    CREDENTIAL_FILE,
    TERMINATION_LOG,
    RunIdentity,
    SidecarPlan,
    data_path,
    datarun_identity,
    fuse_argv,
    postgres_argv,
    postgres_env,
    sidecar_env,
    wrapper_argv,
)

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
"""Which DataRun output each sidecar result belongs to (JSON), for result.parse_pod_result."""

VOL_COORD = "datarun-coord"
VOL_BIN = "datarun-bin"
VOL_DATA = "datarun-data"
VOL_CACHE = "datarun-cache"
VOL_CREDENTIALS = "datarun-credentials"
VOL_PARAMS = "datarun-params"


def pod_name(run_name: str) -> str:
    """Deterministic, so a retried or restarted create finds the pod instead of making a second one."""
    return f"{run_name}-run"


def env_suffix(name: str) -> str:
    return name.upper().replace("-", "_")


# -- the sidecars -------------------------------------------------------------------------------
# The builders below serve two callers: get_pod (a DataRun's own pod) and the mutating webhook
# (datarun_operator.webhook, an existing pod such as an Argo step). Both go through build_injection,
# so a DataRun pod and an injected pod get the very same sidecars, volumes and wrapper.


def _sidecar(plan: SidecarPlan, name: str, command: list[str]) -> dict[str, Any]:
    settings = plan.settings
    mounts: list[dict[str, Any]] = [
        {"name": VOL_COORD, "mountPath": settings.pod.coord_dir},
        {"name": VOL_CACHE, "mountPath": settings.pod.cache_dir},
    ]
    if plan.credentials_file:
        mounts.append({"name": VOL_CREDENTIALS, "mountPath": settings.pod.credentials_dir, "readOnly": True})
    container: dict[str, Any] = {
        "name": name,
        "command": command,
        "image": settings.images.sidecar,
        "imagePullPolicy": settings.images.pull_policy,
        "env": sidecar_env(plan),
        "volumeMounts": mounts,
        # The sidecar writes its result JSON here; the kubelet puts it in the pod status.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    if plan.credentials_secret:
        # Credentials never appear in the manifest: every key of the Secret becomes an env var.
        container["envFrom"] = [{"secretRef": {"name": plan.credentials_secret}}]
    return container


def _fuse_container(plan: SidecarPlan) -> dict[str, Any]:
    fuse = _sidecar(plan, FUSE, fuse_argv(plan))
    data_mount: dict[str, Any] = {"name": VOL_DATA, "mountPath": DATA_ROOT}
    if plan.mounts_fuse:
        # Only this container is privileged, and only when it mounts: FUSE needs /dev/fuse and
        # CAP_SYS_ADMIN, and Bidirectional propagation (which Kubernetes allows only in privileged
        # containers) is what carries the mounts to the app's container.
        data_mount["mountPropagation"] = "Bidirectional"
        fuse["securityContext"] = {"privileged": True}
    fuse["volumeMounts"].append(data_mount)
    return fuse


def _postgres_container(plan: SidecarPlan) -> dict[str, Any]:
    pg = _sidecar(plan, POSTGRES, postgres_argv(plan))
    pg["env"].extend(postgres_env(plan))
    return pg


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


def _volumes(plan: SidecarPlan) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": VOL_COORD, "emptyDir": {}}, {"name": VOL_BIN, "emptyDir": {}}]
    if plan.uses_fuse:
        volumes.append({"name": VOL_DATA, "emptyDir": {}})
    cache: dict[str, Any] = {}
    if plan.spec.cache is not None:
        if plan.spec.cache.size_limit:
            cache["sizeLimit"] = plan.spec.cache.size_limit
        if plan.spec.cache.medium is CacheMedium.MEMORY:
            cache["medium"] = "Memory"
    volumes.append({"name": VOL_CACHE, "emptyDir": cache})
    if plan.credentials_file:
        volumes.append(
            {
                "name": VOL_CREDENTIALS,
                "secret": {
                    "secretName": plan.credentials_secret,
                    "items": [{"key": plan.settings.store.credentials_file_key, "path": CREDENTIAL_FILE}],
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
    if not (spec.inputs or spec.outputs or spec.databases):
        return None
    plan = SidecarPlan.of(spec, identity, pinned_inputs, settings)
    kinds = [k for k, used in (("fuse", plan.uses_fuse), ("postgres", plan.uses_postgres)) if used]
    mounts: list[dict[str, Any]] = [
        {"name": VOL_COORD, "mountPath": settings.pod.coord_dir},
        {"name": VOL_BIN, "mountPath": settings.pod.bin_dir, "readOnly": True},
    ]
    init_mounts: list[dict[str, Any]] = [{"name": VOL_BIN, "mountPath": settings.pod.bin_dir}]
    sidecars: list[dict[str, Any]] = []
    if plan.uses_fuse:
        data_mount: dict[str, Any] = {"name": VOL_DATA, "mountPath": DATA_ROOT}
        if plan.mounts_fuse:
            # The sidecar's FUSE mounts (made under /data) propagate to the host and from there
            # into the app's container; HostToContainer needs no privilege.
            data_mount["mountPropagation"] = "HostToContainer"
        mounts.append(data_mount)
        init_mounts.append({"name": VOL_DATA, "mountPath": DATA_ROOT})
        sidecars.append(_fuse_container(plan))
    if plan.uses_postgres:
        sidecars.append(_postgres_container(plan))
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
        volumes=_volumes(plan),
    )


# -- the pod ------------------------------------------------------------------------------------


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

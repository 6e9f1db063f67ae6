"""The operator <-> sidecar wire format: everything a pod's sidecars and wrapper are told, and how.

The other side of each of these is in ``sidecar/`` or ``wrap_application.sh`` (the operator never
imports the sidecars, so the tests run both sides against each other):

- ``fuse_commands``: the fuse sidecar's ``-d "<datarun command>"`` strings
  (``datarun_sidecar.fuse.parse_commands``);
- ``postgres_env``: ``dm_pg_opts`` and ``dm_pg_db_<name>``, datamon's serialised maps
  (``datarun_sidecar.postgres_plan.plan_from_env``);
- ``sidecar_env``: the env both sidecars read: the store, the run's identity and params for the
  bundle provenance (``datarun_sidecar.protocol.run_record``);
- ``fuse_argv``, ``postgres_argv``, ``wrapper_argv``: the command lines (``datarun_sidecar.cli``
  and ``wrap_application.sh``'s options);
- the wrapper's exit codes, which :mod:`datarun_operator.result` reads back.

Pure: no I/O, no kopf.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from datarun.cache import OFF, USE, CachePlan, PlanInput, PlanOutput, SecretRef, canonical
from datarun_operator.models import DATA_ROOT, DataRun, DataRunSpec, InputMode, SpecError
from datarun_operator.runrecord import record_id
from datarun_operator.settings import Settings

TERMINATION_LOG = "/dev/termination-log"
CREDENTIAL_FILE = "credential"
ENV_RUN_PARAMS = "DATARUN_RUN_PARAMS"
"""The DataRun's params as a JSON object; the sidecars record them in the bundles' provenance."""

# wrap_application.sh's own exit codes (its header and sidecar/PROTOCOL.md say when; a test checks
# the script's header against these). The sidecars never exit with them: only the wrapper does.
EXIT_UPLOAD_FAILED = 75
EXIT_NOT_READY = 76
EXIT_NO_ANSWER = 77
WRAPPER_EXIT_CODES = (EXIT_UPLOAD_FAILED, EXIT_NOT_READY, EXIT_NO_ANSWER)


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


@dataclass(frozen=True, kw_only=True)
class SidecarPlan:
    """Everything the sidecars of one pod are told, decided once; the builders only read it."""

    spec: DataRunSpec
    identity: RunIdentity
    pinned_inputs: Mapping[str, str]
    """Input (and database source) name -> bundle id; a name missing here is resolved by the sidecar."""
    settings: Settings
    store_url: str
    credentials_secret: str
    """The Secret whose keys become the sidecars' env; empty: none."""

    @staticmethod
    def of(
        spec: DataRunSpec, identity: RunIdentity, pinned_inputs: Mapping[str, str], settings: Settings
    ) -> SidecarPlan:
        """Raises SpecError if no store is configured."""
        url, secret = store_of(spec, settings)
        return SidecarPlan(
            spec=spec,
            identity=identity,
            pinned_inputs=pinned_inputs,
            settings=settings,
            store_url=url,
            credentials_secret=secret,
        )

    @property
    def uses_fuse(self) -> bool:
        return bool(self.spec.inputs or self.spec.outputs)

    @property
    def uses_postgres(self) -> bool:
        return bool(self.spec.databases)

    @property
    def mounts_fuse(self) -> bool:
        """An input is FUSE-mounted, so the fuse sidecar needs privilege and mount propagation."""
        return any(inp.mode is InputMode.MOUNT for inp in self.spec.inputs)

    @property
    def credentials_file(self) -> bool:
        """The Secret also holds a credentials file, mounted at ``settings.pod.credentials_dir``."""
        return bool(self.credentials_secret and self.settings.store.credentials_file_key)

    def source(self, name: str, bundle: str | None, label: str | None) -> tuple[str, str] | None:
        """("bundle", id) when pinned or given, else ("label", name) for the sidecar to resolve; None: no source."""
        if name in self.pinned_inputs:
            return "bundle", self.pinned_inputs[name]
        if bundle:
            return "bundle", bundle
        if label:
            return "label", label
        return None

    def default_message(self, output: str) -> str:
        return f"output {output} of {self.identity.description}"


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


# -- what each sidecar is told ------------------------------------------------------------------


def fuse_commands(plan: SidecarPlan) -> list[str]:
    """The ``-d`` strings of the fuse sidecar (parsed by datarun_sidecar.fuse.parse_commands).

    An input missing from ``pinned_inputs`` is mounted by its ``bundle``, or else by its ``label``,
    which the sidecar then pins itself before mounting."""
    spec = plan.spec
    commands = [shlex.join(["config", "create", f"--name={plan.identity.description}", f"--store={plan.store_url}"])]
    for inp in spec.inputs:
        kind, value = plan.source(inp.name, inp.bundle, inp.label) or ("label", "")
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
            f"--message={out.message or plan.default_message(out.name)}",
        ]
        if out.label:
            words.append(f"--label={out.label}")
        if out.upload_on_failure:
            words.append("--upload-on-failure")
        commands.append(shlex.join(words))
    return commands


def postgres_env(plan: SidecarPlan) -> list[dict[str, Any]]:
    """``dm_pg_opts`` and one ``dm_pg_db_<name>`` per database (datarun_sidecar.postgres_plan.plan_from_env)."""
    env = [{"name": "dm_pg_opts", "value": serialize_map({"c": plan.settings.pod.coord_dir})}]
    for db in plan.spec.databases:
        entries: dict[str, str | bool] = {"p": str(db.port)}
        if db.output_repo:
            entries["r"] = db.output_repo
            entries["m"] = db.output_message or plan.default_message(db.name)
        if db.output_label:
            entries["l"] = db.output_label
        if db.source_repo:
            entries["sr"] = db.source_repo
            source = plan.source(db.name, db.source_bundle, db.source_label)
            if source is not None:
                entries["sb" if source[0] == "bundle" else "sl"] = source[1]
        env.append({"name": f"dm_pg_db_{db.name}", "value": serialize_map(entries)})
    return env


def sidecar_env(plan: SidecarPlan) -> list[dict[str, Any]]:
    """The env every sidecar reads: where the store is, and what goes into the run's provenance."""
    settings = plan.settings
    env: list[dict[str, Any]] = [
        {"name": "DATARUN_STORE", "value": plan.store_url},
        {"name": "DATARUN_CACHE_DIR", "value": settings.pod.cache_dir},
        {"name": "DATARUN_TERMINATION_LOG", "value": TERMINATION_LOG},
        *(dict(e) for e in plan.identity.env),
        {"name": "DATARUN_IMAGE", "value": plan.spec.image},
        {"name": ENV_RUN_PARAMS, "value": json.dumps(dict(sorted(plan.spec.params.items())), separators=(",", ":"))},
    ]
    if plan.credentials_file:
        env.append(
            {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{settings.pod.credentials_dir}/{CREDENTIAL_FILE}"}
        )
    return env


def fuse_argv(plan: SidecarPlan) -> list[str]:
    """``datarun-sidecar fuse ...`` (datarun_sidecar.cli)."""
    timeouts = plan.settings.timeouts
    argv = [
        "datarun-sidecar",
        "fuse",
        "-c",
        plan.settings.pod.coord_dir,
        "--store",
        plan.store_url,
        "--termination-log",
        TERMINATION_LOG,
        "--mount-timeout",
        str(timeouts.mount_seconds),
        "--app-heartbeat-timeout",
        str(timeouts.app_heartbeat_seconds),
    ]
    for text in fuse_commands(plan):
        argv += ["-d", text]
    return argv


def postgres_argv(plan: SidecarPlan) -> list[str]:
    """``datarun-sidecar postgres ...``; the databases come in ``postgres_env``."""
    return [
        "datarun-sidecar",
        "postgres",
        "--store",
        plan.store_url,
        "--termination-log",
        TERMINATION_LOG,
        "--app-heartbeat-timeout",
        str(plan.settings.timeouts.app_heartbeat_seconds),
    ]


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


# -- the run cache plan of a webhook-injected pod (FORMAT.md §15.3) ----------------------------

EXECUTOR_ENV_PREFIX = "ARGO_"
"""Env Argo's controller gives the step's container for its executor: the node id, the pod name,
the step's deadline, the whole template. They differ on every run, so keying them would make
every step miss; what the step computes from (its parameters) is substituted into command and
args, which are keyed."""


def cache_plan(plan: SidecarPlan, app_env: Sequence[Mapping[str, Any]], args: Sequence[str]) -> CachePlan | None:
    """The plan, or None when the pod neither looks up nor records: policy off, no outputs, or a
    database (the postgres sidecar pins and restores its source itself, so the fuse sidecar cannot
    key it, and a dump is not an output a hit could reuse).

    ``app_env`` is the app container's env as the pod gave it (before datarun adds its own, which
    names the pod and would make every key unique), without Argo's executor variables. A Secret
    value is named by its name and key, never read; any other ``valueFrom`` is keyed by its
    canonical JSON, as for a DataRun."""
    spec = plan.spec
    cache = spec.cache
    policy = cache.policy.value if cache is not None else USE
    if policy == OFF or not spec.outputs or spec.databases:
        return None
    env: dict[str, str | SecretRef] = {}
    for var in app_env:
        name = str(var.get("name", ""))
        if name.startswith(EXECUTOR_ENV_PREFIX):
            continue
        source = var.get("valueFrom")
        ref = source.get("secretKeyRef") if isinstance(source, Mapping) else None
        if isinstance(ref, Mapping):
            env[name] = SecretRef(str(ref.get("name", "")), str(ref.get("key", "")))
        elif source is not None:
            env[name] = "valueFrom " + canonical(source).decode()
        else:
            env[name] = str(var.get("value", ""))
    return CachePlan(
        policy=policy,
        image=spec.image,
        command=(*spec.command, *args),
        trust_tags=cache.trust_tags if cache is not None else False,
        env=env,
        params=dict(spec.params),
        inputs=tuple(PlanInput(i.name, i.path) for i in spec.inputs),
        outputs=tuple(PlanOutput(o.name, o.repo, o.path, o.label or "") for o in spec.outputs),
        versions={"wrapper": plan.settings.images.wrapper, "sidecar": plan.settings.images.sidecar},
        salt=cache.version if cache is not None else "",
    )

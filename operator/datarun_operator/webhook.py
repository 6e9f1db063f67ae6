"""The mutating admission webhook: datarun's sidecars for pods the operator does not create.

An Argo Workflow step (or any pod) asks for them with annotations; the webhook answers with a
JSONPatch that gives the pod what a DataRun pod gets, built by the same code
(:func:`datarun_operator.builder.build_injection`)::

    metadata:
      labels:
        datarun.io/inject: "true"          # routes the pod to the webhook (the chart's objectSelector)
      annotations:
        datarun.io/inject: "true"          # asks for injection (a pod without it is left untouched)
        datarun.io/inputs: |               # YAML (or JSON) lists with the fields of a DataRun's
          - {name: numbers, repo: in, label: v1, path: in/numbers}      # spec.inputs,
        datarun.io/outputs: |
          - {name: result, repo: out, path: out/result, label: latest}  # spec.outputs
        datarun.io/databases: "[]"         # and spec.databases;
        datarun.io/store: "{url: gs://bucket}"  # optional, spec.store and spec.cache
        datarun.io/cache: "{sizeLimit: 1Gi, policy: use, version: v2, trustTags: true}"
        datarun.io/config: shared-inputs   # optional: a ConfigMap holding the same keys (inputs,
                                           # outputs, ...); an annotation overrides its key
        datarun.io/container: main         # the app's container (default `main`, or the only one)

The app's container keeps its image, env and args; its command is wrapped (``wrap_application.sh
... -- <command>``), after an Argo executor prefix (``/var/run/argo/argoexec emissary ... --``) if
it has one, so that Argo's executor still runs, and reports on, the wrapped app.

Input labels are NOT pinned here: the fuse sidecar (and the postgres sidecar, for a database's
source) resolves a label to a bundle id when it starts, before the app can read anything, and
records that id in the outputs' provenance. Pinning in admission would add a store round trip to
every pod creation (the apiserver waits for it, and with ``failurePolicy: Fail`` a slow store would
stop pods from being created) for no gain in reproducibility: a pod, unlike a DataRun, has no
status to keep the pin in, and a retried Argo step is a new pod that is admitted again anyway.

``datarun.io/cache`` is a DataRun's ``spec.cache``: ``sizeLimit``/``medium`` size the chunk cache as
before, ``policy``/``version``/``trustTags`` drive the run cache. A DataRun's cache is looked up by the
operator; a pod's by its fuse sidecar, before the app starts, from the plan in ``DATARUN_CACHE_PLAN``
(:func:`datarun_operator.wire.cache_plan`). Argo's pods name images by tag, and a tag can move: unless
``trustTags: true`` (or an ``image@sha256:`` digest), such a pod always misses and is not recorded.

Nothing here does I/O: the ConfigMap comes through the ``lookup`` function the handler passes.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import yaml

from datarun.cache import ENV_CACHE_PLAN
from datarun_operator.builder import FUSE, INIT, MAIN, POSTGRES, build_injection
from datarun_operator.models import DataRunSpec, SpecError, parse_spec
from datarun_operator.settings import Settings
from datarun_operator.wire import POD_IDENTITY, SidecarPlan, cache_plan

PREFIX = "datarun.io/"
LABEL_INJECT = "datarun.io/inject"
"""The label the chart's objectSelector matches: only pods with it are sent to the webhook at all."""
ANNOTATION_INJECT = "datarun.io/inject"
"""``"true"``: inject. The switch itself (the label only routes the request)."""
ANNOTATION_INJECTED = "datarun.io/injected"
"""Written by the webhook (the containers it added); a pod with it is never injected again."""
ANNOTATION_CONFIG = "datarun.io/config"
"""Name of a ConfigMap in the pod's namespace whose keys are those of :data:`KEYS`."""
ANNOTATION_CONTAINER = "datarun.io/container"
"""The app's container; default ``main`` (Argo's name for it), or the pod's only container."""
KEYS = ("inputs", "outputs", "databases", "store", "cache")
"""The DataRun spec fields a pod can give, each as annotation ``datarun.io/<key>`` or ConfigMap key."""

ARGO_EXECUTOR = "/argoexec"
"""Argo's emissary executor runs the step as ``/var/run/argo/argoexec emissary <flags> -- <command>``."""

Patch = list[dict[str, Any]]
ConfigMapLookup = Callable[[str, str], Mapping[str, str] | None]
"""(namespace, name) -> the ConfigMap's data, None if there is no such ConfigMap."""


class InjectionError(ValueError):
    """The pod asks for injection and cannot have it; the message names the annotation and the field."""


def requested(pod: Mapping[str, Any]) -> bool:
    """Does the pod ask for injection (whether or not it has been injected already)?"""
    return _annotations(pod).get(ANNOTATION_INJECT, "").strip().lower() == "true"


def injection_patch(
    pod: Mapping[str, Any],
    settings: Settings,
    lookup: ConfigMapLookup | None = None,
    operation: str | None = "CREATE",
) -> Patch:
    """The JSONPatch (RFC 6902) that injects datarun into ``pod``; ``[]`` when it is not asked for,
    or was done already. Raises InjectionError for a pod that asks and cannot have it."""
    annotations = _annotations(pod)
    switch = annotations.get(ANNOTATION_INJECT)
    if operation not in (None, "CREATE") or switch is None:
        return []
    if switch.strip().lower() not in ("true", "false"):
        raise InjectionError(f'{ANNOTATION_INJECT}: must be "true" or "false" (got {switch!r})')
    if not requested(pod) or ANNOTATION_INJECTED in annotations:
        return []  # the idempotency that reinvocation (reinvocationPolicy: IfNeeded) relies on

    spec_pod: Mapping[str, Any] = pod.get("spec") or {}
    # A run ends once: with Always the kubelet would restart the finished app and sidecars, and each restart would
    # upload the outputs again. Argo's step pods use Never; Kubernetes' default (unset) is Always.
    policy = spec_pod.get("restartPolicy") or "Always"
    if policy == "Always":
        raise InjectionError(
            f"spec.restartPolicy: `{policy}` restarts the app after it ends and uploads its outputs again; "
            "use `Never` or `OnFailure` for pods with datarun sidecars"
        )
    containers: list[Mapping[str, Any]] = list(spec_pod.get("containers") or [])
    index = _app_container(containers, annotations.get(ANNOTATION_CONTAINER))
    app = containers[index]
    app_name = str(app.get("name", ""))
    command = [str(w) for w in app.get("command") or []]
    if not command:
        raise InjectionError(
            f"container `{app_name}` ({ANNOTATION_CONTAINER}): has no `command`; the webhook wraps the command "
            "and cannot see the image's entrypoint, so give it explicitly"
        )
    if not app.get("image"):
        raise InjectionError(f"container `{app_name}`: has no image")
    prefix, app_command = split_executor(command)

    raw, where = _gather(pod, annotations, lookup)
    if not any(raw.get(key) for key in ("inputs", "outputs", "databases")):
        raise InjectionError(
            f"{ANNOTATION_INJECT} is true but there is nothing to inject: give {PREFIX}inputs, "
            f"{PREFIX}outputs or {PREFIX}databases (or {ANNOTATION_CONFIG})"
        )
    try:
        spec = parse_spec({"image": app["image"], "command": app_command, **raw})
        injection = build_injection(spec, POD_IDENTITY, {}, settings)
    except SpecError as err:
        raise InjectionError(_rename(f"{err.field_path}: {err.message}", where)) from None
    assert injection is not None  # there are inputs, outputs or databases

    sidecars = _with_cache_plan(injection.sidecars, spec, settings, app)
    _check_free(spec_pod, [c["name"] for c in injection.sidecars] + [INIT], [v["name"] for v in injection.volumes])

    base = ("spec", "containers", index)
    ops: Patch = [
        {"op": "replace", "path": pointer(*base, "command"), "value": [*prefix, *injection.wrapper, *app_command]}
    ]
    ops += _append(app, base, "env", injection.env)
    ops += _append(app, base, "volumeMounts", injection.volume_mounts)
    ops += _append(spec_pod, ("spec",), "initContainers", [injection.init_container])
    ops += _append(spec_pod, ("spec",), "containers", sidecars)
    ops += _append(spec_pod, ("spec",), "volumes", injection.volumes)
    meta: Mapping[str, Any] = pod.get("metadata") or {}
    labels = {k: v for k, v in settings.pod.labels.items() if k not in (meta.get("labels") or {})}
    extra = {k: v for k, v in settings.pod.annotations.items() if k not in annotations}
    added = ",".join([INIT, *(c["name"] for c in injection.sidecars)])
    ops += _merge(meta, ("metadata",), "labels", labels)
    ops += _merge(meta, ("metadata",), "annotations", {**extra, ANNOTATION_INJECTED: added})
    return ops


def _with_cache_plan(
    sidecars: Sequence[Mapping[str, Any]], spec: DataRunSpec, settings: Settings, app: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The sidecars, the fuse one given the run cache plan (if the pod caches at all)."""
    plan = cache_plan(SidecarPlan.of(spec, POD_IDENTITY, {}, settings), list(app.get("env") or []), app_args(app))
    out = [dict(c) for c in sidecars]
    for container in out:
        if plan is not None and container["name"] == FUSE:
            container["env"] = [*container.get("env", []), {"name": ENV_CACHE_PLAN, "value": plan.to_json()}]
    return out


def app_args(app: Mapping[str, Any]) -> list[str]:
    return [str(a) for a in app.get("args") or []]


def split_executor(command: Sequence[str]) -> tuple[list[str], list[str]]:
    """(executor prefix, the app's command): the wrapper goes between them, so that an executor such
    as Argo's emissary still starts, and sees the exit of, the (wrapped) app."""
    if command and command[0].endswith(ARGO_EXECUTOR) and "--" in command:
        cut = list(command).index("--") + 1
        return list(command[:cut]), list(command[cut:])
    return [], list(command)


# -- reading the pod's configuration ------------------------------------------------------------


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, str]:
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return annotations if isinstance(annotations, Mapping) else {}


def _app_container(containers: Sequence[Mapping[str, Any]], wanted: str | None) -> int:
    names = [str(c.get("name", "")) for c in containers]
    if wanted is not None:
        if wanted not in names:
            raise InjectionError(f"{ANNOTATION_CONTAINER}: no container `{wanted}` (the pod has {_list(names)})")
        return names.index(wanted)
    if MAIN in names:
        return names.index(MAIN)
    if len(names) == 1:
        return 0
    raise InjectionError(
        f"{ANNOTATION_CONTAINER}: the pod has {_list(names)} and none is `{MAIN}`; name the app's container"
    )


def _gather(
    pod: Mapping[str, Any], annotations: Mapping[str, str], lookup: ConfigMapLookup | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The spec fields given (parsed YAML), and where each came from, for messages."""
    texts: dict[str, str] = {}
    where: dict[str, str] = {}
    config = annotations.get(ANNOTATION_CONFIG)
    if config is not None:
        namespace = str((pod.get("metadata") or {}).get("namespace") or "")
        data = lookup(namespace, config) if lookup is not None else None
        if data is None:
            raise InjectionError(f"{ANNOTATION_CONFIG}: no ConfigMap `{config}` in namespace `{namespace}`")
        for key, text in data.items():
            if key not in KEYS:
                raise InjectionError(
                    f"{ANNOTATION_CONFIG}: ConfigMap `{config}` has an unknown key `{key}`; known keys are "
                    f"{', '.join(KEYS)}"
                )
            texts[key], where[key] = text, f"{ANNOTATION_CONFIG} `{config}` key {key}"
    for key in KEYS:
        if PREFIX + key in annotations:
            texts[key], where[key] = annotations[PREFIX + key], PREFIX + key
    raw: dict[str, Any] = {}
    for key, text in texts.items():
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            first = str(err).strip().splitlines()[0]
            raise InjectionError(f"{where[key]}: not valid YAML or JSON ({first})") from None
        if value is not None:
            raw[key] = value
    return raw, where


_FIELD = re.compile(r"\bspec\.(" + "|".join(KEYS) + r")\b")


def _rename(text: str, where: Mapping[str, str]) -> str:
    """``spec.inputs[0].label`` -> ``datarun.io/inputs[0].label``: name what the user wrote."""
    return _FIELD.sub(lambda m: where.get(m.group(1), PREFIX + m.group(1)), text)


def _check_free(spec_pod: Mapping[str, Any], containers: Sequence[str], volumes: Sequence[str]) -> None:
    taken = {str(c.get("name")) for c in [*(spec_pod.get("containers") or []), *(spec_pod.get("initContainers") or [])]}
    for name in containers:
        if name in taken:
            raise InjectionError(
                f"{ANNOTATION_INJECT}: the pod already has a container `{name}` but no {ANNOTATION_INJECTED} "
                f"annotation; give either the datarun containers ({FUSE}, {POSTGRES}, {INIT}) or the annotation"
            )
    for name in set(volumes) & {str(v.get("name")) for v in spec_pod.get("volumes") or []}:
        raise InjectionError(f"{ANNOTATION_INJECT}: the pod already has a volume `{name}`, which datarun adds")


def _list(names: Sequence[str]) -> str:
    return ", ".join(f"`{n}`" for n in names) or "no containers"


# -- JSONPatch ----------------------------------------------------------------------------------


def pointer(*parts: str | int) -> str:
    """An RFC 6901 JSON pointer (``/`` in a key, as in ``datarun.io/injected``, becomes ``~1``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _append(parent: Mapping[str, Any], at: tuple[str | int, ...], key: str, items: Sequence[Any]) -> Patch:
    if not items:
        return []
    if not parent.get(key):
        return [{"op": "add", "path": pointer(*at, key), "value": list(items)}]
    return [{"op": "add", "path": pointer(*at, key, "-"), "value": item} for item in items]


def _merge(parent: Mapping[str, Any], at: tuple[str | int, ...], key: str, entries: Mapping[str, str]) -> Patch:
    if not entries:
        return []
    if not parent.get(key):
        return [{"op": "add", "path": pointer(*at, key), "value": dict(entries)}]
    return [{"op": "add", "path": pointer(*at, key, k), "value": v} for k, v in entries.items()]


def apply_patch(doc: MutableMapping[str, Any], ops: Patch) -> None:
    """Apply the ``add``/``replace``/``remove`` ops of ``ops`` to ``doc`` in place (what the
    apiserver does with the webhook's answer; the handler hands it to kopf this way)."""
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            value = copy.deepcopy(op["value"])
            if last == "-":
                node.append(value)
            elif op["op"] == "add":
                node.insert(int(last), value)
            else:
                node[int(last)] = value
        elif op["op"] in ("add", "replace"):
            node[last] = copy.deepcopy(op["value"])
        else:
            raise ValueError(f"unsupported JSONPatch op {op['op']!r}")

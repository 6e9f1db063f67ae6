"""The operator's settings: grouped, frozen dataclasses with a docstring on each field.

The Helm chart sets them through environment variables (:meth:`Settings.from_env`); tests build
them directly. Nothing here does I/O: ``from_env`` reads the mapping it is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class SettingsError(ValueError):
    pass


@dataclass(frozen=True, kw_only=True)
class ImageSettings:
    sidecar: str = "ghcr.io/datarun/sidecar:0.1.0"
    """Image with ``datarun-sidecar`` (fuse and postgres); runs both sidecar containers."""
    wrapper: str = "ghcr.io/datarun/sidecar:0.1.0"
    """Image the init container copies ``wrap_application.sh`` from (needs ``sh`` and ``cp``)."""
    wrapper_path: str = "/usr/local/bin/wrap_application.sh"
    """Where ``wrap_application.sh`` is inside the wrapper image."""
    pull_policy: str = "IfNotPresent"
    """imagePullPolicy of the sidecar and init containers (the app's image uses the cluster default)."""


@dataclass(frozen=True, kw_only=True)
class StoreSettings:
    url: str = ""
    """The default store URL (file://, az://, gs://); a DataRun's ``spec.store.url`` overrides it."""
    credentials_secret: str = ""
    """Secret (in each DataRun's namespace) whose keys become the sidecars' env vars, e.g.
    AZURE_STORAGE_CONNECTION_STRING. Empty: no Secret (workload identity or a local store)."""
    credentials_file_key: str = ""
    """Key of that Secret holding a credential *file* (a GCS service-account key): mounted read-only and
    named by GOOGLE_APPLICATION_CREDENTIALS. Empty: none."""


@dataclass(frozen=True, kw_only=True)
class IndexSettings:
    url: str = field(default="", repr=False)
    """The run index (DATARUN_INDEX: sqlite:///path or postgresql://...) kept up to date after each
    run record the operator writes to the default store. Empty: none. Out of ``repr`` (and so out
    of any log of the settings): a PostgreSQL URL may carry a password (the chart reads it from a
    Secret key)."""


@dataclass(frozen=True, kw_only=True)
class TimeoutSettings:
    ready_seconds: int = 600
    """How long the wrapper waits for the sidecars to be ready (``wrap_application.sh -r``)."""
    upload_seconds: int = 0
    """How long the wrapper waits for the uploads (``-u``); 0: no limit, heartbeats still catch a dead sidecar."""
    heartbeat_seconds: int = 30
    """A sidecar silent for this long is dead to the wrapper (``-h``)."""
    mount_seconds: int = 300
    """How long the fuse sidecar waits for one mount (``--mount-timeout``)."""
    app_heartbeat_seconds: int = 60
    """A wrapper silent for this long is dead to the sidecars (``--app-heartbeat-timeout``)."""


@dataclass(frozen=True, kw_only=True)
class PodSettings:
    coord_dir: str = "/coord"
    """The coordination folder (an emptyDir shared by the app and the sidecars)."""
    bin_dir: str = "/datarun/bin"
    """Where the init container puts ``wrap_application.sh`` for the app's container."""
    cache_dir: str = "/datarun/cache"
    """The sidecars' chunk cache (an emptyDir; ``spec.cache`` sizes it)."""
    credentials_dir: str = "/var/run/secrets/datarun"
    """Where the credential file (``StoreSettings.credentials_file_key``) is mounted."""
    service_account: str = ""
    """serviceAccountName of run pods (for workload identity); empty: the namespace's default."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels on run pods, e.g. ``azure.workload.identity/use: "true"``."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """Extra annotations on run pods."""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    """nodeSelector of run pods, e.g. ``{"pool": "batch"}`` (the tests use it to keep pods on kwok's node)."""
    tolerations: tuple[Mapping[str, Any], ...] = ()
    """Tolerations of run pods, as Kubernetes writes them (``key``, ``operator``, ``value``, ``effect``)."""


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    enabled: bool = False
    """Serve the validating admission webhook (the chart also registers it with the apiserver)."""
    address: str = "0.0.0.0"  # noqa: S104 (in a pod, the Service in front of it is the only way in)
    """Address the webhook server listens on; tests serve it on 127.0.0.1."""
    port: int = 9443
    """HTTPS port of the webhook server."""
    cert_file: str = "/etc/datarun/webhook/tls.crt"
    """The server certificate (from the webhook's TLS Secret)."""
    key_file: str = "/etc/datarun/webhook/tls.key"
    """The server's private key."""
    check_repos: bool = False
    """Also refuse DataRuns naming repos that the store says do not exist (skipped if it is unreachable)."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    images: ImageSettings = field(default_factory=ImageSettings)
    """Images of the sidecars and the wrapper."""
    store: StoreSettings = field(default_factory=StoreSettings)
    """The default store and its credentials."""
    index: IndexSettings = field(default_factory=IndexSettings)
    """The run index to keep up to date."""
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    """Timeouts of the coordination protocol (see sidecar/PROTOCOL.md)."""
    pod: PodSettings = field(default_factory=PodSettings)
    """The shape of run pods."""
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    """The admission webhook."""
    resync_seconds: float = 60.0
    """How often an unfinished DataRun re-reads its pod, in case a pod event was missed."""
    workers: int = 16
    """Threads for the (blocking) Kubernetes and store calls of the handlers."""
    lineage_seconds: float = 60.0
    """How often a finished DataRun checks whether its inputs or outputs were invalidated (0: never)."""
    openlineage_url: str = ""
    """POST the OpenLineage RunEvents (START, COMPLETE or FAIL) of each run there as it ends (e.g. Marquez)."""

    @staticmethod
    def from_env(env: Mapping[str, str]) -> Settings:
        """Settings from DATARUN_OPERATOR_* variables (the chart's Deployment sets them)."""

        def get(name: str, default: str) -> str:
            return env.get(f"DATARUN_OPERATOR_{name}", default)

        def number(name: str, default: float) -> float:
            raw = get(name, "")
            if not raw:
                return default
            try:
                return float(raw)
            except ValueError:
                raise SettingsError(f"DATARUN_OPERATOR_{name}={raw!r} is not a number") from None

        def flag(name: str, default: bool) -> bool:
            raw = get(name, "").strip().lower()
            if not raw:
                return default
            if raw not in ("true", "false", "1", "0", "yes", "no"):
                raise SettingsError(f"DATARUN_OPERATOR_{name}={raw!r}: use true or false")
            return raw in ("true", "1", "yes")

        def json_list(name: str) -> tuple[dict[str, Any], ...]:
            raw = get(name, "")
            if not raw:
                return ()
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as err:
                raise SettingsError(f"DATARUN_OPERATOR_{name} is not JSON: {err}") from None
            if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
                raise SettingsError(f"DATARUN_OPERATOR_{name} must be a JSON list of objects")
            return tuple(data)

        def mapping(name: str) -> dict[str, str]:
            raw = get(name, "")
            if not raw:
                return {}
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as err:
                raise SettingsError(f"DATARUN_OPERATOR_{name} is not JSON: {err}") from None
            if not isinstance(data, dict):
                raise SettingsError(f"DATARUN_OPERATOR_{name} must be a JSON object")
            return {str(k): str(v) for k, v in data.items()}

        images = ImageSettings()
        webhook = WebhookSettings()
        timeouts = TimeoutSettings()
        return Settings(
            images=ImageSettings(
                sidecar=get("SIDECAR_IMAGE", images.sidecar),
                wrapper=get("WRAPPER_IMAGE", images.wrapper),
                wrapper_path=get("WRAPPER_PATH", images.wrapper_path),
                pull_policy=get("IMAGE_PULL_POLICY", images.pull_policy),
            ),
            store=StoreSettings(
                url=get("STORE_URL", env.get("DATARUN_STORE", "")),
                credentials_secret=get("CREDENTIALS_SECRET", ""),
                credentials_file_key=get("CREDENTIALS_FILE_KEY", ""),
            ),
            index=IndexSettings(url=env.get("DATARUN_INDEX", "").strip()),
            timeouts=TimeoutSettings(
                ready_seconds=int(number("READY_TIMEOUT", timeouts.ready_seconds)),
                upload_seconds=int(number("UPLOAD_TIMEOUT", timeouts.upload_seconds)),
                heartbeat_seconds=int(number("HEARTBEAT_TIMEOUT", timeouts.heartbeat_seconds)),
                mount_seconds=int(number("MOUNT_TIMEOUT", timeouts.mount_seconds)),
                app_heartbeat_seconds=int(number("APP_HEARTBEAT_TIMEOUT", timeouts.app_heartbeat_seconds)),
            ),
            pod=PodSettings(
                service_account=get("RUN_SERVICE_ACCOUNT", ""),
                labels=mapping("RUN_POD_LABELS"),
                annotations=mapping("RUN_POD_ANNOTATIONS"),
                node_selector=mapping("RUN_POD_NODE_SELECTOR"),
                tolerations=json_list("RUN_POD_TOLERATIONS"),
            ),
            webhook=WebhookSettings(
                enabled=flag("WEBHOOK_ENABLED", webhook.enabled),
                address=get("WEBHOOK_ADDRESS", webhook.address),
                port=int(number("WEBHOOK_PORT", webhook.port)),
                cert_file=get("WEBHOOK_CERT_FILE", webhook.cert_file),
                key_file=get("WEBHOOK_KEY_FILE", webhook.key_file),
                check_repos=flag("WEBHOOK_CHECK_REPOS", webhook.check_repos),
            ),
            resync_seconds=number("RESYNC_SECONDS", 60.0),
            workers=int(number("WORKERS", 16)),
            lineage_seconds=number("LINEAGE_SECONDS", 60.0),
            openlineage_url=get("OPENLINEAGE_URL", ""),
        )

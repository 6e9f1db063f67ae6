"""The few Kubernetes API calls the handlers make, with the kubernetes client, as plain dicts.

Each method does one request and maps the expected failures: 404 is ``None`` or ``False``
(nothing there), 409 on create is ``False`` (the pod exists; the caller adopts it). Anything
else raises ``ApiException``, which kopf retries.
"""

from __future__ import annotations

import json
from typing import Any, cast

import kubernetes
from kubernetes.client.exceptions import ApiException

from datarun_operator.models import GROUP, PLURAL, VERSION


def load_config() -> None:
    """In-cluster service account if there is one, else the kubeconfig (KUBECONFIG)."""
    config: Any = kubernetes.config  # untyped functions in every client version
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class Kube:
    def __init__(self, client: kubernetes.client.ApiClient | None = None) -> None:
        self.client = client or kubernetes.client.ApiClient()
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)

    @staticmethod
    def _raw(response: Any) -> dict[str, Any]:
        """The API's JSON as it was sent (the typed model would rewrite timestamps and drop unknowns)."""
        return cast(dict[str, Any], json.loads(response.data))

    def create_pod(self, pod: dict[str, Any]) -> bool:
        """True if created, False if a pod of that name exists already (409)."""
        try:
            # The client validates the dict into its V1Pod model and sends it back out unchanged.
            self.core.create_namespaced_pod(pod["metadata"]["namespace"], cast(Any, pod))
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._raw(self.core.read_namespaced_pod(name, namespace, _preload_content=False))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def delete_pod(self, namespace: str, name: str) -> bool:
        """True if a pod was deleted, False if there was none."""
        try:
            self.core.delete_namespaced_pod(name, namespace, propagation_policy="Background")
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def get_configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The data of a ConfigMap (for the webhook's ``datarun.io/config``); None if there is none."""
        try:
            raw = self._raw(self.core.read_namespaced_config_map(name, namespace, _preload_content=False))
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return {str(k): str(v) for k, v in (raw.get("data") or {}).items()}

    def get_datarun(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return cast(
                dict[str, Any], self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        """Merge-patch ``status``; False if the DataRun is gone."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": patch}
            )
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def list_dataruns(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        raw = cast(
            dict[str, Any],
            self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, label_selector=label_selector),
        )
        return cast(list[dict[str, Any]], raw.get("items") or [])

    def create_datarun(self, body: dict[str, Any]) -> dict[str, Any]:
        namespace = body["metadata"]["namespace"]
        return cast(
            dict[str, Any], self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        )

"""The name rules of a DataRun's fields (RE2-compatible, so the CRD's OpenAPI patterns and the
operator's own checks agree; the same sets as datarun.model.validate_*), and what a user is told
when a value breaks one."""

from __future__ import annotations

from collections.abc import Mapping

DATA_ROOT = "/data"
"""Where inputs and outputs live in the app's container: a relative ``path`` is ``/data/<path>``."""

# -- name rules (RE2-compatible; the same sets as datarun.model.validate_*) -------------------

NAME_PATTERN = r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
"""Names of inputs, outputs and databases: DNS labels, so they also work as env var suffixes."""
REPO_PATTERN = r"^[a-z0-9]([a-z0-9_-]|\.[a-z0-9_-])*\.?$"
"""datarun.model.validate_repo_name: lowercase letters, digits, ``._-``; no ``..``; at most 63."""
LABEL_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$"
"""datarun.model.validate_label_name: letters, digits, ``._-``; no ``..``; at most 128."""
BUNDLE_PATTERN = r"^[0-9A-Za-z]{27}$"
"""A bundle id (KSUID, datarun.ids.KSUID_RE)."""
_SEGMENT = r"([A-Za-z0-9_@+=,~-][A-Za-z0-9._@+=,~-]*|\.[A-Za-z0-9_@+=,~-][A-Za-z0-9._@+=,~-]*|\.\.[A-Za-z0-9._@+=,~-]+)"
PATH_PATTERN = rf"^{_SEGMENT}(/{_SEGMENT})*$"
"""A relative path under /data: no leading ``/``, no ``.``/``..`` or empty components, no spaces."""
ABSOLUTE_PATH_PATTERN = rf"^/({_SEGMENT}(/{_SEGMENT})*)?$"
"""An absolute path in the app's container, with the same component rules as PATH_PATTERN."""
PARAMS_FILE = "params.json"
"""The file in the app's working folder that holds ``spec.params`` as one JSON object."""
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
"""Kubernetes' rule for environment variable names."""
PARAM_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""Param keys become ``DATARUN_PARAM_<key>`` and can be used in args as ``$(DATARUN_PARAM_<key>)``."""
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
"""A Kubernetes resource quantity (``500m``, ``2Gi``, ``1``), as controller-gen writes it."""
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"  # noqa: S105 (a name rule)
"""A DNS subdomain, the name rule of a Secret."""
RESERVED_ENV_PREFIX = "DATARUN_"


PATTERN_HINTS: Mapping[str, str] = {
    NAME_PATTERN: "use lowercase letters, digits and `-`, starting with a letter, at most 63",
    REPO_PATTERN: "use lowercase letters, digits, `.`, `_` or `-`, starting with a letter or digit, no `..`",
    LABEL_PATTERN: "use letters, digits, `.`, `_` or `-`, starting with a letter or digit, no `..`",
    BUNDLE_PATTERN: "a bundle id is 27 letters and digits, as printed by upload",
    PATH_PATTERN: f"a relative path under {DATA_ROOT}: no leading `/`, no `.` or `..` parts, no spaces",
    ABSOLUTE_PATH_PATTERN: "an absolute path: a leading `/`, no `.` or `..` parts, no spaces",
    ENV_NAME_PATTERN: "letters, digits, `_`, `-` or `.`, not starting with a digit",
    PARAM_KEY_PATTERN: "letters, digits and `_`, not starting with a digit",
    QUANTITY_PATTERN: "a quantity such as 500m, 2Gi or 1",
    SECRET_NAME_PATTERN: "a Secret name: lowercase letters, digits, `-` and `.`",
}
"""What a user is told when a value does not match one of the name rules above."""

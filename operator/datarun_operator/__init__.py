"""The datarun control plane: a kopf operator for ``DataRun`` resources.

It is the only package that talks to the Kubernetes API. It depends on :mod:`datarun`'s
public API for bundles and labels; :mod:`datarun` never imports it (see the import-linter
contracts in pyproject.toml). The handlers, models and pod builders land with the operator
issue; this home exists now so the layering is enforced from the first commit.
"""

__version__ = "0.1.0"

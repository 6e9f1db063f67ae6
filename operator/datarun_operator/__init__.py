"""The datarun control plane: a kopf operator for ``DataRun`` resources.

It is the only package that talks to the Kubernetes API, and it uses :mod:`datarun`'s public
API (labels, bundles) only; :mod:`datarun` never imports it. Layers, top to bottom:

- ``handlers`` (kopf registration, thin) and ``__main__`` (``python -m datarun_operator``);
- ``kube`` (the few API calls) and ``reconcile`` (pure decisions: pins, status, events, admission);
- ``resources`` (pure pod builder and pod-result parser) and ``crd`` (CRD generated from the models);
- ``settings`` and ``models`` (typed records, validation that names the field).
"""

__version__ = "0.1.0"

"""The datarun control plane: a kopf operator for ``DataRun`` resources.

It is the only package that talks to the Kubernetes API, and it uses :mod:`datarun`'s public
API (labels, bundles) only; :mod:`datarun` never imports it. Layers, top to bottom:

- ``handlers`` (kopf registration, thin) and ``__main__`` (``python -m datarun_operator``);
- ``kube`` (the few API calls), ``reconcile`` (pure decisions: pins, status, events, admission) and
  ``webhook`` (the pure JSONPatch for pods the operator does not create);
- ``result`` (pure pod -> run-result parser) and ``crd`` (CRD generated from the models);
- ``builder`` (pure DataRun -> pod builder, and the webhook's injection);
- ``wire`` (the operator <-> sidecar wire format: commands, serialised maps, env, exit codes);
- ``settings`` and ``models`` (typed records, validation that names the field);
- ``schema`` (the generic engine: JSON <-> records, with the schema facts the CRD is made from).
"""

__version__ = "0.1.0"

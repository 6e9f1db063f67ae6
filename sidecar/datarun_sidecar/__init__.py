"""The datarun sidecar runtimes: the coordination protocol, the fuse and postgres sidecars.

Sidecars use only :mod:`datarun.repo` (the public API) and never the operator. The runtimes
land with the sidecar issue; this home exists now so the layering is enforced from the start.
"""

__version__ = "0.1.0"

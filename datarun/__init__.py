"""datarun: versioned, provenance-tracked data for jobs that run on Kubernetes.

The public API is :mod:`datarun.repo` (``connect()`` and ``Client``); the CLI is ``datarun``.
"""

__version__ = "0.1.0"

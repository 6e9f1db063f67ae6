"""The CLI harness of tests/cli, shared with the run cache's CLI tests."""

from __future__ import annotations

from tests.cli.conftest import env

__all__ = ["env"]  # fixtures are registered by import

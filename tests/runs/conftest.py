"""The CLI harness of tests/cli and the session's Azurite, shared with the run tests."""

from __future__ import annotations

from tests.cli.conftest import env
from tests.store.emulators import azurite_server

__all__ = ["azurite_server", "env"]  # fixtures are registered by import

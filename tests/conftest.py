"""Shared fixtures. Fixture modules that live outside a conftest are registered here."""

pytest_plugins = ["tests.mount.core_fixtures", "tests.cluster.options"]

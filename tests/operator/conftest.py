"""Fixtures of the operator tests (builders live in tests/operator/builders.py)."""

from __future__ import annotations

import pytest

from datarun_operator.settings import Settings
from tests.operator.builders import make_settings


@pytest.fixture
def settings() -> Settings:
    return make_settings()

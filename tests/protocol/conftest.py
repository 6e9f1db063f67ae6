from __future__ import annotations

from pathlib import Path

import pytest

from tests.protocol.pods import Pod, fuse_pod


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    return fuse_pod(tmp_path)

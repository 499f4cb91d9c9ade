"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample data (GlaS, knee MRI) kept outside the repo in ../shared/data."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        reason = f"sample data folder {path} not found (it lives outside the repo)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path

"""Shared pytest fixtures and constants for the unroll tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
"""Root of the repository (the folder holding pyproject.toml)."""

DATA_DIR = REPO_ROOT.parent / "shared" / "data"
"""Real Middlebury test data (RubberWhale, Urban2), outside the repository."""


@pytest.fixture
def shared_data() -> Path:
    """Path of the shared data folder; skips the test when it is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared test data not found at {DATA_DIR}")
    return DATA_DIR

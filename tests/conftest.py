"""Shared pytest fixtures.

``shared_dir`` points at the project's shared folder (reference fixtures, scGPT notes): the
``SCGPT_SCVI_SHARED`` environment variable, else ``<repo>/../shared``. Tests that need it are
skipped, with the reason, when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_path() -> Path:
    env = os.environ.get("SCGPT_SCVI_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder; skips the test when it does not exist."""
    path = _shared_path()
    if not path.is_dir():
        pytest.skip(
            f"shared folder {path} not found: set SCGPT_SCVI_SHARED to the folder holding "
            "fixtures/ (scGPT reference fixtures) to run this test."
        )
    return path


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    """``<shared>/fixtures``; skips the test when it does not exist."""
    path = shared_dir / "fixtures"
    if not path.is_dir():
        pytest.skip(f"reference fixtures folder {path} not found (needed for parity tests).")
    return path

"""Shared pytest fixtures.

``shared_dir`` points at the project's shared folder (reference fixtures, scGPT notes): the
``SCGPT_SCVI_SHARED`` environment variable, else ``<repo>/../shared``. Tests that need it are
skipped, with the reason, when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
#: Test folders of the engine (tiny models), run with one torch intra-op thread.
_SINGLE_THREAD_DIRS = ("nn", "data", "module")


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


@pytest.fixture(autouse=True)
def _engine_tests_single_thread(request):
    """Run the engine tests with one torch thread, restoring the setting afterwards.

    Their models are tiny: thread start-up dominates, and on a busy machine several threads
    make them many times slower. One thread also makes CPU reductions reproducible.
    """
    try:
        top = Path(request.node.path).resolve().relative_to(TESTS_DIR).parts[0]
    except ValueError:
        top = ""
    if top not in _SINGLE_THREAD_DIRS:
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)

"""Shared pytest fixtures.

``shared_dir`` points at the project's shared folder (reference fixtures, scGPT notes): the
``SCGPT_SCVI_SHARED`` environment variable, else ``<repo>/../shared``. Tests that need it are
skipped, with the reason, when it is absent, except under ``CI=true``: there a test that needs
the shared folder (the ``shared_dir`` fixture, or a skip whose reason names a path inside the
shared folder) fails instead, so a CI run never loses the parity coverage silently. The
terminal summary says how many tests were skipped and why.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
#: Test folders of the engine (tiny models), run with one torch intra-op thread.
_SINGLE_THREAD_DIRS = ("nn", "data", "module", "checkpoint")


def _shared_path() -> Path:
    env = os.environ.get("SCGPT_SCVI_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _missing_shared(reason: str) -> None:
    """Skip (on a user's machine) or fail (under ``CI=true``) for missing shared data."""
    if _in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The shared folder; skips the test when it does not exist (fails under ``CI=true``)."""
    path = _shared_path()
    if not path.is_dir():
        _missing_shared(
            f"shared folder {path} not found: set SCGPT_SCVI_SHARED to the folder holding "
            "fixtures/ (scGPT reference fixtures) to run this test."
        )
    return path


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    """``<shared>/fixtures``; skips the test when it does not exist (fails under ``CI=true``)."""
    path = shared_dir / "fixtures"
    if not path.is_dir():
        _missing_shared(f"reference fixtures folder {path} not found (needed for parity tests).")
    return path


@pytest.fixture(scope="module")
def fixture_dir(fixtures_dir):
    """``<shared>/fixtures/multiomic`` (scGPT's ``MultiOmicTransformerModel``), used by the
    multiomic module and model tests; skips when absent (fails under ``CI=true``)."""
    path = fixtures_dir / "multiomic"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``CI=true``, a skip whose reason names a path in the shared folder fails."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _in_ci() and str(_shared_path()) in _skip_reason(report):
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true and this test needs the shared folder: {_skip_reason(report)} "
            "(set SCGPT_SCVI_SHARED or put the shared folder beside the repository)."
        )


def pytest_terminal_summary(terminalreporter) -> None:
    """How many tests were skipped, grouped by reason."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    terminalreporter.section(f"{len(skipped)} tests skipped", sep="-")
    for reason, n in Counter(_skip_reason(r) for r in skipped).most_common():
        terminalreporter.write_line(f"{n:5d} x {reason}")


@contextlib.contextmanager
def _single_torch_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (``pytestmark = pytest.mark.usefixtures(...)``)."""
    with _single_torch_thread():
        yield


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
    with _single_torch_thread():
        yield


@pytest.fixture(scope="session")
def counts_adata():
    """Factory of small synthetic AnnData: sparse Poisson counts, ``obs['batch']`` (2 batches)
    and ``obs['cell_type']`` (T / B / NK), cells ``cell0..`` and genes ``G0..``."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    from scipy import sparse

    def make(n_obs: int = 30, n_vars: int = 12, seed: int = 0) -> ad.AnnData:
        rng = np.random.default_rng(seed)
        X = rng.poisson(2.0, size=(n_obs, n_vars)).astype(np.float32)
        obs = pd.DataFrame(
            {
                "batch": pd.Categorical([f"b{i % 2}" for i in range(n_obs)]),
                "cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], n_obs)),
            },
            index=[f"cell{i}" for i in range(n_obs)],
        )
        var = pd.DataFrame(index=[f"G{j}" for j in range(n_vars)])
        return ad.AnnData(sparse.csr_matrix(X), obs=obs, var=var)

    return make

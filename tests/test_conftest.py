"""The suite's CI guard: missing shared data skips on a user's machine and fails under CI."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parent / "conftest.py"

TESTS = """
import pytest

def test_parity(shared_dir):
    pass

def test_data(shared_dir_path):
    pytest.skip(f"{shared_dir_path}/data/pbmc.h5ad not found")

def test_gpu():
    pytest.skip("no GPU here")

def test_plain():
    pass
"""

EXTRA_CONFTEST = """

@pytest.fixture
def shared_dir_path():
    return str(_shared_path())
"""


@pytest.fixture
def suite(pytester, tmp_path, monkeypatch):
    monkeypatch.setenv("SCGPT_SCVI_SHARED", str(tmp_path / "no_shared"))
    pytester.makeconftest(CONFTEST.read_text() + EXTRA_CONFTEST)
    pytester.makepyfile(test_suite=TESTS)
    return pytester


@pytest.mark.parametrize("ci", [None, "false"])
def test_without_ci_shared_tests_skip_with_reasons(suite, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(
        ["*3 tests skipped*", "*1 x shared folder * not found*", "*1 x no GPU here*"]
    )


def test_under_ci_shared_tests_fail(suite, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1, failed=1, errors=1)  # fixture: setup error
    result.stdout.fnmatch_lines(["*CI=true and shared folder * not found*"])
    result.stdout.fnmatch_lines(["*CI=true and this test needs the shared folder*pbmc.h5ad*"])
    assert result.ret != 0

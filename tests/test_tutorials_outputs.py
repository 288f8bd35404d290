"""Committed tutorials carry current outputs (the docs render them without executing).

Every code cell must have outputs, and the source hash stamped by
``tools/execute_tutorials.py`` must match the cell's source; otherwise the outputs are missing
or older than the code. Fix: ``make tutorials NB=tutorials/<name>.ipynb``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location(
    "execute_tutorials", ROOT / "tools/execute_tutorials.py"
)
execute_tutorials = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute_tutorials)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_has_current_outputs(path):
    problems = execute_tutorials.check_notebook(path)
    assert not problems, (
        f"{len(problems)} problem(s); run `make tutorials NB=tutorials/{path.name}`:\n"
        + "\n".join(problems)
    )


def _notebook(tmp_path, cells) -> Path:
    nb = nbformat.v4.new_notebook(cells=cells)
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return path


def _executed(source: str, stamp: str | None = None):
    cell = nbformat.v4.new_code_cell(source)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    cell.metadata["scgpt_scvi"] = {"source_sha256": stamp or execute_tutorials.source_hash(source)}
    return cell


def test_check_accepts_stamped_cells(tmp_path):
    assert execute_tutorials.check_notebook(_notebook(tmp_path, [_executed("print(1)")])) == []


def test_check_flags_missing_outputs_stale_and_unstamped_cells(tmp_path):
    silent = _executed("x = 1")
    silent.outputs = []
    stale = _executed("print(2)", stamp=execute_tutorials.source_hash("print(1)"))
    unstamped = nbformat.v4.new_code_cell("print(3)")
    unstamped.outputs = _executed("print(3)").outputs
    problems = execute_tutorials.check_notebook(
        _notebook(tmp_path, [silent, stale, unstamped, nbformat.v4.new_markdown_cell("# md")])
    )
    assert len(problems) == 3
    assert "code cell 1 ('x = 1'): no outputs" in problems[0]
    assert "code cell 2" in problems[1] and "source changed" in problems[1]
    assert "code cell 3" in problems[2] and "no hash" in problems[2]

"""Execute tutorials, store their outputs and stamp each code cell with its source hash.

Tutorials are committed executed: the docs render the stored outputs. This tool runs notebooks
in their own folder with the full (committed) parameters, writes the outputs back, and stores
``sha256(cell source)`` in each code cell's ``metadata["scgpt_scvi"]["source_sha256"]``.
``tests/test_tutorials_outputs.py`` (via :func:`check_notebook`) then fails when a committed
code cell has no outputs, or when its source changed after it was executed.

Usage (from the repository root)::

    python tools/execute_tutorials.py                              # every tutorials/*.ipynb
    python tools/execute_tutorials.py tutorials/perturbation.ipynb # some
    python tools/execute_tutorials.py --check                      # only check, run nothing
    make tutorials NB=tutorials/perturbation.ipynb                 # the same through make

``CI`` is removed from the kernel's environment unless ``--ci`` is given, so notebooks that
shrink their parameters under CI (``CI=true``, set by ``.ci/run``) run in full here.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP_KEY = "scgpt_scvi"


def source_hash(source: str | list[str]) -> str:
    """``sha256`` of a cell's source (nbformat stores it as a string or a list of lines)."""
    text = source if isinstance(source, str) else "".join(source)
    return hashlib.sha256(text.encode()).hexdigest()


def check_notebook(path: str | Path) -> list[str]:
    """Problems of a committed notebook: code cells without outputs or with stale outputs."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    problems = []
    number = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        number += 1
        first = cell.source.strip().splitlines()[0][:60] if cell.source.strip() else "<empty>"
        where = f"{Path(path).name}, code cell {number} ({first!r})"
        if not cell.source.strip():
            problems.append(f"{where}: empty code cell")
            continue
        if not cell.get("outputs"):
            problems.append(f"{where}: no outputs")
        stamp = cell.get("metadata", {}).get(STAMP_KEY, {}).get("source_sha256")
        if stamp is None:
            problems.append(f"{where}: not executed by tools/execute_tutorials.py (no hash)")
        elif stamp != source_hash(cell.source):
            problems.append(f"{where}: source changed after its outputs were produced")
    return problems


def execute(path: Path, timeout: int, ci: bool) -> float:
    """Run ``path`` in place; returns the seconds it took."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_ci = os.environ.pop("CI", None)
    if ci:
        os.environ["CI"] = "true"
    start = time.perf_counter()
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
            record_timing=False,
        )
        client.execute()
    finally:
        os.environ.pop("CI", None)
        if env_ci is not None:
            os.environ["CI"] = env_ci
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata[STAMP_KEY] = {"source_sha256": source_hash(cell.source)}
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: tutorials/*.ipynb")
    parser.add_argument("--check", action="store_true", help="only check the stored outputs")
    parser.add_argument("--ci", action="store_true", help="run with CI=true (small parameters)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "tutorials").glob("*.ipynb"))
    failed = False
    for nb in notebooks:
        nb = nb.resolve()
        if not args.check:
            print(f"executing {nb.relative_to(ROOT)} ...", flush=True)
            seconds = execute(nb, args.timeout, args.ci)
            print(f"  done in {seconds:.0f} s", flush=True)
        problems = check_notebook(nb)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        failed |= bool(problems)
        if not problems:
            print(f"  {nb.name}: every code cell has current outputs")
    if failed and not args.check:
        print(
            "Cells without outputs fail tests/test_tutorials_outputs.py: end each such cell "
            "with a value or a print.",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

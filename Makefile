# Quick start: `make demo` and `make test` each create .venv and install everything first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch that installs from this machine's disk; a GPU user just installs the package.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean docs docs-clean tutorials

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[test,docs]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m scgpt_scvi.demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools docs
	$(PY) -m pytest -q -p no:cacheprovider --durations=20 --nbmake tests tutorials

# Documentation: warnings are errors; offline (committed intersphinx inventories). HTML in
# docs/_build/html. `make docs-clean docs` rebuilds from scratch.
# `make docs SPHINX_STRICT=` builds without -W (local drafts only; CI builds with it).
SPHINX_STRICT ?= -W
docs: $(STAMP)
	$(PY) -m sphinx $(SPHINX_STRICT) --keep-going -q -b html docs docs/_build/html

docs-clean:
	rm -rf docs/_build docs/api docs/tutorials docs/_generated

# Execute tutorials in place with full parameters and stamp each code cell's source hash:
# `make tutorials` (all) or `make tutorials NB=tutorials/perturbation.ipynb`.
tutorials: $(STAMP)
	$(PY) tools/execute_tutorials.py $(NB)

bench: $(STAMP)
	$(PY) benchmarks/bench_scgpt.py

clean:
	rm -rf $(VENV) demo_output

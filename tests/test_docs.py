"""The API reference covers every public name: ``scgpt_scvi.__all__`` and each public
submodule's ``__all__`` against the pages ``docs/_ext/apigen.py`` generates (and, when the docs
have been built, against the HTML pages)."""

from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "docs" / "_build" / "html"
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import apigen  # noqa: E402

sys.path.remove(str(ROOT / "docs" / "_ext"))


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    apigen.write_api_pages(out)
    return {p.name: p.read_text() for p in out.glob("*.md")}


def _entries(text: str) -> set[str]:
    """Names listed in the page's autosummary blocks."""
    return set(re.findall(r"^   (\w+)$", text, flags=re.M))


def _links(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\* ``(\w+)``: :\w+:`([\w.]+)`$", text, flags=re.M))


def test_every_public_name_of_every_public_module_is_on_its_page(pages):
    modules = apigen.public_modules()
    assert {
        "scgpt_scvi",
        "scgpt_scvi.checkpoint",
        "scgpt_scvi.data",
        "scgpt_scvi.metrics",
        "scgpt_scvi.nn",
        "scgpt_scvi.module",
    } <= set(modules)
    assert "scgpt_scvi.hub" in modules
    documented: dict[str, str] = {}
    for modname in modules:
        mod = importlib.import_module(modname)
        text = pages[apigen.page_file(modname)]
        entries, links = _entries(text), _links(text)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if isinstance(obj, types.ModuleType):
                assert f":mod:`{obj.__name__}`" in text, f"{modname}: submodule {name} not linked"
                continue
            assert name in entries or name in links, f"{modname}.{name} has no API entry"
            if name in entries:
                documented[f"{modname}.{name}"] = modname
            else:  # linked to the page of the same object elsewhere
                target_mod, _, target_name = links[name].rpartition(".")
                assert getattr(importlib.import_module(target_mod), target_name) is obj
    for required in (
        "scgpt_scvi.SCGPT",
        "scgpt_scvi.SCGPTPerturbation",
        "scgpt_scvi.SCGPTMultiomic",
        "scgpt_scvi.SCGPTModule",
        "scgpt_scvi.SCGPTPerturbationModule",
        "scgpt_scvi.SCGPTMultiomicModule",
        "scgpt_scvi.nn.TransformerEncoderLayer",
        "scgpt_scvi.data.tokenize",
        "scgpt_scvi.hub.write_hub_folder",
        "scgpt_scvi.checkpoint.load_pretrained_parts",
        "scgpt_scvi.metrics.evaluate_perturbations",
    ):
        assert required in documented, required


def test_index_and_cli_pages(pages):
    index = pages["index.md"]
    for modname in apigen.public_modules():
        assert f"({apigen.page_file(modname)})" in index
    assert ".. argparse::" in pages["cli.md"] and ":func: build_parser" in pages["cli.md"]


def test_a_new_public_module_appears_without_editing_the_docs(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkg"
    (pkg / "tl").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Fake."""\n__all__ = ["top"]\n\ndef top():\n    """T."""\n')
    (pkg / "tl" / "__init__.py").write_text(
        '"""Tools."""\nfrom .._private import helper\n__all__ = ["helper", "score"]\n\n'
        'def score():\n    """S."""\n'
    )
    (pkg / "_private.py").write_text('def helper():\n    """H."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "api"
    monkeypatch.setattr(apigen, "CLI_PAGE", "cli\n")
    apigen.write_api_pages(out, package="fakepkg")
    assert (out / "fakepkg.tl.md").is_file() and not (out / "fakepkg._private.md").exists()
    assert _entries((out / "fakepkg.tl.md").read_text()) == {"helper", "score"}


def test_reexport_paths_resolve_to_the_documented_object():
    """Each object is described once; its other public paths are aliases of that description."""
    aliases = apigen.reexport_aliases()
    assert aliases["scgpt_scvi.model.SCGPT"] == "scgpt_scvi.SCGPT"
    assert aliases["scgpt_scvi.data.GeneVocab"] == "scgpt_scvi.GeneVocab"
    for alias, target in aliases.items():
        objs = []
        for dotted in (alias, target):
            modname, _, name = dotted.rpartition(".")
            objs.append(getattr(importlib.import_module(modname), name))
        assert objs[0] is objs[1], alias


def test_module_pages_do_not_document_their_members(pages):
    """``automodule`` on a module page gives its docstring only: the members have their own
    pages (``inherited-members`` in the autodoc defaults would document them all again)."""
    conf = (ROOT / "docs" / "conf.py").read_text()
    assert '"inherited-members"' not in conf.split("autodoc_default_options =", 1)[1].split("\n")[0]
    for page in apigen.collect():
        text = pages[apigen.page_file(page.module)]
        assert f".. automodule:: {page.module}\n   :no-members:" in text


def test_reexported_constants_get_their_comment_not_their_types_docstring():
    """Autodoc gives a constant re-exported from a private module its type's docstring (``dict``'s
    is not valid reST, and fails the -W build); the handler substitutes the ``#:`` comment."""
    docstrings = pytest.importorskip("sphinx.util.docstrings")
    from scgpt_scvi.checkpoint import ARGS_TO_KWARGS
    from scgpt_scvi.data import MODALITIES, SPECIAL_TOKENS

    lines = docstrings.prepare_docstring(dict.__doc__)
    apigen.document_constant(
        None, "data", "scgpt_scvi.checkpoint.ARGS_TO_KWARGS", ARGS_TO_KWARGS, {}, lines
    )
    assert lines[0].startswith("``args.json`` key") and "dict()" not in " ".join(lines)
    lines = docstrings.prepare_docstring(tuple.__doc__)
    apigen.document_constant(
        None, "data", "scgpt_scvi.data.SPECIAL_TOKENS", SPECIAL_TOKENS, {}, lines
    )
    assert lines == []  # no comment where it is defined: no text rather than tuple's
    own = ["Its own comment."]
    apigen.document_constant(None, "data", "scgpt_scvi.data.MODALITIES", MODALITIES, {}, own)
    assert own == ["Its own comment."]


@pytest.mark.skipif(not BUILT.is_dir(), reason="docs not built (make docs)")
def test_built_html_describes_each_object_once(pages):
    for page in apigen.collect():
        html = (BUILT / "api" / f"{page.module}.html").read_text()
        ids = set(re.findall(r'id="(scgpt_scvi\.[\w.]+)"', html)) - {page.module}
        assert not ids, f"{page.module}'s page describes {sorted(ids)[:5]} again"


@pytest.mark.parametrize("model", ["SCGPTPerturbation", "SCGPTMultiomic"])
def test_train_docstring_keeps_the_numpydoc_layout(model):
    """``fault_tolerant_train`` splices its keywords into ``train``'s parameter list: at the
    parameters' indentation, or the rendered page breaks (and the -W docs build fails)."""
    import inspect

    import scgpt_scvi

    lines = inspect.getdoc(getattr(scgpt_scvi, model).train).splitlines()
    for name in ("plan_kwargs", "checkpoint_dir", "resume", "**kwargs"):
        assert name in lines, f"{model}.train: parameter {name} is not at the list's indentation"


@pytest.mark.skipif(not BUILT.is_dir(), reason="docs not built (make docs)")
def test_built_html_has_a_page_per_documented_name(pages):
    missing = []
    for page in apigen.collect():
        for name in page.documented:
            if not (BUILT / "api" / "generated" / f"{page.module}.{name}.html").is_file():
                missing.append(f"{page.module}.{name}")
    assert not missing, f"no HTML page for {missing}; rebuild with make docs"
    assert (BUILT / "api" / "cli.html").is_file()
    cli = (BUILT / "api" / "cli.html").read_text()
    assert "embed" in cli and "--model" in cli
    for tutorial in sorted((ROOT / "tutorials").glob("*.ipynb")):
        html = BUILT / "tutorials" / f"{tutorial.stem}.html"
        assert html.is_file(), f"tutorial {tutorial.name} is not in the docs"


_RUNNABLE_EXAMPLE_MODULES = (
    "scgpt_scvi.nn._encoders",
    "scgpt_scvi.nn._decoders",
    "scgpt_scvi.nn._batchnorm",
    "scgpt_scvi.nn._losses",
    "scgpt_scvi.nn._grad_reverse",
    "scgpt_scvi.nn._transformer",
    "scgpt_scvi.data._binning",
    "scgpt_scvi.data._random",
    "scgpt_scvi.data._tokenizer",
)


@pytest.mark.parametrize("modname", _RUNNABLE_EXAMPLE_MODULES)
def test_docstring_examples_of_torch_blocks_run(modname):
    """The examples that need no AnnData are doctests: they run and print what they show."""
    import doctest

    import torch

    torch.manual_seed(0)
    mod = importlib.import_module(modname)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {modname} failed"

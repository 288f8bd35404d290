"""API reference pages generated from ``scgpt_scvi.__all__`` and the public submodules' ``__all__``.

Run at every docs build (``conf.py``) and by ``tests/test_docs.py``. Every public module of the
package (``scgpt_scvi`` and each submodule or subpackage whose dotted path has no part starting
with ``_``) gets ``api/<module>.md``, listing each name of its ``__all__``:

* an autosummary entry (its own generated page) where the object is documented, the first
  module in :func:`public_modules` order exporting it (``scgpt_scvi.SCGPT`` rather than
  ``scgpt_scvi.model.SCGPT``);
* a cross-reference to that page in the other modules exporting the same object.

Each object is thus described once, under one name. References to it through another public path
(``:class:`scgpt_scvi.model.SCGPT``` in a docstring, ``:meth:`scgpt_scvi.model.SCGPT.train```)
resolve to that description through :func:`resolve_reexport`, a ``missing-reference`` handler.

New modules (``scgpt_scvi.tl``, ...) appear without editing the docs. The command-line page is
``api/cli.md``, rendered by sphinx-argparse from ``scgpt_scvi._cli.build_parser``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "scgpt_scvi"
SKIP_MODULES = {"scgpt_scvi.demo"}  # the `make demo` script, documented in the quick start


@dataclass
class ModulePage:
    """One API page: a module, the names it documents and the names it links to."""

    module: str
    summary: str
    documented: list[str] = field(default_factory=list)
    linked: dict[str, str] = field(default_factory=dict)  # name -> canonical dotted name
    submodules: list[str] = field(default_factory=list)


def public_modules(package: str = PACKAGE) -> list[str]:
    """Dotted names of the package and its public submodules (top level first)."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or info.name in SKIP_MODULES:
            continue
        names.append(info.name)
    return names


def _kind(obj) -> str:
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "data"


def collect(package: str = PACKAGE) -> list[ModulePage]:
    """The pages: each public module with its ``__all__`` split into documented and linked."""
    pages: list[ModulePage] = []
    canonical: dict[tuple[str, int], str] = {}
    for modname in public_modules(package):
        mod = importlib.import_module(modname)
        doc = inspect.getdoc(mod) or ""
        page = ModulePage(modname, doc.splitlines()[0] if doc else modname)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if isinstance(obj, types.ModuleType):
                page.submodules.append(obj.__name__)
                continue
            key = (name, id(obj))
            if key in canonical:
                page.linked[name] = canonical[key]
            else:
                canonical[key] = f"{modname}.{name}"
                page.documented.append(name)
        pages.append(page)
    return pages


def reexport_aliases(package: str = PACKAGE) -> dict[str, str]:
    """Each public path of an object other than the one it is documented under -> that one
    (``scgpt_scvi.model.SCGPT`` -> ``scgpt_scvi.SCGPT``)."""
    return {
        f"{page.module}.{name}": target
        for page in collect(package)
        for name, target in page.linked.items()
    }


_ALIASES: dict[str, str] | None = None


def resolve_reexport(app, env, node, contnode):
    """``missing-reference`` handler: resolve a Python reference written with a re-export path
    (or a member of one) against the object's documented path; ``None`` for anything else."""
    global _ALIASES
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not target.startswith(PACKAGE + "."):
        return None
    if _ALIASES is None:
        _ALIASES = reexport_aliases()
    head, rest = target, ""
    while head not in _ALIASES:  # longest prefix that is a re-export path
        head, _, last = head.rpartition(".")
        if not head:
            return None
        rest = f".{last}{rest}"
    return env.domains["py"].resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], _ALIASES[head] + rest, node, contnode
    )


def constant_comment(dotted: str) -> list[str] | None:
    """The ``#:`` comment of a constant in the module that defines it (``scgpt_scvi.data.
    SPECIAL_TOKENS`` -> its comment in ``scgpt_scvi.data._vocab``); ``None`` when it has none.

    Autodoc looks for the comment in the module it documents the constant under, where a
    re-exported constant has none.
    """
    from sphinx.errors import PycodeError
    from sphinx.pycode import ModuleAnalyzer

    modname, _, name = dotted.rpartition(".")
    obj = getattr(importlib.import_module(modname), name)
    package = modname.split(".")[0]
    candidates = sorted(
        (m for m in list(sys.modules) if m == package or m.startswith(package + ".")),
        key=lambda m: (not m.startswith(modname), m),  # the documenting module's subtree first
    )
    for candidate in candidates:
        if getattr(sys.modules.get(candidate), name, None) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(candidate).find_attr_docs()
        except PycodeError:
            continue
        if ("", name) in docs:
            return list(docs[("", name)])
    return None


def document_constant(app, what, name, obj, options, lines):
    """``autodoc-process-docstring`` handler: a constant of ours whose docstring is its type's
    (``tuple``'s, ``dict``'s, which is not valid reST) gets its ``#:`` comment from the module
    that defines it instead (:func:`constant_comment`), or no text."""
    from sphinx.util.docstrings import prepare_docstring

    if what != "data" or not name.startswith(PACKAGE + "."):
        return
    type_doc = getattr(type(obj), "__doc__", None)
    if not type_doc or _text(lines) != _text(prepare_docstring(type_doc)):
        return
    lines[:] = constant_comment(name) or []


def _text(lines) -> list[str]:
    return [line.strip() for line in lines if line.strip()]


def _role(dotted: str) -> str:
    modname, _, name = dotted.rpartition(".")
    obj = getattr(importlib.import_module(modname), name)
    return {"class": "class", "function": "func", "data": "data"}[_kind(obj)]


def render(page: ModulePage) -> str:
    """The Markdown (MyST) source of one API page."""
    mod = importlib.import_module(page.module)
    lines = [
        f"# `{page.module}`",
        "",
        "```{eval-rst}",
        f".. automodule:: {page.module}",
        "   :no-members:",
        "",
        f".. currentmodule:: {page.module}",
        "",
    ]
    groups: dict[str, list[str]] = {"class": [], "function": [], "data": []}
    for name in page.documented:
        groups[_kind(getattr(mod, name))].append(name)
    titles = {"class": "Classes", "function": "Functions", "data": "Constants"}
    for kind, names in groups.items():
        if not names:
            continue
        lines += [
            ".. rubric:: " + titles[kind],
            "",
            ".. autosummary::",
            "   :toctree: generated",
            "   :nosignatures:",
            "",
        ]
        lines += [f"   {n}" for n in names]
        lines.append("")
    if page.linked:
        lines += [".. rubric:: Also exported here", ""]
        for name, target in page.linked.items():
            lines.append(f"* ``{name}``: :{_role(target)}:`{target}`")
        lines.append("")
    if page.submodules:
        lines += [".. rubric:: Submodules", ""]
        lines += [f"* :mod:`{s}`" for s in page.submodules]
        lines.append("")
    lines.append("```")
    return "\n".join(lines) + "\n"


def page_file(modname: str) -> str:
    """File name of a module's page inside ``api/``."""
    return f"{modname}.md"


def write_api_pages(out_dir: str | Path, package: str = PACKAGE) -> list[Path]:
    """Write ``index.md``, one page per public module and ``cli.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pages = collect(package)
    written = []
    for page in pages:
        path = out / page_file(page.module)
        _write_if_changed(path, render(page))
        written.append(path)
    cli = out / "cli.md"
    _write_if_changed(cli, CLI_PAGE)
    written.append(cli)
    index = [
        "# API reference",
        "",
        "Generated from `scgpt_scvi.__all__` and the public submodules' `__all__`: every public",
        "class, function and constant has a page. Objects re-exported at the top level",
        "(`from scgpt_scvi import SCGPT`) are documented there and linked from their submodule.",
        "",
        "| module | contents |",
        "|---|---|",
    ]
    index += [f"| [`{p.module}`]({page_file(p.module)}) | {p.summary} |" for p in pages]
    index += [
        "| [command line](cli.md) | `scgpt-scvi` subcommands |",
        "",
        "```{toctree}",
        ":hidden:",
        "",
    ]
    index += [page_file(p.module) for p in pages] + ["cli.md", "```", ""]
    _write_if_changed(out / "index.md", "\n".join(index))
    written.append(out / "index.md")
    return written


def _write_if_changed(path: Path, text: str) -> None:
    """Keep mtimes of unchanged pages, so incremental builds stay incremental."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


CLI_PAGE = """\
# Command line

The `scgpt-scvi` console script (also `python -m scgpt_scvi._cli`). Rendered from its argparse
parser, `scgpt_scvi._cli.build_parser`, so every subcommand is listed here.

```{eval-rst}
.. argparse::
   :module: scgpt_scvi._cli
   :func: build_parser
   :prog: scgpt-scvi
```

Python counterpart of `embed`: {func}`scgpt_scvi._cli.embed_h5ad` is not public; call
{meth}`scgpt_scvi.SCGPT.from_pretrained` and
{meth}`~scgpt_scvi.SCGPT.get_latent_representation` instead.
"""

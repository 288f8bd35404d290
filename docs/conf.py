"""Sphinx configuration of the scgpt-scvi documentation (scverse cookiecutter style).

Builds offline: intersphinx reads the small inventories committed under ``_inventories/``
(written by ``_inventories/make_inventories.py``); ``SCGPT_DOCS_ONLINE_INVENTORIES=1`` makes it
fetch the projects' full inventories instead. Notebooks render their stored outputs
(``nb_execution_mode = "off"``); ``tools/execute_tutorials.py`` executes them.
"""

from __future__ import annotations

import os
import shutil
import sys
from datetime import datetime
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE / "_ext"))

import warnings  # noqa: E402

import apigen  # noqa: E402
import plot_benchmarks  # noqa: E402

# sphinx-autodoc-typehints calls an API Sphinx 10 removes: not our concern here
warnings.filterwarnings("ignore", message=".*is deprecated. Check CHANGES")

# -- project ------------------------------------------------------------------------------------
project = "scgpt-scvi"
author = "scgpt-scvi developers"
copyright = f"{datetime.now():%Y}, {author}"
try:
    release = version = _version("scgpt-scvi")
except Exception:  # pragma: no cover - not installed
    release = version = "0+unknown"
repository_url = "https://github.com/scverse/scgpt-scvi"

# -- generated sources: API pages, tutorials, benchmark figures ---------------------------------
apigen.write_api_pages(HERE / "api")
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))
(HERE / "tutorials").mkdir(exist_ok=True)
for stale in (HERE / "tutorials").glob("*.ipynb"):
    stale.unlink()
for nb in TUTORIALS:
    shutil.copyfile(nb, HERE / "tutorials" / nb.name)
plot_benchmarks.render(HERE / "benchmarks", HERE / "_generated" / "benchmarks")

# -- extensions ---------------------------------------------------------------------------------
extensions = [
    "myst_nb",
    "sphinx_copybutton",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinxcontrib.bibtex",
    "sphinx_autodoc_typehints",
    "sphinxarg.ext",
    "scanpydoc.definition_list_typed_field",
    "scanpydoc.elegant_typehints",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "_inventories"]
source_suffix = {".rst": "restructuredtext", ".ipynb": "myst-nb", ".md": "myst-nb"}
master_doc = "index"
default_role = "literal"
# Broken references to our own objects are errors; external ones resolve through intersphinx
# where the committed inventories list them and render as plain text otherwise.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(?!scgpt_scvi\.).*"),  # external objects
    (r"py:.*", r"scgpt_scvi(\.\w+)*\._.*"),  # private helpers (bases such as _pretrained)
]

# autodoc / autosummary / napoleon (numpydoc)
autosummary_generate = True
autosummary_imported_members = True
autodoc_member_order = "groupwise"
# No "inherited-members" here: autodoc treats it as "document every member" even under
# ``automodule:: ... :no-members:``, which put each class of a module's ``__all__`` on the module
# page as well as on its own page (duplicate object descriptions). The class template
# (``_templates/autosummary/class.rst``) asks for inherited members where they belong.
autodoc_default_options = {"members": True, "show-inheritance": True}
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_document_param_types = False
qualname_overrides: dict[str, str] = {}

# myst / myst-nb
myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath", "html_image"]
myst_heading_anchors = 3
nb_execution_mode = "off"
nb_merge_streams = True
nb_output_stderr = "remove"

# bibliography
bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"

# intersphinx: offline by default (committed inventories), online on request
_ONLINE = os.environ.get("SCGPT_DOCS_ONLINE_INVENTORIES", "") not in ("", "0")
intersphinx_mapping = {
    name: (url, None if _ONLINE else str(HERE / "_inventories" / f"{name}.inv"))
    for name, url in {
        "python": "https://docs.python.org/3",
        "numpy": "https://numpy.org/doc/stable",
        "pandas": "https://pandas.pydata.org/docs",
        "scipy": "https://docs.scipy.org/doc/scipy",
        "anndata": "https://anndata.readthedocs.io/en/stable",
        "mudata": "https://mudata.readthedocs.io/en/latest",
        "scanpy": "https://scanpy.readthedocs.io/en/stable",
        "scvi": "https://docs.scvi-tools.org/en/stable",
        "torch": "https://docs.pytorch.org/docs/stable",
        "lightning": "https://lightning.ai/docs/pytorch/stable",
        "huggingface_hub": "https://huggingface.co/docs/huggingface_hub/main/en",
    }.items()
}
intersphinx_disabled_reftypes = ["std:doc"]

# -- HTML ---------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "scgpt-scvi"
html_static_path: list[str] = []  # no custom assets (and no empty _static/ to commit)
html_extra_path: list[str] = []
html_theme_options = {
    "repository_url": repository_url,
    "use_repository_button": True,
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
}
html_show_sphinx = False

# Warnings that are not about our pages: tolerated under -W.
suppress_warnings = [
    "mystnb.unknown_mime_type",
    "myst.header",
]


def _skip_foreign_members(app, what, name, obj, skip, options):
    """Document inherited members only when they come from this package (e.g. ``SCGPT``'s
    ``from_pretrained``), not the many scvi-tools / torch / Lightning ones."""
    if what != "class":
        return None
    target = getattr(obj, "fget", None) or getattr(obj, "__func__", None) or obj
    module = getattr(target, "__module__", None) or ""
    if not module.startswith("scgpt_scvi"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_members)
    # `scgpt_scvi.model.SCGPT` and `scgpt_scvi.SCGPT` are one object, documented once (under the
    # latter): references through the other public paths resolve to that page.
    app.connect("missing-reference", apigen.resolve_reexport)
    # Constants re-exported from private modules: their `#:` comment, not their type's docstring
    # (before napoleon, which would parse e.g. `dict`'s docstring).
    app.connect("autodoc-process-docstring", apigen.document_constant, priority=400)

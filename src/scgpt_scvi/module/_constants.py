"""Registry keys added by scgpt-scvi on top of scvi-tools' ``REGISTRY_KEYS``."""

__all__ = ["CELL_KEY", "CELL_EMB_STYLES"]

#: Registry key of the per-cell integer keys that seed tokenisation.
CELL_KEY = "cell_key"
CELL_EMB_STYLES = ("cls", "avg-pool", "w-pool")

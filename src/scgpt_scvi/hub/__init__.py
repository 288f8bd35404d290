"""Sharing models through scvi-hub (Hugging Face): hub folders with a model card."""

from ._folder import HUB_MANIFEST, RELEASED_SUBDIR, load_hub_model, pull_hub_model, write_hub_folder

__all__ = [
    "HUB_MANIFEST",
    "RELEASED_SUBDIR",
    "load_hub_model",
    "pull_hub_model",
    "write_hub_folder",
]

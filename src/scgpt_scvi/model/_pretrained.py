"""Official scGPT checkpoints: ``from_pretrained`` / ``save_pretrained`` (checkpoints issue)."""

from __future__ import annotations

__all__ = ["PretrainedMixin"]


class PretrainedMixin:
    """Loading and exporting scGPT checkpoint folders (``args.json``, ``vocab.json``,
    ``best_model.pt``)."""

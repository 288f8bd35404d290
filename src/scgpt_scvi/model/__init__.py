"""User-facing model wrappers."""

from ._scgpt import SCGPT
from ._training_plan import SCGPTTrainingPlan

__all__ = ["SCGPT", "SCGPTTrainingPlan"]

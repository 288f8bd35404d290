"""User-facing model wrappers."""

from ._multiomic import SCGPTMultiomic
from ._perturbation import SCGPTPerturbation
from ._scgpt import SCGPT
from ._training_plan import SCGPTTrainingPlan

__all__ = ["SCGPT", "SCGPTMultiomic", "SCGPTPerturbation", "SCGPTTrainingPlan"]

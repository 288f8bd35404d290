"""User-facing model wrappers."""

from ._multiomic import SCGPTMultiomic
from ._perturbation import SCGPTPerturbation
from ._save_load import convert_pickle_folder
from ._scgpt import SCGPT
from ._training_plan import SCGPTTrainingPlan

__all__ = [
    "SCGPT",
    "SCGPTMultiomic",
    "SCGPTPerturbation",
    "SCGPTTrainingPlan",
    "convert_pickle_folder",
]

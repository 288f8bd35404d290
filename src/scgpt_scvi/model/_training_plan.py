"""Training plan for the scGPT family: scvi's ``TrainingPlan`` plus warm-up/decay and redraws."""

from __future__ import annotations

import math

import torch
from scvi.train import TrainingPlan

__all__ = ["SCGPTTrainingPlan", "LR_SCHEDULES"]

LR_SCHEDULES = ("cosine", "step", "constant")


class SCGPTTrainingPlan(TrainingPlan):
    """scvi-tools ``TrainingPlan`` with what scGPT training needs.

    Adds a linear learning-rate warm-up followed by cosine or per-epoch step decay (scGPT's
    ``StepLR(gamma=0.9)``), and tells the module the epoch so masking and gene sampling are
    redrawn every epoch. Objective weights (``mlm_weight``, ``mvc_weight``, ``cls_weight``,
    ``cce_weight``, ``ecs_weight``, ``dab_weight``) pass through to ``module.loss``. Gradient
    clipping is the trainer's ``gradient_clip_val`` (the models default it to 1.0).

    Parameters
    ----------
    module
        An scgpt-scvi module.
    optimizer
        ``"Adam"`` or ``"AdamW"`` (or ``"Custom"`` with ``optimizer_creator``).
    lr
        Peak learning rate.
    weight_decay
        Weight decay.
    eps
        Optimiser epsilon.
    warmup_ratio
        Fraction of the total optimisation steps spent warming up linearly from 0.
    lr_schedule
        ``"cosine"`` (to 0 at the last step), ``"step"`` (``step_gamma`` per epoch after
        warm-up) or ``"constant"``.
    step_gamma
        Decay per epoch for ``"step"``.
    **kwargs
        Other ``scvi.train.TrainingPlan`` options and objective weights.

    Examples
    --------
    >>> model.train(max_epochs=10, plan_kwargs={"lr": 1e-3, "optimizer": "AdamW",
    ...             "lr_schedule": "cosine", "warmup_ratio": 0.1, "mlm_weight": 0.002})
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        optimizer: str = "Adam",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        warmup_ratio: float = 0.1,
        lr_schedule: str = "cosine",
        step_gamma: float = 0.9,
        **kwargs,
    ):
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"Unknown lr_schedule {lr_schedule!r}; choose one of {LR_SCHEDULES}.")
        super().__init__(
            module, optimizer=optimizer, lr=lr, weight_decay=weight_decay, eps=eps, **kwargs
        )
        self.warmup_ratio, self.lr_schedule, self.step_gamma = warmup_ratio, lr_schedule, step_gamma

    def compute_and_log_metrics(self, loss_output, metrics, mode: str) -> None:
        """scvi's metrics, then each objective as ``loss_<name>_<mode>``.

        scvi-tools logs extra metrics inside ``torch.inference_mode``; under DDP Lightning then
        syncs those inference tensors in place and fails, so they are logged here instead.
        """
        extra, loss_output.extra_metrics = loss_output.extra_metrics, {}
        try:
            super().compute_and_log_metrics(loss_output, metrics, mode)
        finally:
            loss_output.extra_metrics = extra
        for key, value in extra.items():
            self.log(
                f"{key}_{mode}",
                value.detach(),
                on_step=self.on_step,
                on_epoch=self.on_epoch,
                batch_size=loss_output.n_obs_minibatch,
                sync_dist=self.use_sync_dist,
            )

    def on_fit_start(self) -> None:
        """Put the module in training mode (``load`` leaves it in eval mode; Lightning keeps it)."""
        self.module.train()

    def on_validation_epoch_start(self) -> None:
        """Mask validation cells too (keyed on the cell, fixed across epochs), so the validation
        loss scores the MLM objective and early stopping can follow it."""
        self.module.mask_in_eval = True

    def on_validation_epoch_end(self) -> None:
        """Embeddings and predictions in eval mode see unmasked cells again."""
        self.module.mask_in_eval = False

    def on_train_epoch_start(self) -> None:
        """Let the module redraw masks and gene samples for this epoch."""
        self.module.epoch = int(self.current_epoch)

    def _lr_factor(self, step: int) -> float:
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.warmup_ratio * total)
        if step < warmup:
            return (step + 1) / warmup
        if self.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))
        if self.lr_schedule == "step":
            steps_per_epoch = max(total // max(self.trainer.max_epochs or 1, 1), 1)
            return self.step_gamma ** ((step - warmup) // steps_per_epoch)
        return 1.0

    def configure_optimizers(self):
        """The optimiser over trainable parameters with a per-step warm-up/decay schedule."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("No trainable parameters: every parameter is frozen.")
        optimizer = self.get_optimizer_creator()(params)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

"""When training stops: early stopping on the validation split, with train.max_steps (and max_minutes) as the
cap, and the reason a run stopped, recorded in its model file.

Early stopping watches val_loss (module.py `validation_step`: the same criterion for every method) through
Lightning's EarlyStopping callback, whose state (best value, validations without improvement) is saved in
the checkpoint, so a resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from torch import Tensor

from mmhvae.config import TrainConfig

log = logging.getLogger(__name__)

MONITOR = "val_loss"


class RelativeEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping on val_loss (lower is better) with a relative `min_delta`: a validation
    improves only when it lowers the best val_loss so far by more than `relative_delta` of it (0.01: 1 %),
    whatever the scale of the images' errors."""

    def __init__(self, patience: int, relative_delta: float):
        super().__init__(monitor=MONITOR, mode="min", patience=patience, check_finite=True,
                         check_on_train_epoch_end=False)
        self.relative_delta = relative_delta

    def _evaluate_stopping_criteria(self, current: Tensor) -> tuple[bool, str | None]:
        # Lightning counts `current - min_delta < best` as an improvement (min_delta <= 0 in mode "min").
        best = float(self.best_score)
        self.min_delta = -self.relative_delta * best if torch.isfinite(self.best_score) else 0.0
        return super()._evaluate_stopping_criteria(current)


def early_stopping_callbacks(train: TrainConfig, validates: bool) -> list[RelativeEarlyStopping]:
    """The early-stopping callback of a run ([] when `train.early_stopping_patience` is 0 or nothing validates)."""
    if train.early_stopping_patience <= 0:
        return []
    if not validates:
        log.warning("train.early_stopping_patience is set, but no subject is held out for validation: training "
                    "runs to train.max_steps")
        return []
    return [RelativeEarlyStopping(train.early_stopping_patience, train.early_stopping_min_delta)]


def stop_reason(trainer: pl.Trainer, train: TrainConfig) -> str:
    """Why a call of `train` ended: "converged" (early stopping), "val_loss not finite", "max_steps",
    "max_minutes", or "interrupted" (stopped before either cap, as `stop_at_step` does)."""
    for callback in trainer.callbacks:
        if isinstance(callback, RelativeEarlyStopping):
            if callback.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED:
                return "converged"
            if callback.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC:
                return "val_loss not finite"
    if trainer.global_step >= train.max_steps:
        return "max_steps"
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]  # Lightning's, for train.max_minutes
    remaining = [c.time_remaining() for c in timers]
    if any(seconds is not None and seconds <= 0 for seconds in remaining):
        return "max_minutes"
    return "interrupted"

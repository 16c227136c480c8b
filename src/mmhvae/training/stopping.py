"""When training stops: early stopping on the validation split, with train.max_steps (and max_minutes) as the
cap, and the reason a run stopped, recorded in its model file.

Early stopping watches val_loss (module.py `validation_step`: the same criterion for every method), by one of
two rules:
- patience: Lightning's EarlyStopping with a relative min_delta (stop after `early_stopping_patience`
  validations without improving on the best by `early_stopping_min_delta`);
- flat tail (`early_stopping_tail` > 0): stop once val_loss has changed by less than `early_stopping_min_delta`
  (relative) over the last `early_stopping_tail` of the steps so far, a window that must hold at least
  `early_stopping_patience` validations. This is the convergence criterion a results page judges a curve by
  (`flat_tail`), so a run stopped by it has converged by that criterion.
Both callbacks keep their state in the checkpoint, so a resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, Timer
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


@dataclass(frozen=True)
class TailChange:
    """How a validation curve moved over the last `tail` of its steps."""

    steps: int  # the step of the last validation
    change: float  # (last - value at the start of the tail) / value at the start of the tail
    validations: int  # validations inside the tail, both ends included


def tail_change(curve: Sequence[tuple[int, float]], tail: float) -> TailChange:
    """The relative change of a (step, val_loss) curve over its last `tail` fraction of steps."""
    if not curve:
        return TailChange(0, math.nan, 0)
    last_step, last = curve[-1]
    window = [value for step, value in curve if step >= (1 - tail) * last_step]
    start = window[0]
    return TailChange(last_step, (last - start) / start if start else math.nan, len(window))


def flat_tail(curve: Sequence[tuple[int, float]], tail: float, tolerance: float, validations: int) -> bool:
    """The convergence criterion: |relative change over the last `tail` of the steps| < `tolerance`, the tail
    holding at least `validations` validations (so that a short curve cannot pass on one or two points)."""
    moved = tail_change(curve, tail)
    return moved.validations >= max(2, validations) and abs(moved.change) < tolerance


class FlatTailStopping(Callback):
    """Stop once val_loss is flat by `flat_tail` (see the module docstring); a non-finite val_loss stops too."""

    def __init__(self, tail: float, tolerance: float, validations: int):
        self.tail, self.tolerance, self.validations = tail, tolerance, validations
        self.curve: list[tuple[int, float]] = []
        self.reason: str | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or MONITOR not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[MONITOR])
        self.curve.append((trainer.global_step, value))
        if not math.isfinite(value):
            self.reason = "val_loss not finite"
        elif flat_tail(self.curve, self.tail, self.tolerance, self.validations):
            self.reason = "converged"
        if self.reason:
            trainer.should_stop = True
            log.info(f"stopping at step {trainer.global_step}: {self.reason} (val_loss {value:.4g})")

    def state_dict(self) -> dict[str, Any]:
        return {"curve": list(self.curve), "reason": self.reason}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = [tuple(point) for point in state_dict["curve"]]
        self.reason = state_dict["reason"]


def flat_tail_rule(train: TrainConfig) -> tuple[float, float, int] | None:
    """The (tail, tolerance, validations) of `flat_tail` that `train` stops by; None when it stops by patience
    or not at all. The one place that reads the rule from a config: early stopping applies it and a results page
    judges curves by it (experiments/tuning.py `ConvergenceCriterion.of`)."""
    if train.early_stopping_patience > 0 and train.early_stopping_tail > 0:
        return train.early_stopping_tail, train.early_stopping_min_delta, train.early_stopping_patience
    return None


def early_stopping_callbacks(train: TrainConfig, validates: bool) -> list[Callback]:
    """The early-stopping callback of a run ([] when `train.early_stopping_patience` is 0 or nothing validates)."""
    if train.early_stopping_patience <= 0:
        return []
    if not validates:
        log.warning("train.early_stopping_patience is set, but no subject is held out for validation: training "
                    "runs to train.max_steps")
        return []
    rule = flat_tail_rule(train)
    if rule:
        return [FlatTailStopping(*rule)]
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
        if isinstance(callback, FlatTailStopping) and callback.reason:
            return callback.reason
    if trainer.global_step >= train.max_steps:
        return "max_steps"
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]  # Lightning's, for train.max_minutes
    remaining = [c.time_remaining() for c in timers]
    if any(seconds is not None and seconds <= 0 for seconds in remaining):
        return "max_minutes"
    return "interrupted"

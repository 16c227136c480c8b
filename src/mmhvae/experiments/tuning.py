"""Equal treatment of every method in a study: a learning rate chosen per method on the validation split, and
the evidence that each model was trained to convergence (its validation-loss curve and a stated criterion).

The validation loss is the one every method logs the same way (training/module.py `validation_step`): the mean
squared error, on the network's scale, of the EMA network's predictions of the observed modalities of the
validation subjects from all their inputs and from a single input.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmhvae.config import RunConfig, TrainConfig, load_config, with_method
from mmhvae.experiments.variants import Variant
from mmhvae.io.files import atomic_path
from mmhvae.training.stopping import flat_tail, flat_tail_rule, tail_change

VALIDATION_LOSS = "val_loss"


def validation_curve(run: Path) -> list[tuple[int, float]]:
    """(steps trained, validation loss) of every validation of a run folder, over all its training sessions.

    Validations happen every `train.validate_every` steps, but Lightning's CSV log numbers a first session's
    rows by the 0-based index of their last batch and a resumed session's by the steps trained; rounding up to
    a multiple of validate_every gives the steps trained in both, the step early stopping
    (training/stopping.py) and the model file's `steps` see, so the page and the run judge one curve."""
    every = load_config(Path(run) / "config.yaml").train.validate_every
    points: dict[int, float] = {}
    for log in sorted(Path(run).glob("logs/session-*/metrics.csv")):
        with open(log, newline="") as handle:
            for row in csv.DictReader(handle):
                value, step = row.get(VALIDATION_LOSS, ""), row.get("step", "")
                if value not in ("", None) and step not in ("", None):
                    points[math.ceil(int(float(step)) / every) * every] = float(value)
    return sorted(points.items())


def final_validation_loss(run: Path) -> float:
    """The last validation loss of a run (nan when it never validated)."""
    curve = validation_curve(run)
    return curve[-1][1] if curve else math.nan


@dataclass(frozen=True)
class ConvergenceCriterion:
    """A curve has flattened when its validation loss moves by less than `tolerance` (relative) over the last
    `tail` of its steps, that window holding at least `validations` validations."""

    tail: float = 0.2
    tolerance: float = 0.01
    validations: int = 3

    @classmethod
    def of(cls, train: TrainConfig) -> ConvergenceCriterion:
        """The flat-tail rule a config's early stopping applies (training/stopping.py), so that a page judges
        its curves by the rule its runs stopped by; the default where the config stops another way."""
        rule = flat_tail_rule(train)
        return cls(*rule) if rule else cls()

    def earliest_step(self, validate_every: int) -> int | None:
        """The first step at which a run validated every `validate_every` steps can meet the criterion: that of
        a perfectly flat curve (a stop cannot come earlier whatever the losses); None when even a flat curve
        never does (a tolerance of 0)."""
        if self.tolerance <= 0:
            return None
        flat = [(validate_every, 1.0)]
        while not convergence(flat, self).converged:
            flat.append(((len(flat) + 1) * validate_every, 1.0))
        return flat[-1][0]


@dataclass(frozen=True)
class Convergence:
    """Whether a curve has flattened: its relative change over the last tail of its steps."""

    steps: int
    change: float  # (last - value at the start of the tail) / value at the start of the tail
    converged: bool


def convergence(curve: Sequence[tuple[int, float]],
                criterion: ConvergenceCriterion = ConvergenceCriterion()) -> Convergence:
    """Whether `curve` meets `criterion` (training/stopping.py `flat_tail`, the rule early stopping can use)."""
    moved = tail_change(curve, criterion.tail)
    return Convergence(moved.steps, moved.change,
                       flat_tail(curve, criterion.tail, criterion.tolerance, criterion.validations))


def learning_rate_variant(method: str, base: RunConfig, lr: float, seed: int) -> Variant:
    """`method` at learning rate `lr` and training seed `seed`; its schedule keeps the recipe's ratio of final to
    initial rate (constant for MM-GAN and M2DN, a cosine to 1/20 for MMHVAE, to 0 for ResViT). Every seed keeps
    the validation split of the config's seed (train.fold_seed)."""
    recipe = with_method(base, method).train
    ratio = recipe.lr_final / recipe.lr if recipe.lr else 1.0
    return Variant(f"{method}-lr{lr:g}-seed{seed}", method, train={"lr": lr, "lr_final": lr * ratio, "seed": seed,
                                                                     "fold_seed": base.train.split_seed})


def chosen_learning_rate(losses: dict[float, float]) -> float:
    """The learning rate of the lowest final validation loss (non-finite losses, e.g. a diverged run, lose)."""
    return min(losses, key=lambda lr: losses[lr] if math.isfinite(losses[lr]) else math.inf)


def curves_figure(png: Path, curves: dict[str, list[list[tuple[int, float]]]]) -> Path:
    """Validation loss against step, one panel per method, one line per training seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(curves))
    rows = math.ceil(len(curves) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
    for ax, (method, per_seed) in zip(axes.flat, curves.items()):
        for curve in per_seed:
            if curve:
                steps, values = np.array(curve).T
                ax.plot(steps, values, lw=1)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("validation loss (log)", fontsize=8)
        ax.set_yscale("log")  # the flattening tail the criterion judges is visible only on a log scale
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return png

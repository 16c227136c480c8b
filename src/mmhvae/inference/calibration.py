"""Calibrated uncertainty: split-conformal intervals around the mean of K posterior samples.

A model file may carry a calibration (written by `mmhvae calibrate`): for each target modality and input
subset, and pooled for each target and task (harmonisation, the target among the inputs; synthesis, it is
not), a scale fitted on held-out calibration subjects. An interval uses its input subset's scale, so that it
covers the level for that subset and not only on average over subsets (one input sees far less than four);
the task's scale stands in for a subset the calibration subjects lacked. The nonconformity score is the
absolute error of the sample mean divided by the sample sd (`scaled`), or the absolute error itself where the
sd is degenerate (`absolute`). The interval at level a is

    mean +- q_a * (sd + floor)     (scaled)        or        mean +- q_a      (absolute),

q_a being the split-conformal quantile of the calibration scores: the ceil((n + 1) a)-th smallest of n
(Vovk et al. 2005; Angelopoulos & Bates 2021), which covers a fraction >= a of new voxels when calibration
and test subjects are exchangeable. The calibrated sd is the half-width divided by the normal quantile of the
level, so that mean +- z_a * sd is the interval.

Everything here is on the network's scale (intensity t as 2t - 1), like the predictions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mmhvae.errors import InputError
from mmhvae.modalities import Subset, subset_label
from mmhvae.model.distributions import central_interval_z

TASKS = ("harmonisation", "synthesis")
DEFAULT_LEVEL = 0.9
# Levels stored beside the requested ones, for the reliability diagram of `analyse uncertainty`.
LEVEL_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
# A group whose sd is at most this (network scale) in half of its voxels counts as degenerate.
DEGENERATE_SD = 1e-6
# The sd floor of the scaled score, as a fraction of the group's median sd: keeps a voxel with sd 0 finite.
FLOOR_FRACTION = 0.01
MIN_VOXELS = 1000


def task_of(target: str, inputs: tuple[str, ...]) -> str:
    """Harmonisation when the target is among the inputs, else synthesis (Section 4.4.1)."""
    return "harmonisation" if target in inputs else "synthesis"


def level_key(level: float) -> str:
    """How a level is written in the model file (plain strings: the file holds no float keys)."""
    return f"{level:g}"


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile of `scores` at `level`: the ceil((n + 1) level)-th smallest score."""
    n = scores.size
    rank = math.ceil((n + 1) * level)
    if rank > n:
        raise InputError(f"{n} calibration voxels cannot give a {level:g} interval (need at least "
                         f"{math.ceil(level / (1 - level))})")
    return float(np.partition(scores, rank - 1)[rank - 1])


@dataclass
class GroupScale:
    """The fitted scale of one (target, task): `quantiles` maps a level key to q_a."""

    mode: str
    floor: float
    quantiles: dict[str, float]
    voxels: int

    def half_width(self, sd: np.ndarray, level: float) -> np.ndarray:
        q = self.quantiles.get(level_key(level))
        if q is None:
            raise InputError(f"no interval at level {level:g} in this calibration (it has "
                             f"{', '.join(sorted(self.quantiles, key=float))})")
        if self.mode == "absolute":
            return np.full_like(sd, q)
        return q * (sd + self.floor)


def fit_group(error: np.ndarray, sd: np.ndarray, levels: tuple[float, ...]) -> GroupScale:
    """The scale of one (target, task) from its calibration voxels: absolute errors and sample sds."""
    if error.size < MIN_VOXELS:
        raise InputError(f"{error.size} calibration voxels (need at least {MIN_VOXELS}); give more subjects")
    median_sd = float(np.median(sd))
    if median_sd <= DEGENERATE_SD:
        mode, floor, scores = "absolute", 0.0, error
    else:
        mode, floor = "scaled", FLOOR_FRACTION * median_sd
        scores = error / (sd + floor)
    quantiles = {level_key(a): conformal_quantile(scores, a) for a in sorted(set(levels) | set(LEVEL_GRID))}
    return GroupScale(mode, floor, quantiles, int(error.size))


@dataclass
class Calibration:
    """Scales with how they were made, stored in the model file under "calibration": `groups` per
    "target/task", `subsets` per "target/input subset" (e.g. "t2/us+flair")."""

    groups: dict[str, GroupScale]
    temperature: float
    samples: int
    levels: tuple[float, ...]
    provenance: dict[str, Any] = field(default_factory=dict)
    subsets: dict[str, GroupScale] = field(default_factory=dict)

    def scale(self, target: str, inputs: Subset) -> GroupScale:
        """The input subset's scale for `target`, else the pooled one of its task."""
        by_subset = self.subsets.get(subset_key(target, inputs))
        if by_subset is not None:
            return by_subset
        task = task_of(target, inputs)
        key = f"{target}/{task}"
        if key not in self.groups:
            raise InputError(f"this calibration has no scale for {target} ({task}); calibrate on subjects with it")
        return self.groups[key]

    def interval(self, mean: np.ndarray, sd: np.ndarray, target: str, inputs: Subset,
                 level: float = DEFAULT_LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(low, high, calibrated sd) at `level` for one target's mean and sample sd (network scale) when
        synthesised from `inputs`."""
        half = self.scale(target, inputs).half_width(sd, level)
        return mean - half, mean + half, half / central_interval_z(level)

    def to_dict(self) -> dict[str, Any]:
        return {"groups": {k: asdict(v) for k, v in self.groups.items()},
                "subsets": {k: asdict(v) for k, v in self.subsets.items()}, "temperature": self.temperature,
                "samples": self.samples, "levels": list(self.levels), "provenance": self.provenance}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Calibration:
        groups = {k: GroupScale(**v) for k, v in values["groups"].items()}
        subsets = {k: GroupScale(**v) for k, v in values.get("subsets", {}).items()}
        return cls(groups, float(values["temperature"]), int(values["samples"]), tuple(values["levels"]),
                   dict(values.get("provenance", {})), subsets)


def subset_key(target: str, inputs: Subset) -> str:
    """How the scale of `target` synthesised from `inputs` is named in a calibration."""
    return f"{target}/{subset_label(inputs)}"


def calibration_at(values: dict[str, Any] | None, temperature: float) -> Calibration | None:
    """The calibration a model file carries (`LoadedModel.calibration`) if it was made at this temperature."""
    if values is None:
        return None
    calibration = Calibration.from_dict(values)
    return calibration if calibration.temperature == temperature else None


def gaussian_interval(mean: np.ndarray, sd: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The uncalibrated interval mean +- z_a sd, reading the sample sd as a Gaussian error bar."""
    z = central_interval_z(level)
    return mean - z * sd, mean + z * sd


def check_level(level: float) -> None:
    """A --level option, or an input error."""
    if not (0 < level < 1):
        raise InputError(f"--level must lie between 0 and 1, got {level:g}")

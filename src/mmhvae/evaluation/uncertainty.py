"""How well uncertainty maps mean what they say: interval coverage and width, the rank correlation of the sd
with the error, and the sparsification error (Ilg et al., ECCV 2018), per subject, input subset and target.

All on the voxels that `evaluate` scores: inside the field of view, on the foreground slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr

from mmhvae.evaluation.tables import markdown_lines
from mmhvae.inference.calibration import DEFAULT_LEVEL, Calibration, gaussian_interval, task_of
from mmhvae.inference.synthesis import Synthesis
from mmhvae.modalities import subset_label
from mmhvae.preprocessing.prepare import PreparedSubject

UNCERTAINTY_FIELDS = ("subject", "method", "seed", "inputs", "target", "task", "voxels", "coverage",
                      "width", "raw_coverage", "raw_width", "spearman", "ause")
# Fractions of the voxels removed, most uncertain first, for the sparsification curves.
FRACTIONS = np.linspace(0.0, 0.99, 100)


def scored_voxels(prepared: PreparedSubject) -> np.ndarray:
    """[H, W, S] mask of the voxels a subject is scored on: its field of view on the foreground slices."""
    on_slices = np.zeros(prepared.fov.shape[-1], bool)
    on_slices[prepared.slices] = True
    return prepared.fov & on_slices


def sparsification_curve(error: np.ndarray, order_by: np.ndarray, fractions: np.ndarray = FRACTIONS) -> np.ndarray:
    """Mean absolute error of the voxels left after removing each fraction of them, largest `order_by` first."""
    ordered = error[np.argsort(order_by, kind="stable")]  # ascending: the kept voxels are a prefix
    cumulative = np.concatenate([[0.0], np.cumsum(ordered, dtype=np.float64)])
    kept = np.maximum(1, np.round((1.0 - fractions) * error.size).astype(int))
    return cumulative[kept] / kept


def ause(error: np.ndarray, sd: np.ndarray) -> float:
    """Area between the sparsification curve by `sd` and the oracle's (by the error itself), both divided by the
    mean absolute error of all voxels: 0 when the sd ranks the voxels as their errors do."""
    by_sd, oracle = sparsification_curve(error, sd), sparsification_curve(error, error)
    return float(np.trapezoid(by_sd - oracle, FRACTIONS) / max(error.mean(), 1e-12))


def interval_scores(target: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[float, float]:
    """(fraction of voxels whose target lies in [low, high], mean width) on the intensity scale t."""
    inside = (target >= low) & (target <= high)
    return float(inside.mean()), float((high - low).mean() / 2.0)  # the network's scale is twice t's


def uncertainty_rows(prepared: PreparedSubject, results: Sequence[Synthesis], modalities: Sequence[str],
                     method: str, seed: int, calibration: Calibration | None,
                     level: float = DEFAULT_LEVEL) -> list[dict]:
    """One row per (input subset, present target) of one subject: the interval's coverage and width at `level`
    (calibrated, NaN without a calibration), the uncalibrated Gaussian interval's, Spearman(sd, |error|) and
    the AUSE."""
    voxels = scored_voxels(prepared)
    present = [m for m, p in zip(modalities, prepared.present) if p]
    rows = []
    for result in results:
        for key in present:
            j = list(modalities).index(key)
            task = task_of(key, result.subset)
            mean, sd, target = result.mean[j][voxels], result.std[j][voxels], prepared.targets[j][voxels]
            error = np.abs(mean - target)
            raw = interval_scores(target, *gaussian_interval(mean, sd, level))
            calibrated = (float("nan"), float("nan"))
            if calibration is not None:
                low, high, _ = calibration.interval(mean, sd, key, result.subset, level)
                calibrated = interval_scores(target, low, high)
            rows.append({"subject": prepared.name, "method": method, "seed": seed,
                         "inputs": subset_label(result.subset), "target": key, "task": task,
                         "voxels": int(error.size), "coverage": calibrated[0], "width": calibrated[1],
                         "raw_coverage": raw[0], "raw_width": raw[1],
                         "spearman": float(spearmanr(sd, error).statistic) if sd.std() > 0 else float("nan"),
                         "ause": ause(error, sd)})
    return rows


SUMMARY_METRICS = ("coverage", "width", "raw_coverage", "raw_width", "spearman", "ause")


def over_subjects(rows: Sequence[dict], keys: Sequence[str], value: str) -> dict[tuple, tuple[float, float, int]]:
    """Per `keys`: (mean, sd, n) over subjects of each subject's mean of `value` (over its other rows: input
    subsets, training seeds), non-finite subject means left out (the subject is the unit)."""
    per_subject: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        per_subject.setdefault(tuple(r[k] for k in keys), {}).setdefault(r["subject"], []).append(float(r[value]))
    summary = {}
    for key, by_subject in per_subject.items():
        values = np.array([np.mean(v) for v in by_subject.values()])
        values = values[np.isfinite(values)]
        sd = float(values.std(ddof=1)) if values.size > 1 else float("nan")
        summary[key] = (float(values.mean()) if values.size else float("nan"), sd, int(values.size))
    return summary


def subject_summary(rows: Sequence[dict]) -> dict[tuple[str, str, str], dict[str, tuple[float, float, int]]]:
    """Per (method, target, task) and metric: (mean over subjects, sd over subjects, subjects), each subject's
    value being its mean over input subsets and training seeds (the subject is the unit)."""
    summary: dict[tuple[str, str, str], dict[str, tuple[float, float, int]]] = {}
    for metric in SUMMARY_METRICS:
        for key, entry in over_subjects(rows, ("method", "target", "task"), metric).items():
            summary.setdefault(key, {})[metric] = entry
    return summary


def uncertainty_table(rows: Sequence[dict], level: float = DEFAULT_LEVEL) -> str:
    """Markdown: per method, target and task, mean (sd over subjects) of the interval's coverage and width at
    `level`, calibrated and as a Gaussian reading of the raw sd, Spearman(sd, |error|) and the AUSE."""
    def cell(entry: tuple[float, float, int], digits: int = 3) -> str:
        mean, sd, n = entry
        return "n/a" if not n else f"{mean:.{digits}f} ({sd:.{digits}f})" if n > 1 else f"{mean:.{digits}f}"

    header = ["method", "target", "task", "subjects", f"coverage at {level:.0%}", "width",
              "Gaussian coverage", "Gaussian width", "Spearman(sd, abs. error)", "AUSE"]
    lines = markdown_lines(header, (
        [method, target, task, entry["ause"][2]] + [cell(entry[m]) for m in SUMMARY_METRICS]
        for (method, target, task), entry in sorted(subject_summary(rows).items())))
    return ("Mean (sd over subjects) of each subject's mean over input subsets; coverage: the fraction of scored "
            "voxels whose target lies in the interval; width: its mean full width on the intensity scale (0-1). "
            "Calibrated columns are n/a for an uncalibrated model (mmhvae calibrate); the Gaussian interval is "
            "mean +- z sd of the raw samples. AUSE: area between the sparsification curve by sd and the "
            "oracle's, relative to the mean absolute error (0 is a perfect ranking).\n\n" + "\n".join(lines) + "\n")

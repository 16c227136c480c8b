"""Statistics over the long table of scores: means and spreads per group, subject-level means with their
standard errors, and the paired Wilcoxon signed-rank tests that decide the bold entries of every table."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np


def summarise(rows: Iterable[dict], by: Sequence[str] = ("method", "inputs", "target")) -> dict[tuple, dict]:
    """Mean and standard deviation of each metric over the rows of each group (subject-slice pairs)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in by)].append(row)
    summary = {}
    for key, members in groups.items():
        entry = {"n": len(members), "task": members[0].get("task")}
        for name in ("psnr", "ssim", "lpips"):
            values = np.array([float(m[name]) for m in members], float)
            values = values[np.isfinite(values)]
            entry[name] = (float(values.mean()), float(values.std())) if values.size else (float("nan"),) * 2
        summary[key] = entry
    return summary


def standard_error(values: Sequence[float]) -> float:
    """Standard error of a mean (sample sd / sqrt(n)); nan below two finite values."""
    finite = np.asarray(values, float)
    finite = finite[np.isfinite(finite)]
    return float(finite.std(ddof=1) / np.sqrt(finite.size)) if finite.size >= 2 else float("nan")


def subject_means(rows: Iterable[dict], by: Sequence[str] = ("method", "inputs", "target")) -> dict[tuple, dict]:
    """Per group, the mean over subjects of each subject's mean over slices (each subject weighs the same),
    and its standard error over subjects (`psnr_se`, `ssim_se`): how far a bar-crossing is from chance."""
    per_subject = summarise(rows, ("subject", *by))
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for key, entry in per_subject.items():
        grouped[key[1:]].append(entry)
    means = {}
    for key, entries in grouped.items():
        entry = {"subjects": len(entries), "task": entries[0]["task"]}
        for metric in ("psnr", "ssim"):
            per_subject_means = [e[metric][0] for e in entries]
            entry[metric] = float(np.nanmean(per_subject_means))
            entry[f"{metric}_se"] = standard_error(per_subject_means)
        means[key] = entry
    return means


HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}
SIGNIFICANCE_LEVEL = 0.01
MINIMUM_PAIRS = 6  # with fewer pairs the exact two-sided signed-rank test cannot reach p < 0.05


def paired_p_value(first: Sequence[float], second: Sequence[float], comparisons: int = 1) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value of `first` against `second` (the same units in the same
    order), Bonferroni-corrected for `comparisons` tests (capped at 1); 1 when the pairs do not differ at all."""
    from scipy.stats import wilcoxon

    differences = np.asarray(first, float) - np.asarray(second, float)
    if len(differences) == 0 or np.all(differences == 0):
        return 1.0
    return min(1.0, float(wilcoxon(first, second, zero_method="wilcox").pvalue) * comparisons)


def values_by_cell(rows: Iterable[dict], metric: str, cell: Sequence[str],
                   unit: Sequence[str]) -> dict[tuple, dict[str, dict[tuple, float]]]:
    """Per cell of a table, per method, the finite value of `metric` of each unit (the pairing key)."""
    values: dict[tuple, dict[str, dict[tuple, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        value = float(r[metric])
        if np.isfinite(value):
            values[tuple(r[k] for k in cell)][r["method"]][tuple(str(r[k]) for k in unit)] = value
    return values


def beats_every_other(by_method: dict[str, dict[tuple, float]], method: str, higher_is_better: bool,
                      alpha: float) -> bool:
    """Whether `method` is better than each other method on the units they share: a better mean, at least
    MINIMUM_PAIRS pairs that are not all equal, and a paired test p < alpha, Bonferroni-corrected for the
    number of competitors."""
    sign = 1.0 if higher_is_better else -1.0
    others = [m for m in by_method if m != method]
    for other in others:
        keys = sorted(set(by_method[method]) & set(by_method[other]))
        a = np.array([by_method[method][k] for k in keys])
        b = np.array([by_method[other][k] for k in keys])
        if len(keys) < MINIMUM_PAIRS or np.allclose(a, b) or sign * (a.mean() - b.mean()) <= 0:
            return False
        if paired_p_value(a, b, comparisons=len(others)) >= alpha:
            return False
    return True


def significantly_best(rows: list[dict], metric: str, alpha: float = SIGNIFICANCE_LEVEL,
                       cell: Sequence[str] = ("inputs", "target"),
                       unit: Sequence[str] = ("subject", "slice")) -> set[tuple]:
    """(method, *cell) entries whose method beats every other method on that cell of the table.

    As in the paper: paired two-sided Wilcoxon signed-rank tests over the same units (by default the
    (subject, slice) pairs of one input combination and target), one per competing method,
    Bonferroni-corrected for the number of competitors, p < alpha; and a better mean.
    """
    best = set()
    for key, by_method in values_by_cell(rows, metric, cell, unit).items():
        if len(by_method) < 2:
            continue
        best |= {(method, *key) for method in by_method
                 if beats_every_other(by_method, method, HIGHER_IS_BETTER[metric], alpha)}
    return best


def significantly_lowest(values: dict[str, dict[tuple, float]], alpha: float) -> str | None:
    """The method of lowest mean value (e.g. registration error) if a paired test, uncorrected, puts it below
    every other method at p < alpha, else None. `values` maps method -> unit -> value; every method must have
    the units of the lowest one."""
    if len(values) < 2:
        return None
    lowest = min(values, key=lambda m: np.mean(list(values[m].values())))
    units = sorted(values[lowest])
    for other in values:
        if other == lowest:
            continue
        if paired_p_value([values[lowest][u] for u in units], [values[other][u] for u in units]) >= alpha:
            return None
    return lowest

"""TODO docstring."""

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


def significantly_best(rows: list[dict], metric: str, alpha: float = SIGNIFICANCE_LEVEL,
                       cell: Sequence[str] = ("inputs", "target"),
                       unit: Sequence[str] = ("subject", "slice")) -> set[tuple]:
    """(method, *cell) entries whose method beats every other method on that cell of the table.

    As in the paper: paired two-sided Wilcoxon signed-rank tests over the same units (by default the
    (subject, slice) pairs of one input combination and target), one per competing method,
    Bonferroni-corrected for the number of competitors, p < alpha; and a better mean.
    """
    from scipy.stats import wilcoxon

    values: dict[tuple, dict[str, dict[tuple, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        value = float(r[metric])
        if np.isfinite(value):
            values[tuple(r[k] for k in cell)][r["method"]][tuple(str(r[k]) for k in unit)] = value
    best = set()
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    for key, by_method in values.items():
        methods = list(by_method)
        if len(methods) < 2:
            continue
        for method in methods:
            wins = 0
            for other in methods:
                if other == method:
                    continue
                keys = sorted(set(by_method[method]) & set(by_method[other]))
                a = np.array([by_method[method][k] for k in keys])
                b = np.array([by_method[other][k] for k in keys])
                if len(keys) < 6 or np.allclose(a, b) or sign * (a.mean() - b.mean()) <= 0:
                    break
                if wilcoxon(a, b).pvalue * (len(methods) - 1) >= alpha:
                    break
                wins += 1
            if wins == len(methods) - 1:
                best.add((method, *key))
    return best

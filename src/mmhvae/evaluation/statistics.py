"""Statistics over the long table of scores, with the subject as the independent unit.

The long table has one row per (method, training seed, subject, slice, input subset, target). A cell of a
result table (one input subset and target, or a whole task) is summarised in three steps:
1. each subject's mean over the cell's rows (its slices, and the subsets and targets the cell pools);
2. for a method trained with several seeds, each subject's mean over the seeds, and the between-seed sd of the
   cohort mean (how much the result moves when the same method is trained again);
3. the mean and sd over subjects.
Two methods are compared on the same subjects: the two-sided paired Wilcoxon signed-rank test, corrected over
the comparisons of a cell (Holm by default, or Bonferroni), and the mean paired difference with a 95 % bootstrap
confidence interval over subjects. Slices are never the unit of a test: they are neither independent nor
what a reader generalises to.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import bootstrap, wilcoxon

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}
SIGNIFICANCE_LEVEL = 0.01
CORRECTIONS = ("holm", "bonferroni")
CONFIDENCE_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # the intervals of a page are reproducible


def summarise(rows: Iterable[dict], by: Sequence[str] = ("method", "inputs", "target")) -> dict[tuple, dict]:
    """Mean and standard deviation of each metric over the rows of each group (no unit implied)."""
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


def sample_sd(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof 1); nan below two values."""
    values = np.asarray(values, float)
    return float(values.std(ddof=1)) if values.size >= 2 else float("nan")


def seed_of(row: Mapping) -> int:
    """The training seed of a row (rows of a single model carry none: seed 0)."""
    value = row.get("seed")
    return 0 if value in (None, "") else int(value)


@dataclass(frozen=True)
class Scores:
    """One method's values in one cell: per training seed, per subject, the mean over the cell's rows."""

    by_seed: Mapping[int, Mapping[str, float]]

    @property
    def seeds(self) -> list[int]:
        return sorted(self.by_seed)

    @property
    def subjects(self) -> list[str]:
        """The subjects scored under every seed (the others cannot be averaged over seeds)."""
        return sorted(set.intersection(*(set(s) for s in self.by_seed.values())))

    def per_subject(self) -> dict[str, float]:
        """Each subject's mean over the seeds."""
        return {s: float(np.mean([self.by_seed[seed][s] for seed in self.seeds])) for s in self.subjects}

    @property
    def n(self) -> int:
        return len(self.subjects)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.per_subject().values()))) if self.n else float("nan")

    @property
    def sd(self) -> float:
        """Standard deviation over subjects of their seed-averaged means."""
        return sample_sd(list(self.per_subject().values()))

    @property
    def seed_sd(self) -> float:
        """Between-seed standard deviation of the cohort mean (nan with one seed)."""
        return sample_sd([np.mean([self.by_seed[seed][s] for s in self.subjects]) for seed in self.seeds])


def cell_scores(rows: Iterable[dict], metric: str, cell: Sequence[str]) -> dict[tuple, dict[str, Scores]]:
    """Per cell (the values of the `cell` columns), per method, its Scores for `metric` (finite values only)."""
    sums: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0])
    for row in rows:
        value = float(row[metric])
        if math.isfinite(value):
            entry = sums[(tuple(row[k] for k in cell), row["method"], seed_of(row), str(row["subject"]))]
            entry[0] += value
            entry[1] += 1
    nested: dict[tuple, dict[str, dict[int, dict[str, float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(dict)))
    for (key, method, seed, subject), (total, count) in sums.items():
        nested[key][method][seed][subject] = total / count
    return {key: {method: Scores(dict(seeds)) for method, seeds in methods.items()} for key, methods in nested.items()}


# ----- paired tests -----------------------------------------------------------------------------------------


def paired_p_value(first: Sequence[float], second: Sequence[float]) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value (zero differences dropped); 1 when no pair differs."""
    differences = np.asarray(first, float) - np.asarray(second, float)
    if not np.any(differences != 0):
        return 1.0
    return float(wilcoxon(differences, zero_method="wilcox").pvalue)


def corrected(p_values: Sequence[float], correction: str = "holm") -> list[float]:
    """p-values adjusted for the family of tests they form: Holm's step-down (default) or Bonferroni."""
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r} ({', '.join(CORRECTIONS)})")
    p = np.asarray(p_values, float)
    if correction == "bonferroni":
        return list(np.minimum(1.0, p * p.size))
    order = np.argsort(p, kind="stable")
    steps = np.minimum(1.0, p[order] * (p.size - np.arange(p.size)))
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(steps)
    return list(adjusted)


def smallest_attainable_p(subjects: int) -> float:
    """The smallest two-sided p the exact signed-rank test can give with `subjects` pairs: every difference of
    one sign, 2 / 2^n."""
    return 2.0 / 2.0**subjects if subjects > 0 else 1.0


def can_reach(subjects: int, comparisons: int, alpha: float) -> bool:
    """Whether a family of `comparisons` tests over `subjects` pairs can all come out below `alpha`; Holm and
    Bonferroni alike need the smallest p times the number of comparisons below alpha."""
    return smallest_attainable_p(subjects) * max(1, comparisons) < alpha


def bootstrap_ci(differences: Sequence[float], level: float = CONFIDENCE_LEVEL,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean of paired differences over subjects (BCa; percentile where
    BCa is undefined); (nan, nan) below two subjects; the value itself when every difference is the same."""
    d = np.asarray(differences, float)
    if d.size < 2:
        return float("nan"), float("nan")
    if np.ptp(d) == 0:
        return float(d[0]), float(d[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa on a handful of subjects warns where it falls back
        for method in ("BCa", "percentile"):
            result = bootstrap((d,), np.mean, confidence_level=level, n_resamples=resamples, method=method,
                               rng=np.random.default_rng(seed))
            low, high = result.confidence_interval
            if np.isfinite(low) and np.isfinite(high):
                return float(low), float(high)
    return float("nan"), float("nan")


@dataclass(frozen=True)
class Comparison:
    """`first` against `second` on the subjects both were scored on: difference = first - second."""

    first: str
    second: str
    subjects: int
    seeds: int
    difference: float
    ci: tuple[float, float]
    p: float
    seed_sd: float  # between-seed sd of the cohort-mean difference (nan with one common seed)
    p_corrected: float = float("nan")


def compare(first: str, a: Scores, second: str, b: Scores, with_ci: bool = True) -> Comparison:
    """The paired comparison of two methods' Scores in one cell (p uncorrected)."""
    x, y = a.per_subject(), b.per_subject()
    subjects = sorted(set(x) & set(y))
    differences = np.array([x[s] - y[s] for s in subjects])
    seeds = sorted(set(a.seeds) & set(b.seeds))
    seed_differences = [np.mean([a.by_seed[seed][s] - b.by_seed[seed][s] for s in subjects]) for seed in seeds]
    return Comparison(first, second, len(subjects), len(seeds),
                      float(differences.mean()) if subjects else float("nan"),
                      bootstrap_ci(differences) if with_ci else (float("nan"), float("nan")),
                      paired_p_value(differences, np.zeros_like(differences)), sample_sd(seed_differences))


def against_reference(reference: str, by_method: Mapping[str, Scores], correction: str = "holm",
                      with_ci: bool = True) -> list[Comparison]:
    """`reference` against every other method of a cell, with the p-values corrected over those comparisons."""
    found = [compare(reference, by_method[reference], other, scores, with_ci)
             for other, scores in by_method.items() if other != reference]
    adjusted = corrected([c.p for c in found], correction) if found else []
    return [Comparison(**{**c.__dict__, "p_corrected": p}) for c, p in zip(found, adjusted)]


def best_method(by_method: Mapping[str, Scores], higher_is_better: bool) -> str:
    """The method of the best seed-averaged cohort mean."""
    sign = 1.0 if higher_is_better else -1.0
    return max(by_method, key=lambda m: sign * by_method[m].mean if math.isfinite(by_method[m].mean) else -math.inf)


def significantly_better_than_all(by_method: Mapping[str, Scores], higher_is_better: bool, alpha: float,
                                  correction: str = "holm") -> str | None:
    """The best method of a cell if it beats each other one: a better mean over the shared subjects and a
    corrected p < alpha in every comparison; else None."""
    if len(by_method) < 2:
        return None
    best = best_method(by_method, higher_is_better)
    sign = 1.0 if higher_is_better else -1.0
    for c in against_reference(best, by_method, correction, with_ci=False):
        if not (c.subjects >= 2 and sign * c.difference > 0 and c.p_corrected < alpha):
            return None
    return best


def significantly_best(rows: list[dict], metric: str, alpha: float = SIGNIFICANCE_LEVEL,
                       cell: Sequence[str] = ("inputs", "target"), correction: str = "holm") -> set[tuple]:
    """(method, *cell) entries whose method beats every other method of that cell of the table, the unit being
    the subject (`significantly_better_than_all`)."""
    best = set()
    for key, by_method in cell_scores(rows, metric, cell).items():
        winner = significantly_better_than_all(by_method, HIGHER_IS_BETTER[metric], alpha, correction)
        if winner is not None:
            best.add((winner, *key))
    return best


def significantly_lowest(values: Mapping[str, Mapping[str, float]], alpha: float,
                         correction: str = "holm") -> str | None:
    """The method of lowest mean (e.g. a registration error) when it is below every other one on the subjects:
    `values` maps method -> subject -> the subject's mean."""
    scores = {method: Scores({0: dict(per_subject)}) for method, per_subject in values.items()}
    return significantly_better_than_all(scores, higher_is_better=False, alpha=alpha, correction=correction)


def reach_note(rows: list[dict], cell: Sequence[str], metric: str, alpha: float,
               correction: str = "holm") -> str:
    """A sentence for a table's caption when some cell cannot reach significance with its subjects, whatever
    the differences (empty when every cell can)."""
    worst = None
    for by_method in cell_scores(rows, metric, cell).values():
        if len(by_method) < 2:
            continue
        subjects = min(s.n for s in by_method.values())
        if not can_reach(subjects, len(by_method) - 1, alpha) and (worst is None or subjects < worst[0]):
            worst = (subjects, len(by_method) - 1)
    if worst is None:
        return ""
    subjects, comparisons = worst
    smallest = smallest_attainable_p(subjects)
    return (f"With {subjects} subject{'s' * (subjects != 1)}, the smallest p a two-sided signed-rank test can "
            f"reach is {smallest:.2g}, {smallest * comparisons:.2g} after {correction.capitalize()}'s correction "
            f"for {comparisons} comparison{'s' * (comparisons != 1)}: not below {alpha:g}, so no entry can be bold "
            "whatever the differences; more subjects are needed for a test.")


def subject_means(rows: Iterable[dict], by: Sequence[str] = ("method", "inputs", "target")) -> dict[tuple, dict]:
    """Per group, the mean over subjects of each subject's (seed-averaged) mean, and its standard error over
    subjects (`psnr_se`, `ssim_se`): how far a bar-crossing is from chance."""
    rows = list(rows)
    means: dict[tuple, dict] = {}
    cell = [k for k in by if k != "method"]
    tasks = {tuple(r[k] for k in by): r.get("task") for r in rows}
    for metric in ("psnr", "ssim"):
        for key, by_method in cell_scores(rows, metric, cell).items():
            for method, scores in by_method.items():
                group = tuple(method if k == "method" else key[cell.index(k)] for k in by)
                entry = means.setdefault(group, {"subjects": scores.n, "task": tasks.get(group)})
                entry[metric] = scores.mean
                entry[f"{metric}_se"] = standard_error(list(scores.per_subject().values()))
    return means

"""Do the uncertainty maps mean what they say? A reliability diagram (the intervals' coverage against their
nominal level) and sparsification curves (Ilg et al., ECCV 2018), on held-out subjects with ground truth.

Every subject is synthesised from every non-empty subset of its modalities with K samples, as `evaluate
--samples K` does, and scored on the voxels `evaluate` scores. The intervals are the calibrated ones of the
model file (`mmhvae calibrate`) at every level it stores, and beside them the Gaussian reading of the raw sd
(mean +- z sd). The subject is the unit: each subject's value is its mean over input subsets; the figures and
tables give the mean and sd over subjects.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmhvae.errors import InputError
from mmhvae.evaluation.scoring import prepared_for_evaluation
from mmhvae.evaluation.tables import markdown_lines
from mmhvae.evaluation.uncertainty import (
    FRACTIONS,
    ause,
    interval_scores,
    over_subjects,
    scored_voxels,
    sparsification_curve,
)
from mmhvae.experiments.analyses.common import (
    AnalysisResult,
    load_model,
    pyplot,
    refuse_to_overwrite_analysis,
    save_figure,
)
from mmhvae.inference.calibration import (
    DEFAULT_LEVEL,
    LEVEL_GRID,
    TASKS,
    Calibration,
    calibration_at,
    gaussian_interval,
    task_of,
)
from mmhvae.inference.synthesis import DEFAULT_TEMPERATURE, Synthesis, check_sampling, synthesise
from mmhvae.io.files import write_csv_atomic, write_text_atomic
from mmhvae.io.layouts import discover_subjects
from mmhvae.modalities import ModalitySet, non_empty_subsets, subset_label
from mmhvae.preprocessing.prepare import PreparedSubject

log = logging.getLogger(__name__)

UNCERTAINTY_OUTPUTS = ("uncertainty_reliability.png", "uncertainty_sparsification.png",
                       "uncertainty_coverage.csv", "uncertainty_sparsification.csv", "uncertainty.md")
COVERAGE_FIELDS = ("subject", "inputs", "target", "task", "level", "coverage", "gaussian_coverage")
CURVE_FIELDS = ("subject", "inputs", "target", "task", "fraction", "by_sd", "oracle")


def analysis_levels(calibration: Calibration | None) -> tuple[float, ...]:
    """The calibration's stored levels, or the grid alone for the Gaussian reading of an uncalibrated model."""
    if calibration is None:
        return LEVEL_GRID
    stored = next(iter(calibration.groups.values())).quantiles
    return tuple(sorted(float(k) for k in stored))


def subject_rows(prepared: PreparedSubject, results: Sequence[Synthesis], modalities: Sequence[str],
                 calibration: Calibration | None, levels: Sequence[float]) -> tuple[list[dict], list[dict], list[dict]]:
    """Coverage rows (per input subset, target and level), sparsification rows (per input subset, target and
    fraction removed: the mean absolute error left, relative to that of all voxels) and AUSE rows (per input
    subset and target) of one subject."""
    voxels = scored_voxels(prepared)
    present = [m for m, p in zip(modalities, prepared.present) if p]
    coverage, curves, auses = [], [], []
    for result in results:
        for key in present:
            j = list(modalities).index(key)
            mean, sd, target = result.mean[j][voxels], result.std[j][voxels], prepared.targets[j][voxels]
            common = {"subject": prepared.name, "inputs": subset_label(result.subset), "target": key,
                      "task": task_of(key, result.subset)}
            for level in levels:
                calibrated = math.nan
                if calibration is not None:
                    calibrated = interval_scores(target, *calibration.interval(mean, sd, key, result.subset,
                                                                               level)[:2])[0]
                gaussian = interval_scores(target, *gaussian_interval(mean, sd, level))[0]
                coverage.append({**common, "level": level, "coverage": calibrated, "gaussian_coverage": gaussian})
            error = np.abs(mean - target)
            mae = max(float(error.mean()), 1e-12)
            by_sd, oracle = sparsification_curve(error, sd) / mae, sparsification_curve(error, error) / mae
            curves += [{**common, "fraction": float(f), "by_sd": float(a), "oracle": float(b)}
                       for f, a, b in zip(FRACTIONS, by_sd, oracle)]
            auses.append({**common, "ause": ause(error, sd)})
    return coverage, curves, auses


def reliability_figure(png: Path, coverage: Sequence[dict], calibrated: bool) -> Path:
    """One panel per task: observed against nominal coverage per target, error bars the sd over subjects."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(TASKS), figsize=(4.2 * len(TASKS), 4.0), squeeze=False)
    readings = [("coverage", "calibrated", "-")] if calibrated else []
    readings.append(("gaussian_coverage", "Gaussian, raw sd", ":"))
    targets = list(dict.fromkeys(r["target"] for r in coverage))
    for ax, task in zip(axes[0], TASKS):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, label="ideal")
        for value, label, style in readings:
            summary = over_subjects([r for r in coverage if r["task"] == task], ("target", "level"), value)
            for i, target in enumerate(targets):
                points = sorted((lvl, entry) for (t, lvl), entry in summary.items() if t == target)
                if not points:
                    continue
                ax.errorbar([p[0] for p in points], [p[1][0] for p in points], yerr=[p[1][1] for p in points],
                            linestyle=style, marker="o", markersize=3, capsize=2, color=f"C{i}",
                            label=f"{target}, {label}")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal level", ylabel="observed coverage", title=task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, png)


def sparsification_figure(png: Path, curves: Sequence[dict]) -> Path:
    """One panel per target: the error left against the fraction removed, by sd and by the error (oracle)."""
    plt = pyplot()
    targets = list(dict.fromkeys(r["target"] for r in curves))
    fig, axes = plt.subplots(1, len(targets), figsize=(3.4 * len(targets), 3.2), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for i, task in enumerate(TASKS):
            rows = [r for r in curves if r["target"] == target and r["task"] == task]
            for value, style in (("by_sd", "-"), ("oracle", ":")):
                summary = sorted(over_subjects(rows, ("fraction",), value).items())
                if summary:
                    ax.plot([k[0] for k, _ in summary], [e[0] for _, e in summary], style, color=f"C{i}",
                            label=f"{task}, {'by sd' if value == 'by_sd' else 'oracle'}")
        ax.set(xlabel="fraction of voxels removed (most uncertain first)", ylabel="MAE left / MAE", title=target)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, png)


def uncertainty_markdown(coverage: Sequence[dict], auses: Sequence[dict], levels: Sequence[float],
                         calibrated: bool, settings: str) -> str:
    """The page: coverage per level and per input subset at 0.9, and the AUSE (mean (sd) over subjects)."""
    value = "coverage" if calibrated else "gaussian_coverage"
    summary = over_subjects(coverage, ("target", "task", "level"), value)
    cell = "{0:.3f} ({1:.3f})".format
    groups = sorted({(t, task) for t, task, _ in summary})
    lines = ["# Reliability and sparsification of the uncertainty maps", "", settings, "",
             f"Observed coverage of the {'calibrated' if calibrated else 'Gaussian (raw sd)'} intervals at each "
             "nominal level: mean (sd over subjects) of each subject's mean over input subsets.", ""]
    if DEFAULT_LEVEL in levels:
        lines += [coverage_sentence({g: summary[(*g, DEFAULT_LEVEL)][0] for g in groups}, calibrated), ""]
        if calibrated:
            raw = over_subjects(coverage, ("target", "task", "level"), "gaussian_coverage")
            lines += [coverage_sentence({g: raw[(*g, DEFAULT_LEVEL)][0] for g in groups}, False), ""]
    lines += markdown_lines(["target", "task", *(f"{lvl:g}" for lvl in levels)],
                            ([t, task, *(cell(*summary[t, task, lvl][:2]) for lvl in levels)] for t, task in groups))
    by_group = over_subjects(auses, ("target", "task"), "ause")
    lines += ["", "AUSE: area between the sparsification curve by sd and the oracle's, relative to the mean "
              "absolute error (0: the sd ranks the voxels as their errors do).", ""]
    lines += markdown_lines(["target", "task", "AUSE", "subjects"],
                            ([t, task, cell(*by_group[t, task][:2]), by_group[t, task][2]] for t, task in groups))
    if DEFAULT_LEVEL in levels:
        by_subset = over_subjects([r for r in coverage if r["level"] == DEFAULT_LEVEL],
                                  ("target", "task", "inputs"), value)
        lines += ["", f"Coverage at {DEFAULT_LEVEL:g} per input subset (mean (sd) over subjects):", ""]
        lines += markdown_lines(["target", "task", "inputs", "coverage"],
                                ([t, task, inputs, cell(*entry[:2])] for (t, task, inputs), entry
                                 in sorted(by_subset.items())))
    return "\n".join(lines) + "\n"


def coverage_sentence(coverage: dict[tuple[str, str], float], calibrated: bool, tolerance: float = 0.02) -> str:
    """What the page's coverage at the default level says, from its numbers: range, and groups within tolerance."""
    values = list(coverage.values())
    within = [g for g, c in coverage.items() if abs(c - DEFAULT_LEVEL) <= tolerance]
    outside = ", ".join(f"{t} {task} {c:.3f}" for (t, task), c in sorted(coverage.items()) if (t, task) not in within)
    reading = "calibrated" if calibrated else "Gaussian (raw sd)"
    return (f"At level {DEFAULT_LEVEL:g} the {reading} intervals cover {min(values):.3f} to {max(values):.3f} of the "
            f"scored voxels (mean over subjects) across the {len(values)} (target, task) groups; {len(within)} of "
            f"{len(values)} lie within {tolerance:g} of the level" + (f" (outside: {outside})." if outside else "."))


def analyse_uncertainty(model: Path, data: Path, out: Path, samples: int = 8,
                        temperature: float = DEFAULT_TEMPERATURE, seed: int = 0, device: str = "cpu",
                        overwrite: bool = False) -> AnalysisResult:
    """The reliability diagram and sparsification curves of `model` on the subjects of `data` (held out from
    its training and its calibration). Writes the five UNCERTAINTY_OUTPUTS into `out`; returns the coverage
    rows."""
    check_sampling(temperature, samples)
    if samples < 2:
        raise InputError(f"--samples must be at least 2 for uncertainty maps (the sd of K samples), got {samples}")
    out = Path(out)
    outputs = [out / name for name in UNCERTAINTY_OUTPUTS]
    refuse_to_overwrite_analysis(outputs, overwrite)
    loaded = load_model(model, device)
    calibration = calibration_at(loaded.calibration, temperature)
    if calibration is None:
        log.warning(f"{model}: no calibration at temperature {temperature:g} (mmhvae calibrate); showing the "
                    "Gaussian reading of the raw sd only")
    levels = analysis_levels(calibration)
    modalities = ModalitySet(loaded.modalities)
    coverage, curves, auses = [], [], []
    for files in discover_subjects(data):
        prepared = prepared_for_evaluation(files, loaded)
        present = modalities.from_indicator(prepared.present.astype(int))
        results = synthesise(loaded.model, prepared, non_empty_subsets(present), temperature, samples,
                             generator_seed=seed)
        found = subject_rows(prepared, results, loaded.modalities, calibration, levels)
        coverage, curves, auses = coverage + found[0], curves + found[1], auses + found[2]
        log.info(f"{files.name}: {len(results)} input subsets, {len(present)} targets")
    settings = (f"{model} on {len({r['subject'] for r in coverage})} subjects of {data}; {samples} samples at "
                f"temperature {temperature:g}, seed {seed}; scored inside the field of view on foreground slices.")
    reliability_png, sparsification_png, coverage_csv, curves_csv, page = outputs
    reliability_figure(reliability_png, coverage, calibration is not None)
    sparsification_figure(sparsification_png, curves)
    write_csv_atomic(coverage_csv, coverage, COVERAGE_FIELDS)
    write_csv_atomic(curves_csv, curves, CURVE_FIELDS)
    write_text_atomic(page, uncertainty_markdown(coverage, auses, levels, calibration is not None, settings))
    return AnalysisResult(coverage, outputs)

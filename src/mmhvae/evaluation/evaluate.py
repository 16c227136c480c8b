"""Evaluation of unified synthesis: every input subset x every target, per slice, inside the FOV.

For each test subject, each non-empty subset of its present modalities is fed to the model and every
modality with ground truth is scored against its harmonised target (Section 4.4.1): *harmonisation* when
the target is among the inputs, *synthesis* when it is not. Metrics are computed per 2D slice on the
network's scale (data range 2; SSIM with the background as zero intensity, see `mmhvae.evaluation.metrics`), inside
the field of view.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from mmhvae.errors import InputError, refuse_to_overwrite
from mmhvae.evaluation.scoring import (
    CSV_FIELDS,
    evaluation_scores,
    load_models,
    model_labels,
    prepared_for_evaluation,
    training_mean_images,
)
from mmhvae.evaluation.statistics import CORRECTIONS
from mmhvae.evaluation.tables import floor_comparison, markdown_table, method_summary, paired_differences
from mmhvae.evaluation.uncertainty import UNCERTAINTY_FIELDS, uncertainty_table
from mmhvae.inference.calibration import DEFAULT_LEVEL, check_level
from mmhvae.inference.synthesis import DEFAULT_TEMPERATURE, check_sampling
from mmhvae.io.files import write_csv_atomic, write_text_atomic
from mmhvae.io.layouts import SubjectFiles, discover_subjects
from mmhvae.io.subjects import read_every_subject_first

log = logging.getLogger(__name__)


def write_csv(path: Path, rows: list[dict]) -> None:
    """The long table of scores (CSV_FIELDS)."""
    write_csv_atomic(path, rows, CSV_FIELDS)


def results_text(rows: list[dict], modalities: Sequence[str], with_lpips: bool = True,
                 correction: str = "holm") -> str:
    """Table I, then, with several methods, the per-method summary and the paired differences of the first
    method against each other one, and, with the mean-image floor, each method's margin over it."""
    metric_names = ("psnr", "ssim", "lpips") if with_lpips else ("psnr", "ssim")
    text = markdown_table(rows, list(modalities), metric_names, correction=correction) + "\n"
    names = list(dict.fromkeys(r["method"] for r in rows))
    if len(names) > 1:
        text += ("\n## Mean synthesis and harmonisation scores per method\n\n"
                 + method_summary(rows, metric_names, correction=correction) + "\n")
    if len([n for n in names if n != "mean-image"]) > 1:
        text += (f"\n## Paired differences: {names[0]} against each other method\n\n"
                 + paired_differences(rows, names[0], metric_names, correction) + "\n")
        for name in names:
            if name != "mean-image":
                text += (f"\n## {name}: subject-averaged scores and margin over the mean-image floor\n\n"
                         "SSIM SE: standard error of the mean over subjects (sample sd / sqrt(subjects)).\n\n"
                         + floor_comparison(rows, name) + "\n")
    return text


def write_results(out: Path, rows: list[dict], modalities: Sequence[str], with_lpips: bool = True,
                  preamble: str = "", correction: str = "holm", appendix: str = "") -> None:
    """metrics.csv (long table) and table.md (`results_text`, then `appendix`)."""
    if not rows:
        raise InputError("no subject had a modality of the model", out)
    write_csv(out / "metrics.csv", rows)
    write_text_atomic(out / "table.md", preamble + results_text(rows, modalities, with_lpips, correction) + appendix)
    log.info(f"wrote {out / 'metrics.csv'} and {out / 'table.md'}")


def check_correction(correction: str) -> None:
    """The --correction option, or an input error."""
    if correction not in CORRECTIONS:
        raise InputError(f"--correction: unknown {correction!r} (choose {' or '.join(CORRECTIONS)})")


def note_targets_from_inputs(subjects: Sequence[SubjectFiles]) -> None:
    """Say when scores are against targets harmonised from the inputs themselves (real data) rather than given."""
    own = [f.name for f in subjects if not f.targets]
    if own:
        log.info(f"note: {len(own)} of {len(subjects)} subjects ({', '.join(own[:3])}{', ...' if len(own) > 3 else ''})"
                 " have no targets/ folder: their targets are their own images, harmonised (Section 4.4.1; white "
                 "matter from tissue.nii.gz, else by clustering)")


def settings_line(temperature: float, samples: int) -> str:
    """How the predictions of a table were drawn, for its first line."""
    drawn = "one sample" if samples == 1 else f"the mean of {samples} samples"
    return f"Predictions at temperature {temperature:g}, {drawn} each.\n\n"


def evaluate(model: str | Path | Sequence[str | Path], data: str | Path, out: str | Path,
             temperature: float = DEFAULT_TEMPERATURE, with_lpips: bool = True, method: str | None = None,
             overwrite: bool = False, mean_image_from: str | Path | None = None, samples: int = 1,
             correction: str = "holm", level: float = DEFAULT_LEVEL) -> list[dict]:
    """The `mmhvae evaluate` job: long CSV and Table I-style Markdown for every test subject in `data`.

    `model` may be several model files (methods compared in one table, with the paired tests); each is named
    by the method it was trained with, or `method` for a single model. `mean_image_from` (a training data
    folder) adds the mean-image baseline computed on it. `samples` > 1 scores the mean of that many samples per
    prediction (at `temperature`); table.md names both settings. Models of one method trained with different
    seeds are pooled per subject; the paired tests over subjects are corrected by `correction` (holm or
    bonferroni). With several samples, uncertainty.csv and a section of table.md score the uncertainty maps
    (`evaluation.uncertainty`) at `level`.
    """
    check_sampling(temperature, samples)
    check_level(level)
    check_correction(correction)
    out = Path(out)
    refuse_to_overwrite(out, overwrite, exists=(out / "metrics.csv").exists(),
                        problem="the output folder already has results")
    paths = [Path(model)] if isinstance(model, (str, Path)) else [Path(m) for m in model]
    models = load_models(paths)
    labels = model_labels(paths, models)
    if method is not None and len(models) == 1:
        labels = [(method, labels[0][1])]
    subjects = discover_subjects(data)
    read_every_subject_first(subjects, lambda files: prepared_for_evaluation(files, models[0]))
    note_targets_from_inputs(subjects)
    mean = None if mean_image_from is None else training_mean_images(discover_subjects(mean_image_from), models[0])
    rows, uncertainty = evaluation_scores(models, labels, subjects, temperature, with_lpips, mean, samples, level)
    if not rows:
        raise InputError("no subject had a modality of the model", data)
    if uncertainty:  # before table.md, whose presence marks a finished evaluation
        write_csv_atomic(out / "uncertainty.csv", uncertainty, UNCERTAINTY_FIELDS)
    write_results(out, rows, models[0].modalities, with_lpips, settings_line(temperature, samples), correction,
                  uncertainty_section(uncertainty, level))
    return rows


def uncertainty_section(rows: list[dict], level: float) -> str:
    """The section of table.md on the uncertainty maps (empty without samples)."""
    return f"\n## Uncertainty of the samples\n\n{uncertainty_table(rows, level)}" if rows else ""

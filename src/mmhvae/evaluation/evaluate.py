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
    evaluation_rows,
    load_models,
    method_names,
    prepared_for_evaluation,
    training_mean_images,
)
from mmhvae.evaluation.tables import floor_comparison, markdown_table, method_summary
from mmhvae.inference.synthesis import DEFAULT_TEMPERATURE, check_sampling
from mmhvae.io.files import write_csv_atomic, write_text_atomic
from mmhvae.io.layouts import SubjectFiles, discover_subjects
from mmhvae.io.subjects import read_every_subject_first

log = logging.getLogger(__name__)


def write_csv(path: Path, rows: list[dict]) -> None:
    """The long table of scores (CSV_FIELDS)."""
    write_csv_atomic(path, rows, CSV_FIELDS)


def write_results(out: Path, rows: list[dict], modalities: Sequence[str], with_lpips: bool = True,
                  preamble: str = "") -> None:
    """metrics.csv (long table) and table.md (Table I layout, plus the margin over the floor when present)."""
    if not rows:
        raise InputError("no subject had a modality of the model", out)
    write_csv(out / "metrics.csv", rows)
    metric_names = ("psnr", "ssim", "lpips") if with_lpips else ("psnr", "ssim")
    text = preamble + markdown_table(rows, list(modalities), metric_names) + "\n"
    names = list(dict.fromkeys(r["method"] for r in rows))
    if "mean-image" in names:
        text += ("\n## Mean synthesis and harmonisation scores per method\n\n" + method_summary(rows, metric_names)
                 + "\n")
        for name in names:
            if name != "mean-image":
                text += (f"\n## {name}: subject-averaged scores and margin over the mean-image floor\n\n"
                         "SSIM SE: standard error of the mean over subjects (sample sd / sqrt(subjects)).\n\n"
                         + floor_comparison(rows, name) + "\n")
    write_text_atomic(out / "table.md", text)
    log.info(f"wrote {out / 'metrics.csv'} and {out / 'table.md'}")


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
             overwrite: bool = False, mean_image_from: str | Path | None = None, samples: int = 1) -> list[dict]:
    """The `mmhvae evaluate` job: long CSV and Table I-style Markdown for every test subject in `data`.

    `model` may be several model files (methods compared in one table, with the paired tests); each is named
    by the method it was trained with, or `method` for a single model. `mean_image_from` (a training data
    folder) adds the mean-image baseline computed on it. `samples` > 1 scores the mean of that many samples per
    prediction (at `temperature`); table.md names both settings.
    """
    check_sampling(temperature, samples)
    out = Path(out)
    refuse_to_overwrite(out, overwrite, exists=(out / "metrics.csv").exists(),
                        problem="the output folder already has results")
    paths = [Path(model)] if isinstance(model, (str, Path)) else [Path(m) for m in model]
    models = load_models(paths)
    names = [method] if method is not None and len(models) == 1 else method_names(paths, models)
    subjects = discover_subjects(data)
    read_every_subject_first(subjects, lambda files: prepared_for_evaluation(files, models[0]))
    note_targets_from_inputs(subjects)
    mean = None if mean_image_from is None else training_mean_images(discover_subjects(mean_image_from), models[0])
    rows = evaluation_rows(models, names, subjects, temperature, with_lpips, mean, samples)
    if not rows:
        raise InputError("no subject had a modality of the model", data)
    write_results(out, rows, models[0].modalities, with_lpips, preamble=settings_line(temperature, samples))
    return rows

"""`mmhvae demo`: the main job on the embedded default, end to end, in a few minutes on a laptop CPU.

1. Simulate a small phantom cohort with a seed never used in training (complete modalities, so every
   synthesis has a ground truth).
2. With the shipped model (`models/phantom-tiny.pt`), predict every modality from every input subset for
   one subject, at temperature 0.5.
3. Write the predictions as NIfTI, a figure like the paper's Fig. 3 (rows: input subsets and the ground
   truth; columns: modalities) and a PSNR/SSIM table inside the ultrasound field of view.
4. Draw 8 samples of T2 from the ultrasound alone and show their mean, sd and 90 % interval (calibrated when
   the model file carries a calibration, `mmhvae calibrate`) next to the error, with the interval's coverage.
5. Gather it all in report.html, a page of synchronised in-browser viewers (`mmhvae view`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from mmhvae.errors import InputError
from mmhvae.evaluation.figures import IMAGE, MASK, SPREAD, fig3_grid, uncertainty_row
from mmhvae.evaluation.scoring import evaluate_subject
from mmhvae.evaluation.tables import markdown_table
from mmhvae.evaluation.uncertainty import interval_scores, scored_voxels
from mmhvae.inference.calibration import DEFAULT_LEVEL, calibration_at, gaussian_interval
from mmhvae.inference.predict import calibrated, write_synthesis
from mmhvae.inference.synthesis import DEFAULT_TEMPERATURE, synthesise
from mmhvae.io.files import write_text_atomic
from mmhvae.io.layouts import discover_subjects
from mmhvae.io.subjects import load_subject
from mmhvae.io.volumes import Volume
from mmhvae.modalities import ModalitySet, subset_label
from mmhvae.model_file import LoadedModel, load_model_file
from mmhvae.phantom.cohort import simulate_cohort
from mmhvae.preprocessing.prepare import PreparedSubject, load_prepared
from mmhvae.viewer.page import build_view

log = logging.getLogger(__name__)

DEMO_SEED = 9_000  # the shipped model was trained on seeds < 1000 (models/README.md)
SHIPPED_MODEL = "models/phantom-tiny.pt"
UNCERTAINTY_EXAMPLE = (("us",), "t2")  # the paper's central task: T2 synthesised from the ultrasound alone
UNCERTAINTY_SAMPLES = 8


def find_shipped_model() -> Path:
    """The shipped model, next to the source tree (an editable install) or in the working directory."""
    for base in (Path(__file__).resolve().parents[3], Path.cwd()):
        if (base / SHIPPED_MODEL).is_file():
            return base / SHIPPED_MODEL
    raise InputError(f"the shipped model {SHIPPED_MODEL} was not found (run from the repository)")


def run_demo(out: str | Path = "demo-output", model: str | Path | None = None, subjects: int = 2) -> Path:
    """Steps 1-3 above into `out` (its cohort/ is simulated afresh); returns `out`."""
    out = Path(out)
    loaded = load_model_file(model or find_shipped_model())
    modalities = loaded.modalities
    cohort = out / "cohort"
    for previous in (cohort, out / "predictions", out / "uncertainty"):  # made afresh, so no stale file is shown
        if previous.exists():
            shutil.rmtree(previous)
    log.info(f"1/5 simulating {subjects} held-out phantom subjects (seed {DEMO_SEED}) in {cohort}")
    simulate_cohort(cohort, subjects=subjects, modalities=modalities, size=loaded.model.config.image_size,
                    seed=DEMO_SEED, missing="complete")
    files = discover_subjects(cohort)[0]
    prepared = load_prepared(files, loaded.preprocess)
    log.info(f"2/5 predicting every modality from all {2 ** len(modalities) - 1} input subsets of {files.name}")
    rows, predictions = evaluate_subject(loaded, prepared, "mmhvae", with_lpips=False)
    grid = load_subject(files, modalities).reference
    for subset, images in predictions.items():
        write_synthesis(out / "predictions" / files.name / subset_label(subset), modalities, images, None,
                        prepared.fov, grid)
    k = int(prepared.slices[len(prepared.slices) // 2])
    fig3_grid(out / "fig3.png", {subset_label(s): p[..., k] for s, p in predictions.items()},
              prepared.targets[..., k], prepared.fov[..., k], modalities,
              f"{files.name}, slice {k}: every modality from every input subset (T = 0.5)")
    table = markdown_table(rows, list(modalities))
    log.info("3/5 PSNR (dB) / SSIM inside the field of view, mean over slices:")
    log.info(table)
    log.info(f"4/5 {UNCERTAINTY_SAMPLES} samples of {UNCERTAINTY_EXAMPLE[1]} from {UNCERTAINTY_EXAMPLE[0][0]}: "
             "mean, sd and interval against the error")
    spread = uncertainty_example(out, loaded, prepared, grid, k)
    write_text_atomic(out / "table.md", f"# Demo: {files.name}, shipped model, temperature 0.5\n\n{table}\n\n"
                                        f"## Uncertainty\n\n{spread}\n")
    log.info(spread)
    log.info("5/5 the results page (mmhvae view)")
    page = build_view([out / "predictions", out / "uncertainty"], out / "report.html", data=cohort, evaluation=out,
                      title=f"mmhvae demo: {files.name}", overwrite=True)
    log.info(f"\noutputs: {out / 'predictions'} and {out / 'uncertainty'} (NIfTI), {out / 'fig3.png'} and "
             f"{out / 'uncertainty.png'} (figures), {out / 'table.md'} (table), {page} (open it in a browser)")
    return out


def uncertainty_example(out: Path, loaded: LoadedModel, prepared: PreparedSubject, grid: Volume, k: int) -> str:
    """Step 4: OUT/uncertainty/<subject>/<inputs>/ (mean, sd and, when calibrated, the interval as NIfTI), the figure
    OUT/uncertainty.png of slice k, and a sentence giving the interval's coverage of the scored voxels."""
    inputs, target = UNCERTAINTY_EXAMPLE
    modalities = ModalitySet(loaded.modalities)
    (result,) = synthesise(loaded.model, prepared, [inputs], DEFAULT_TEMPERATURE, UNCERTAINTY_SAMPLES)
    calibration = calibration_at(loaded.calibration, DEFAULT_TEMPERATURE)
    if calibration is not None:
        sd, (low, high) = calibrated(result, modalities, calibration, DEFAULT_LEVEL)
        reading = "calibrated"
    else:
        sd, (low, high) = result.std, gaussian_interval(result.mean, result.std, DEFAULT_LEVEL)
        reading = "uncalibrated: the raw sd read as a Gaussian"
    write_synthesis(out / "uncertainty" / prepared.name / subset_label(inputs), modalities, result.mean, sd,
                    prepared.fov, grid, bounds=(low, high) if calibration is not None else None)
    i, j = modalities.index(inputs[0]), modalities.index(target)
    truth = prepared.targets[j]
    outside = (truth < low[j]) | (truth > high[j])
    level = f"{DEFAULT_LEVEL:.0%}"
    panels = [(f"input: {inputs[0]}", IMAGE, prepared.inputs[i, ..., k]), (f"{target} truth", IMAGE, truth[..., k]),
              (f"mean of {UNCERTAINTY_SAMPLES}", IMAGE, result.mean[j, ..., k]),
              (f"{level} interval: low", IMAGE, low[j, ..., k]), (f"{level} interval: high", IMAGE, high[j, ..., k]),
              ("|error| of the mean", SPREAD, np.abs(result.mean[j] - truth)[..., k]), ("sd", SPREAD, sd[j, ..., k]),
              ("truth outside", MASK, outside[..., k])]
    uncertainty_row(out / "uncertainty.png", panels, prepared.fov[..., k],
                    f"{prepared.name}, slice {k}: {target} from {inputs[0]}, T = {DEFAULT_TEMPERATURE:g}, {reading}")
    voxels = scored_voxels(prepared)
    coverage, width = interval_scores(truth[voxels], low[j][voxels], high[j][voxels])
    return (f"{target} from {subset_label(inputs)}, {UNCERTAINTY_SAMPLES} samples at T = {DEFAULT_TEMPERATURE:g} "
            f"({reading}): the {level} interval holds the truth at {coverage:.1%} of the scored voxels of "
            f"{prepared.name} (mean width {width:.3f} on the 0-1 scale).")

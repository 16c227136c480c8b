"""`mmhvae demo`: the main job on the embedded default, end to end, in a few minutes on a laptop CPU.

1. Simulate a small phantom cohort with a seed never used in training (complete modalities, so every
   synthesis has a ground truth).
2. With the shipped model (`models/phantom-tiny.pt`), predict every modality from every input subset for
   one subject, at temperature 0.5.
3. Write the predictions as NIfTI, a figure like the paper's Fig. 3 (rows: input subsets and the ground
   truth; columns: modalities) and a PSNR/SSIM table inside the ultrasound field of view.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from mmhvae.errors import InputError
from mmhvae.evaluation.figures import fig3_grid
from mmhvae.evaluation.scoring import evaluate_subject
from mmhvae.evaluation.tables import markdown_table
from mmhvae.inference.predict import write_synthesis
from mmhvae.io.files import write_text_atomic
from mmhvae.io.layouts import discover_subjects
from mmhvae.io.subjects import load_subject
from mmhvae.modalities import subset_label
from mmhvae.model_file import load_model_file
from mmhvae.phantom.cohort import simulate_cohort
from mmhvae.preprocessing.prepare import load_prepared

log = logging.getLogger(__name__)

DEMO_SEED = 9_000  # the shipped model was trained on seeds < 1000 (models/README.md)
SHIPPED_MODEL = "models/phantom-tiny.pt"


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
    if cohort.exists():
        shutil.rmtree(cohort)
    log.info(f"1/3 simulating {subjects} held-out phantom subjects (seed {DEMO_SEED}) in {cohort}")
    simulate_cohort(cohort, subjects=subjects, modalities=modalities, size=loaded.model.config.image_size,
                    seed=DEMO_SEED, missing="complete")
    files = discover_subjects(cohort)[0]
    prepared = load_prepared(files, loaded.preprocess)
    log.info(f"2/3 predicting every modality from all {2 ** len(modalities) - 1} input subsets of {files.name}")
    rows, predictions = evaluate_subject(loaded, prepared, "mmhvae", with_lpips=False)
    grid = load_subject(files, modalities).reference
    for subset, images in predictions.items():
        write_synthesis(out / "predictions" / subset_label(subset), modalities, images, None, prepared.fov, grid)
    k = int(prepared.slices[len(prepared.slices) // 2])
    fig3_grid(out / "fig3.png", {subset_label(s): p[..., k] for s, p in predictions.items()},
              prepared.targets[..., k], prepared.fov[..., k], modalities,
              f"{files.name}, slice {k}: every modality from every input subset (T = 0.5)")
    table = markdown_table(rows, list(modalities))
    write_text_atomic(out / "table.md", f"# Demo: {files.name}, shipped model, temperature 0.5\n\n{table}\n")
    log.info("3/3 PSNR (dB) / SSIM inside the field of view, mean over slices:")
    log.info(table)
    log.info(f"\noutputs: {out / 'predictions'} (NIfTI), {out / 'fig3.png'} (figure), {out / 'table.md'} (table)")
    return out

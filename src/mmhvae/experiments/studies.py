"""Studies that train several models and compare them: cross-validation (Table I) and the ablation study
(Table II) of Section 4.4; the phantom benchmark page that gathers both is experiments/phantom_benchmark.py.

Every model of a study is trained by the same `mmhvae train` code path, with the same data, batch size,
seed and number of steps (equal training budgets), in a run folder of its own under the study's folder.
A study that is interrupted can be run again with the same arguments: finished runs are reused, unfinished
ones resumed from their last checkpoint, so the page's numbers always come from the command it quotes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from mmhvae.config import RunConfig, load_config
from mmhvae.errors import InputError
from mmhvae.evaluation.evaluate import settings_line, write_csv, write_results
from mmhvae.evaluation.tables import ablation_table
from mmhvae.experiments.runs import mean_image_rows, scored_rows, train_variant
from mmhvae.experiments.variants import Variant, ablation_groups, ablation_variants
from mmhvae.inference.synthesis import DEFAULT_TEMPERATURE, check_sampling
from mmhvae.io.files import write_text_atomic
from mmhvae.io.layouts import SubjectFiles, discover_subjects
from mmhvae.methods import METHODS
from mmhvae.training.folds import cross_validation_split

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------
# The studies
# ----------------------------------------------------------------------------------------------------


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods named, each once and in order; unknown names and an empty list are refused."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"--methods: unknown {unknown or 'empty list'}; methods: {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def crossvalidate(data: str | Path, out: str | Path, config: str | Path = "tiny", methods: Sequence[str] = METHODS,
                  folds: int = 3, max_steps: int | None = None, temperature: float = DEFAULT_TEMPERATURE,
                  with_lpips: bool = True, samples: int = 1) -> list[dict]:
    """`mmhvae evaluate --folds K`: the paper's K-fold cross-validation end to end (Section 4.4.1).

    For each fold (stratified by missingness pattern), every method is trained on the other folds and
    evaluated on its subjects, with the mean-image floor of those training subjects; the test results of
    all folds are pooled into one long CSV and one Table I."""
    data, out = Path(data), Path(out)
    methods = check_methods(methods)
    check_sampling(temperature, samples)
    base = load_config(config)
    steps = max_steps or base.train.max_steps
    rows: list[dict] = []
    for fold in range(folds):
        train_subjects, test_subjects = cross_validation_split(data, base.data.modality_set, folds, fold,
                                                               base.train.seed)
        log.info(f"fold {fold + 1}/{folds}: {len(train_subjects)} training, {len(test_subjects)} test subjects")
        runs = out / f"fold-{fold}"
        models = [train_variant(Variant(m, m), data, runs, base, steps, folds, fold) for m in methods]
        for method, model in zip(methods, models):
            rows += scored_rows(model, method, test_subjects, runs, temperature, with_lpips, samples)
        rows += mean_image_rows(models[0], train_subjects, test_subjects)
    preamble = (f"# {folds}-fold cross-validation on {data}\n\nMethods trained {steps} steps each per fold "
                f"(config {config}, seed {base.train.seed}); test subjects of every fold pooled.\n\n"
                + settings_line(temperature, samples))
    write_results(out, rows, base.model.modalities, with_lpips, preamble)
    return rows


def ablate(data: str | Path, out: str | Path, config: str | Path = "tiny", max_steps: int | None = None,
           test_data: str | Path | None = None, folds: int = 3, fold: int = 0,
           temperature: float = DEFAULT_TEMPERATURE, with_lpips: bool = True) -> str:
    """`mmhvae ablate`: Table II (Section 4.4.2) on one fold: latent groups, fusion, GAN loss.

    Trains every distinct variant with the same budget on the training subjects of fold `fold` (or on all of
    `data` when a separate `test_data` folder is given) and evaluates them on the held-out subjects.
    Returns the Markdown table, also written to OUT/ablation.md (and every score to OUT/ablation.csv)."""
    data, out = Path(data), Path(out)
    base = load_config(config)
    steps = max_steps or base.train.max_steps
    train_subjects, test_subjects, folds_used = held_out_split(data, base, test_data, folds, fold)
    models = {v.name: train_variant(v, data, out / "runs", base, steps, folds_used, fold)
              for v in ablation_variants(base)}
    rows = []
    for name, model in models.items():
        rows += scored_rows(model, name, test_subjects, out / "runs", temperature, with_lpips)
    table = ablation_study_table(rows, base, with_lpips)
    write_csv(out / "ablation.csv", rows)
    where = f"fold {fold} of {folds}" if folds_used else f"test subjects of {test_data}"
    write_text_atomic(out / "ablation.md", f"# Ablation study (Table II), {where}\n\n{table}\n")
    log.info(table)
    return table


def held_out_split(data: Path, base: RunConfig, test_data: str | Path | None, folds: int,
                   fold: int) -> tuple[list[SubjectFiles], list[SubjectFiles], int | None]:
    """(training subjects, test subjects, folds to pass to training): a fold of `data`, or a test folder."""
    if test_data is not None:
        train_subjects, _ = cross_validation_split(data, base.data.modality_set, None)
        test_subjects = [s for s in discover_subjects(test_data) if s.present(base.data.modality_set)]
        return train_subjects, test_subjects, None
    train_subjects, test_subjects = cross_validation_split(data, base.data.modality_set, folds, fold,
                                                           base.train.seed)
    return train_subjects, test_subjects, folds


def ablation_study_table(rows: list[dict], base: RunConfig, with_lpips: bool) -> str:
    """Table II in Markdown, its three sections as in the paper, with how to read it."""
    metric_names = ("psnr", "ssim", "lpips") if with_lpips else ("psnr", "ssim")
    groups = [(title, [(label, v.name) for label, v in members]) for title, members in ablation_groups(base)]
    return ablation_table(rows, groups, base.model.modalities, metric_names) + (
        "\n\nMean (sd) over slices inside the field of view and over every input combination (harmonisation and "
        "synthesis). Bold: better than every other setting of its section, paired Wilcoxon signed-rank over "
        "(subject, slice, inputs), Bonferroni-corrected p < 0.01.")

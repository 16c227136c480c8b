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


def training_seeds(base: RunConfig, seeds: int) -> list[int]:
    """The training seeds of a study: the config's seed and the ones after it."""
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    return [base.train.seed + i for i in range(seeds)]


def seeded(variant: Variant, seed: int, base: RunConfig, fold_seed: int | None = None) -> Variant:
    """`variant` at training seed `seed`; the config's own seed keeps the variant's plain name (so the runs of
    one-seed studies stay where they were)."""
    if seed == base.train.seed and fold_seed is None:
        return variant
    return variant.with_seed(seed, fold_seed)


def crossvalidate(data: str | Path, out: str | Path, config: str | Path = "tiny", methods: Sequence[str] = METHODS,
                  folds: int = 3, max_steps: int | None = None, temperature: float = DEFAULT_TEMPERATURE,
                  with_lpips: bool = True, samples: int = 1, seeds: int = 1, correction: str = "holm"
                  ) -> list[dict]:
    """`mmhvae evaluate --folds K`: the paper's K-fold cross-validation end to end (Section 4.4.1).

    For each fold (stratified by missingness pattern, the same folds for every seed), every method is trained
    `seeds` times on the other folds and evaluated on its subjects, with the mean-image floor of those training
    subjects; the test subjects of all folds are pooled (each is tested once) into one long CSV and one Table I,
    the subject being the unit of its statistics."""
    data, out = Path(data), Path(out)
    methods = check_methods(methods)
    check_sampling(temperature, samples)
    base = load_config(config)
    steps = max_steps or base.train.max_steps
    fold_seed = base.train.split_seed if seeds > 1 else None
    rows: list[dict] = []
    for fold in range(folds):
        train_subjects, test_subjects = cross_validation_split(data, base.data.modality_set, folds, fold,
                                                               base.train.split_seed)
        log.info(f"fold {fold + 1}/{folds}: {len(train_subjects)} training, {len(test_subjects)} test subjects")
        runs = out / f"fold-{fold}"
        first = None
        for seed in training_seeds(base, seeds):
            for method in methods:
                model = train_variant(seeded(Variant(method, method), seed, base, fold_seed), data, runs, base,
                                      steps, folds, fold)
                first = first or model
                rows += scored_rows(model, method, test_subjects, runs, temperature, with_lpips, samples, seed)
        rows += mean_image_rows(first, train_subjects, test_subjects)
    preamble = (f"# {folds}-fold cross-validation on {data}\n\nMethods trained {steps} steps each per fold "
                f"(config {config}, seeds {', '.join(map(str, training_seeds(base, seeds)))}); test subjects of "
                "every fold pooled.\n\n" + settings_line(temperature, samples))
    write_results(out, rows, base.model.modalities, with_lpips, preamble, correction)
    return rows


def ablate(data: str | Path, out: str | Path, config: str | Path = "tiny", max_steps: int | None = None,
           test_data: str | Path | None = None, folds: int = 3, fold: int = 0,
           temperature: float = DEFAULT_TEMPERATURE, with_lpips: bool = True, seeds: int = 1,
           correction: str = "holm") -> str:
    """`mmhvae ablate`: Table II (Section 4.4.2) on one fold: latent groups, fusion, GAN loss.

    Trains every distinct variant with the same budget on the training subjects of fold `fold` (or on all of
    `data` when a separate `test_data` folder is given) and evaluates them on the held-out subjects.
    Each variant is trained `seeds` times (the same fold for every seed).
    Returns the Markdown table, also written to OUT/ablation.md (and every score to OUT/ablation.csv)."""
    data, out = Path(data), Path(out)
    base = load_config(config)
    steps = max_steps or base.train.max_steps
    train_subjects, test_subjects, folds_used = held_out_split(data, base, test_data, folds, fold)
    fold_seed = base.train.split_seed if seeds > 1 and folds_used else None
    rows = []
    for seed in training_seeds(base, seeds):
        for variant in ablation_variants(base):
            model = train_variant(seeded(variant, seed, base, fold_seed), data, out / "runs", base, steps,
                                  folds_used, fold)
            rows += scored_rows(model, variant.name, test_subjects, out / "runs", temperature, with_lpips,
                                seed=seed)
    table = ablation_study_table(rows, base, with_lpips, correction)
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
                                                           base.train.split_seed)
    return train_subjects, test_subjects, folds


def ablation_study_table(rows: list[dict], base: RunConfig, with_lpips: bool, correction: str = "holm") -> str:
    """Table II in Markdown, its three sections as in the paper, with how to read it."""
    metric_names = ("psnr", "ssim", "lpips") if with_lpips else ("psnr", "ssim")
    groups = [(title, [(label, v.name) for label, v in members]) for title, members in ablation_groups(base)]
    return ablation_table(rows, groups, base.model.modalities, metric_names, correction=correction)

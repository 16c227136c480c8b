"""Scoring of `mmhvae evaluate`: every input subset x every present target of each test subject, per slice
(Section 4.4.1), for one or more model files, plus the mean-image floor computed on a training set."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mmhvae.errors import InputError
from mmhvae.evaluation.per_slice import volume_metrics
from mmhvae.evaluation.uncertainty import uncertainty_rows
from mmhvae.inference.calibration import DEFAULT_LEVEL, calibration_at
from mmhvae.inference.synthesis import DEFAULT_TEMPERATURE, synthesise
from mmhvae.io.layouts import SubjectFiles
from mmhvae.modalities import ModalitySet, Subset, non_empty_subsets, subset_label
from mmhvae.model_file import LoadedModel, load_model_file
from mmhvae.preprocessing.prepare import PreparedSubject, PreprocessConfig, load_prepared

CSV_FIELDS = ("subject", "slice", "method", "seed", "inputs", "target", "task", "psnr", "ssim", "lpips")

log = logging.getLogger(__name__)


def score(prediction: np.ndarray, target: np.ndarray, fov: np.ndarray, with_lpips: bool) -> list[dict]:
    """Per-slice metrics of one predicted volume [H, W, S] against its target, inside the FOV."""
    return volume_metrics(prediction, target, fov, axis=2, data_range=2.0, with_lpips=with_lpips)


@dataclasses.dataclass
class SubjectScores:
    """One subject's long-table rows, its predictions [M, H, W, S] by input subset, and (with several samples)
    the rows of `evaluation.uncertainty`."""

    rows: list[dict]
    predictions: dict[Subset, np.ndarray]
    uncertainty: list[dict]


def score_subject(loaded: LoadedModel, prepared: PreparedSubject, method: str = "mmhvae",
                  subsets: Sequence[Subset] | None = None, temperature: float = DEFAULT_TEMPERATURE,
                  with_lpips: bool = False, samples: int = 1, seed: int = 0, level: float = DEFAULT_LEVEL
                  ) -> SubjectScores:
    """Every input subset x present target of one subject, scored per slice.

    With `samples` > 1 each prediction is the mean of that many samples, as `mmhvae predict --samples` writes,
    and its uncertainty is scored at `level` (calibrated when the model was calibrated at `temperature`).
    `seed` is the model's training seed, recorded in every row (the rows of one method's seeds are pooled).
    """
    modalities = ModalitySet(loaded.modalities)
    present = modalities.from_indicator(prepared.present.astype(int))
    subsets = list(subsets or non_empty_subsets(present))
    results = synthesise(loaded.model, prepared, subsets, temperature, samples)
    rows = []
    for result in results:
        for key in present:
            j = modalities.index(key)
            task = "harmonisation" if key in result.subset else "synthesis"
            for r in score(result.mean[j], prepared.targets[j], prepared.fov, with_lpips):
                rows.append({"subject": prepared.name, "slice": r["slice"], "method": method, "seed": seed,
                             "inputs": subset_label(result.subset), "target": key, "task": task,
                             "psnr": r["psnr"], "ssim": r["ssim"], "lpips": r.get("lpips", float("nan"))})
    uncertainty = []
    if samples > 1:
        uncertainty = uncertainty_rows(prepared, results, modalities, method, seed,
                                       calibration_at(loaded.calibration, temperature), level)
    return SubjectScores(rows, {r.subset: r.mean for r in results}, uncertainty)


def evaluate_subject(loaded: LoadedModel, prepared: PreparedSubject, method: str = "mmhvae",
                     subsets: Sequence[Subset] | None = None, temperature: float = DEFAULT_TEMPERATURE,
                     with_lpips: bool = False, samples: int = 1, seed: int = 0
                     ) -> tuple[list[dict], dict[Subset, np.ndarray]]:
    """The rows and predictions of `score_subject`."""
    scores = score_subject(loaded, prepared, method, subsets, temperature, with_lpips, samples, seed)
    return scores.rows, scores.predictions


def mean_images(subjects: Iterable[PreparedSubject], modalities: Sequence[str]) -> np.ndarray:
    """The training set's mean image of each modality [M, H, W] (network scale), over the foreground slices
    of the subjects where that modality was observed: the floor every synthesis method must beat."""
    sums, counts = None, np.zeros(len(modalities))
    for subject in subjects:
        if sums is None:
            sums = np.zeros(subject.targets.shape[:3])
        for j in np.flatnonzero(subject.present):
            sums[j] += subject.targets[j][..., subject.slices].sum(axis=-1)
            counts[j] += len(subject.slices)
    if sums is None:
        raise InputError("the mean-image baseline needs training subjects; there are none")
    missing = [m for m, c in zip(modalities, counts) if not c]
    if missing:
        warnings.warn(f"no training images of {missing}: the mean-image baseline skips these targets", stacklevel=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts[:, None, None]).astype(np.float32)  # NaN for a modality never observed


def evaluate_mean_image(mean: np.ndarray, prepared: PreparedSubject, modalities: Sequence[str]) -> list[dict]:
    """Rows for the mean-image baseline: the same prediction whatever the inputs (so one row set per target)."""
    rows = []
    present = [m for m, p in zip(modalities, prepared.present) if p]
    prediction = np.repeat(mean[..., None], prepared.inputs.shape[-1], axis=-1)
    for key in present:
        j = list(modalities).index(key)
        if np.isnan(mean[j]).all():  # never observed in training: no floor for this target
            continue
        for subset in non_empty_subsets(present):
            task = "harmonisation" if key in subset else "synthesis"
            for r in score(prediction[j], prepared.targets[j], prepared.fov, False):
                rows.append({"subject": prepared.name, "slice": r["slice"], "method": "mean-image", "seed": 0,
                             "inputs": subset_label(subset), "target": key, "task": task,
                             "psnr": r["psnr"], "ssim": r["ssim"], "lpips": float("nan")})
    return rows


def prepared_for_evaluation(files: SubjectFiles, loaded: LoadedModel) -> PreparedSubject:
    """Inputs, harmonised targets and FOV on the model grid, prepared as the model's preprocessing says (its
    input normalisation included)."""
    return load_prepared(files, loaded.preprocess)


def training_seed(loaded: LoadedModel) -> int:
    """The seed a model file was trained with (0 when its meta does not say)."""
    return int(((loaded.meta.get("config") or {}).get("train") or {}).get("seed", 0))


def model_labels(paths: Sequence[Path], loaded: Sequence[LoadedModel]) -> list[tuple[str, int]]:
    """(table name, training seed) of each model: the method recorded at training (`train --method`). Models
    of one method trained with different seeds share the name (their scores are pooled over seeds); two files
    of the same method and seed are told apart by file name."""
    labels = [(m.meta.get("method") or m.variant, training_seed(m)) for m in loaded]
    return [(f"{name} ({Path(path).stem})" if labels.count((name, seed)) > 1 else name, seed)
            for (name, seed), path in zip(labels, paths)]


def method_names(paths: Sequence[Path], loaded: Sequence[LoadedModel]) -> list[str]:
    """One name per model file, where each model is a table row of its own (the downstream tasks, `info`): the
    method recorded at training, made unique by file name."""
    names = [m.meta.get("method") or m.variant for m in loaded]
    return [f"{name} ({Path(path).stem})" if names.count(name) > 1 else name for name, path in zip(names, paths)]


def same_targets(a: PreprocessConfig, b: PreprocessConfig) -> bool:
    """Whether two models' preprocessing gives the same targets and grid: every setting but the input
    normalisation and the modality list (a model may know fewer modalities than the reference)."""
    return dataclasses.replace(a, input_normalisation=b.input_normalisation, modalities=b.modalities) == b


def load_models(paths: Sequence[str | Path]) -> list[LoadedModel]:
    """Model files to compare in one table, the first the reference: the others know its modalities or some of
    them (e.g. MHVAE's us and t2), with the same preprocessing otherwise, or an input error.

    The input normalisation may differ (the authors' network beside ours): each model prepares its own inputs,
    and the targets every model is scored against do not depend on it."""
    models = [load_model_file(p) for p in paths]
    for path, other in zip(paths[1:], models[1:]):
        if not same_targets(other.preprocess, models[0].preprocess) or not set(other.modalities) <= set(
                models[0].modalities):
            raise InputError("models compared in one table need the modalities (or some of them) and the "
                             f"preprocessing of {paths[0]}", path)
    return models


def evaluation_scores(models: Sequence[LoadedModel], labels: Sequence[str | tuple[str, int]],
                      subjects: Sequence[SubjectFiles], temperature: float = DEFAULT_TEMPERATURE,
                      with_lpips: bool = True, mean: np.ndarray | None = None, samples: int = 1,
                      level: float = DEFAULT_LEVEL) -> tuple[list[dict], list[dict]]:
    """Long-table rows of every model on every test subject, each labelled (name, training seed) or by name
    alone (seed 0), and with several samples the uncertainty rows; `mean` adds the mean-image floor, on the
    first (reference) model's grid and modalities. Each model is scored on the input subsets and targets of its
    own modalities."""
    labels = [(label, 0) if isinstance(label, str) else label for label in labels]
    rows, uncertainty = [], []
    for files in subjects:
        for (name, seed), each in zip(labels, models):
            if not set(files.modalities) & set(each.modalities):
                continue  # none of this model's modalities (a two-modality model, a subject without them)
            scores = score_subject(each, prepared_for_evaluation(files, each), name, temperature=temperature,
                                   with_lpips=with_lpips, samples=samples, seed=seed, level=level)
            rows += scores.rows
            uncertainty += scores.uncertainty
        if mean is not None:
            rows += evaluate_mean_image(mean, prepared_for_evaluation(files, models[0]), models[0].modalities)
        log.info(f"{files.name}: {sum(r['subject'] == files.name for r in rows)} slice scores")
    return rows, uncertainty


def evaluation_rows(models: Sequence[LoadedModel], labels: Sequence[str | tuple[str, int]],
                    subjects: Sequence[SubjectFiles], temperature: float = DEFAULT_TEMPERATURE,
                    with_lpips: bool = True, mean: np.ndarray | None = None, samples: int = 1) -> list[dict]:
    """The long-table rows of `evaluation_scores`."""
    return evaluation_scores(models, labels, subjects, temperature, with_lpips, mean, samples)[0]


def training_mean_images(subjects: Iterable[SubjectFiles], loaded: LoadedModel) -> np.ndarray:
    """The mean-image baseline of a training set, on the model's grid and scale."""
    return mean_images((load_prepared(f, loaded.preprocess) for f in subjects), loaded.modalities)

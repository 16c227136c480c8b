"""`mmhvae calibrate`: fit the split-conformal scales of a model's uncertainty on held-out calibration subjects
and store them in a copy of its model file (inference/calibration.py says what they are).

Every calibration subject is synthesised from every non-empty subset of its modalities with K samples at the
given temperature, as `predict --samples K` does; each scored voxel (field of view, foreground slices) of each
present target gives one (|error of the sample mean|, sample sd) pair to its (target, input subset) group and
to its (target, task) group.
"""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmhvae import __version__
from mmhvae.errors import InputError, refuse_to_overwrite
from mmhvae.evaluation.scoring import prepared_for_evaluation
from mmhvae.evaluation.uncertainty import scored_voxels
from mmhvae.inference.calibration import (
    DEFAULT_LEVEL,
    MIN_VOXELS,
    TASKS,
    Calibration,
    GroupScale,
    check_level,
    fit_group,
    subset_key,
    task_of,
)
from mmhvae.inference.synthesis import DEFAULT_TEMPERATURE, check_sampling, synthesise
from mmhvae.io.layouts import SubjectFiles, discover_subjects
from mmhvae.io.subjects import read_every_subject_first
from mmhvae.modalities import ModalitySet, Subset, non_empty_subsets
from mmhvae.model_file import LoadedModel, load_model_file, save_calibrated_copy
from mmhvae.preprocessing.prepare import PreparedSubject

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 8
Pairs = dict[tuple[str, Subset], list[tuple[np.ndarray, np.ndarray]]]


def subject_pairs(loaded: LoadedModel, prepared: PreparedSubject, temperature: float, samples: int) -> Pairs:
    """(|error|, sd) of the scored voxels of one subject, by (target, input subset), over every input subset."""
    modalities = ModalitySet(loaded.modalities)
    present = modalities.from_indicator(prepared.present.astype(int))
    voxels = scored_voxels(prepared)
    pairs: Pairs = defaultdict(list)
    for result in synthesise(loaded.model, prepared, non_empty_subsets(present), temperature, samples):
        for key in present:
            j = modalities.index(key)
            error = np.abs(result.mean[j] - prepared.targets[j])[voxels]
            pairs[key, result.subset].append((error, result.std[j][voxels]))
    return pairs


def pooled(pairs: Pairs, keys: Sequence[tuple[str, Subset]]) -> tuple[np.ndarray, np.ndarray]:
    """(|error|, sd) of every voxel of the given groups, concatenated."""
    values = [p for key in keys for p in pairs[key]]
    return np.concatenate([e for e, _ in values]), np.concatenate([sd for _, sd in values])


def fit_subset_scales(pairs: Pairs, levels: tuple[float, ...]) -> dict[str, GroupScale]:
    """The scale of each (target, input subset) with enough calibration voxels (the others use their task's)."""
    scales = {}
    for target, inputs in pairs:
        error, sd = pooled(pairs, [(target, inputs)])
        if error.size >= MIN_VOXELS:
            scales[subset_key(target, inputs)] = fit_group(error, sd, levels)
    return scales


def needed_groups(modalities: Sequence[str]) -> list[str]:
    """The (target, task) groups a calibration must have: harmonisation of each modality, and its synthesis
    when there are others to synthesise it from."""
    tasks = TASKS if len(modalities) > 1 else TASKS[:1]
    return [f"{m}/{t}" for m in modalities for t in tasks]


def require_samples_differ(pairs: Pairs, subject: str, model: Path) -> None:
    """A network whose samples are all alike (a deterministic baseline) has no sd to calibrate."""
    if all(float(sd.max()) == 0.0 for group in pairs.values() for _, sd in group):
        raise InputError(f"its samples are identical (subject '{subject}'): this network draws no samples, so "
                         "there is no uncertainty to calibrate", model)


def fit_calibration(loaded: LoadedModel, subjects: Sequence[SubjectFiles], model: Path, data: Path,
                    temperature: float, samples: int, levels: tuple[float, ...]) -> Calibration:
    """The calibration of `loaded` on the calibration subjects (prepared one at a time)."""
    pairs: Pairs = defaultdict(list)
    for i, files in enumerate(subjects):
        subject = prepared_for_evaluation(files, loaded)
        found = subject_pairs(loaded, subject, temperature, samples)
        if i == 0:
            require_samples_differ(found, subject.name, model)
        for key, values in found.items():
            pairs[key] += values
        log.info(f"{subject.name}: {sum(e.size for v in found.values() for e, _ in v)} calibration voxels")
    groups = {}
    for key in needed_groups(loaded.modalities):
        target, task = key.split("/")
        members = [(t, inputs) for t, inputs in pairs if t == target and task_of(t, inputs) == task]
        if not members:
            raise InputError(f"no calibration subject has a target for {target} ({task}): calibrate on subjects "
                             "with every modality of the model", data)
        try:
            groups[key] = fit_group(*pooled(pairs, members), levels)
        except InputError as exc:
            raise InputError(f"{key}: {exc}") from None
    return Calibration(groups, temperature, samples, tuple(levels), subsets=fit_subset_scales(pairs, levels))


def calibrate(model: str | Path, data: str | Path, out: str | Path, levels: Sequence[float] = (DEFAULT_LEVEL,),
              samples: int = DEFAULT_SAMPLES, temperature: float = DEFAULT_TEMPERATURE,
              overwrite: bool = False) -> Path:
    """The `mmhvae calibrate` job: `model`'s file with a calibration fitted on the subjects of `data`, at `out`."""
    check_sampling(temperature, samples)
    if samples < 2:
        raise InputError(f"--samples must be at least 2 to calibrate (the sd of K samples), got {samples}")
    for level in levels:
        check_level(level)
    model, out = Path(model), Path(out)
    refuse_to_overwrite(out, overwrite, problem="the calibrated model file already exists")
    loaded = load_model_file(model)
    subjects = discover_subjects(data)
    read_every_subject_first(subjects, lambda files: prepared_for_evaluation(files, loaded))
    calibration = fit_calibration(loaded, subjects, model, Path(data), temperature, samples, tuple(levels))
    calibration.provenance = {
        "data": str(data), "subjects": [s.name for s in subjects], "model": str(model),
        "mmhvae_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    for key, scale in calibration.groups.items():
        quantiles = ", ".join(f"{level:g}: {scale.quantiles[f'{level:g}']:.3g}" for level in levels)
        log.info(f"{key}: {scale.mode} score over {scale.voxels} voxels, q = {quantiles}")
    log.info(f"{len(calibration.subsets)} (target, input subset) scales; an interval uses its subset's")
    path = save_calibrated_copy(model, out, calibration.to_dict())
    log.info(f"wrote {path} (calibrated at temperature {temperature:g}, {samples} samples, on {len(subjects)} "
             f"subjects of {data})")
    return path

"""Which subjects train, validate and test: folds stratified by missingness pattern (Section 4.4.1), the test
fold of a cross-validation run, and the validation subjects held out of training."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmhvae.config import RunConfig
from mmhvae.errors import InputError
from mmhvae.io.layouts import SubjectFiles, discover_subjects
from mmhvae.modalities import ModalitySet
from mmhvae.preprocessing.prepare import Pattern

# ----------------------------------------------------------------------------------------------------
# Folds
# ----------------------------------------------------------------------------------------------------


def stratified_folds(patterns: Sequence[Pattern], k: int, seed: int = 0) -> list[int]:
    """Fold index of each subject, stratified by missingness pattern (Section 4.4.1).

    Subjects of each pattern are shuffled and dealt round-robin over the folds, the dealing continuing
    where the previous pattern stopped so fold sizes stay within one of each other. A pattern with at least
    k subjects is thus present in every fold.
    """
    if k < 2:
        raise InputError(f"need at least 2 folds, got {k}")
    if len(patterns) < k:
        raise InputError(f"cannot make {k} folds from {len(patterns)} subjects")
    rng = np.random.default_rng(seed)
    groups: dict[Pattern, list[int]] = defaultdict(list)
    for subject, pattern in enumerate(patterns):
        groups[tuple(pattern)].append(subject)
    folds = [0] * len(patterns)
    position = 0
    for pattern in sorted(groups, key=lambda p: (-len(groups[p]), p)):
        for subject in rng.permutation(groups[pattern]):
            folds[int(subject)] = position % k
            position += 1
    return folds


def fold_split(folds: Sequence[int], test_fold: int) -> tuple[list[int], list[int]]:
    """(train subjects, test subjects) for one fold."""
    train = [i for i, f in enumerate(folds) if f != test_fold]
    test = [i for i, f in enumerate(folds) if f == test_fold]
    return train, test


def cross_validation_split(data: str | Path, modalities: ModalitySet, folds: int | None, test_fold: int = 0,
                           seed: int = 0) -> tuple[list[SubjectFiles], list[SubjectFiles]]:
    """(training subjects, test subjects) of a data folder (Section 4.4.1: folds stratified by missingness
    pattern); all subjects train when `folds` is None. Subjects with none of `modalities` are left out."""
    subjects = [s for s in discover_subjects(data) if s.present(modalities)]
    if not folds:
        return subjects, []
    if not 0 <= test_fold < folds:
        raise InputError(f"test fold {test_fold} is not one of the {folds} folds")
    fold_of = stratified_folds([s.indicator(modalities) for s in subjects], folds, seed)
    train_idx, test_idx = fold_split(fold_of, test_fold)
    return [subjects[i] for i in train_idx], [subjects[i] for i in test_idx]


# ----------------------------------------------------------------------------------------------------
# The subjects of a run
# ----------------------------------------------------------------------------------------------------


def fold_subjects(data: Path, run: RunConfig) -> tuple[list[SubjectFiles], list[SubjectFiles]]:
    """(training candidates, test subjects) of a run: the test fold is left out when `train.folds` is set,
    and subjects missing a modality with `train.complete_subjects_only`."""
    candidates, test = cross_validation_split(data, run.data.modality_set, run.train.folds, run.train.test_fold,
                                              run.train.split_seed)
    if run.train.complete_subjects_only:
        candidates = complete_subjects(candidates, run.data.modality_set)
        if not candidates:
            raise InputError(f"no training subject has every modality of the run ({', '.join(run.data.modalities)}), "
                             "which train.complete_subjects_only asks for", data)
    return candidates, test


def complete_subjects(subjects: Sequence[SubjectFiles], modalities: ModalitySet) -> list[SubjectFiles]:
    """The subjects that have every modality of `modalities` (after the folds are dealt, so that the test fold
    does not depend on it)."""
    return [s for s in subjects if len(s.present(modalities)) == len(modalities)]


def validation_subjects(data: Path, run: RunConfig) -> list[str]:
    """A stratified `val_fraction` of the training subjects (at least one when there are 5 or more)."""
    subjects, _ = fold_subjects(data, run)
    if run.train.val_fraction <= 0 or len(subjects) < 5:
        return []
    folds = min(len(subjects), max(2, round(1 / run.train.val_fraction)))
    fold_of = stratified_folds([s.indicator(run.data.modality_set) for s in subjects], folds, run.train.split_seed)
    return [s.name for s, f in zip(subjects, fold_of) if f == 0]

"""From subjects on disk to training batches: preprocessing, 2D slices, batches of one pattern, folds.

- A subject is preprocessed once (inputs normalised, targets harmonised, MR cropped to the ultrasound
  field of view; Section 4.4.1) and cached in memory, optionally on disk, so an epoch never re-reads NIfTI.
- Slices run along the third array axis (the ultrasound sweep axis); slices with no foreground are skipped.
- Batches follow Algorithm 1, lines 3-4: draw a missingness pattern r from the training set, then B slices
  that share it.
- Folds are stratified by missingness pattern so every input combination appears in each test fold
  (Section 4.4.1).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mmhvae.data import harmonize
from mmhvae.errors import InputError
from mmhvae.files import atomic_path
from mmhvae.io import Subject, SubjectFiles, Volume, discover_subjects, load_subject
from mmhvae.modalities import ULTRASOUND, ModalitySet

Pattern = tuple[int, ...]


@dataclass
class PreprocessConfig:
    """How subjects become network inputs and targets; saved next to every checkpoint."""

    modalities: tuple[str, ...] = ("us", "t2", "t1c", "flair")
    input_percentile: float = harmonize.INPUT_PERCENTILE
    wm_targets: dict[str, float] = field(default_factory=dict)
    crop_to_ultrasound_fov: bool = True
    resample_to: str | None = None
    nan_to_num: bool = False
    image_size: int | None = None  # in-plane grid of the model; None keeps the subject's grid

    @property
    def modality_set(self) -> ModalitySet:
        return ModalitySet(tuple(self.modalities))


@dataclass
class PreparedSubject:
    """A subject on the network's scale: arrays [M, H, W, S] in modality order, missing channels at -1."""

    name: str
    inputs: np.ndarray
    targets: np.ndarray
    present: np.ndarray  # [M] bool
    fov: np.ndarray  # [H, W, S] bool: where inputs and targets are defined
    slices: np.ndarray  # slice indices with foreground
    reference: Volume | None = None  # geometry of the original grid (absent when loaded from the cache)

    @property
    def pattern(self) -> Pattern:
        return tuple(int(b) for b in self.present)


def field_of_view(subject: Subject) -> np.ndarray:
    """The ultrasound FOV when there is an ultrasound, else the union of the images' foregrounds."""
    if ULTRASOUND in subject.volumes:
        return harmonize.ultrasound_fov_mask(subject.volumes[ULTRASOUND].array)
    masks = [harmonize.foreground_mask(v.array) for v in subject.volumes.values()]
    return np.logical_or.reduce(masks)


def white_matter_mask(subject: Subject, modality: str, fov: np.ndarray) -> np.ndarray:
    """White matter from tissue.nii.gz (label 3), else from a 3-class clustering of this image."""
    if subject.tissue is not None:
        return harmonize.white_matter_from_labels(subject.tissue.array)
    return harmonize.white_matter_by_clustering(subject.volumes[modality].array, modality, foreground=fov)


def _harmonised_target(subject: Subject, key: str, fov: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Harmonised target on the network's scale: from targets/<key>.nii.gz when given, else computed."""
    if key in subject.targets:
        target = harmonize.crop_to_fov(subject.targets[key].array, fov)
    elif key == ULTRASOUND:
        return harmonize.normalise_input(subject.volumes[key].array, fov, config.input_percentile)
    else:
        try:
            target = harmonize.harmonise_target(subject.volumes[key].array, white_matter_mask(subject, key, fov),
                                                key, config.wm_targets, foreground=fov)
        except InputError as exc:
            raise InputError(exc.problem, subject.volumes[key].path) from None
    out = harmonize.target_to_network(target)
    out[~fov] = harmonize.BACKGROUND
    return out


def prepare_subject(subject: Subject, config: PreprocessConfig, with_targets: bool = True) -> PreparedSubject:
    """Normalise inputs, harmonise targets and crop MR to the ultrasound FOV (Section 4.4.1).

    Inference needs no targets (`with_targets=False`: they stay at background).
    """
    modalities = config.modality_set
    fov = field_of_view(subject) if config.crop_to_ultrasound_fov else np.ones(subject.reference.shape, bool)
    shape = (len(modalities), *subject.reference.shape)
    inputs = np.full(shape, harmonize.BACKGROUND, np.float32)
    targets = np.full(shape, harmonize.BACKGROUND, np.float32)
    for key in subject.present(modalities):
        index = modalities.index(key)
        raw = subject.volumes[key].array
        try:
            inputs[index] = harmonize.normalise_input(raw, fov & np.isfinite(raw), config.input_percentile)
        except InputError as exc:
            raise InputError(f"{exc.problem} inside the field of view", subject.volumes[key].path) from None
        if with_targets:
            targets[index] = _harmonised_target(subject, key, fov, config)
    present = np.array(subject.indicator(modalities), bool)
    prepared = PreparedSubject(subject.name, inputs, targets, present, fov, np.flatnonzero(fov.any(axis=(0, 1))),
                               subject.reference)
    if config.image_size is not None:
        prepared = fit_in_plane(prepared, config.image_size)
    return prepared


def centre_pad_crop(array: np.ndarray, size: int | tuple[int, int], fill: float, axes: tuple[int, int]) -> np.ndarray:
    """Centre-pad (with `fill`) or centre-crop two axes of `array` to `size` (one int for a square).

    Padding and cropping use the same centre convention, so pad/crop to the model grid and back restores
    the original grid exactly (voxels cropped away come back as `fill`).
    """
    sizes = (size, size) if isinstance(size, int) else tuple(size)
    out = array
    for axis, size in zip(axes, sizes):
        length = out.shape[axis]
        if length < size:
            before = (size - length) // 2
            widths = [(0, 0)] * out.ndim
            widths[axis] = (before, size - length - before)
            out = np.pad(out, widths, constant_values=fill)
        elif length > size:
            start = (length - size) // 2
            out = np.take(out, np.arange(start, start + size), axis=axis)
    return out


def fit_in_plane(prepared: PreparedSubject, size: int) -> PreparedSubject:
    """The subject on a size x size in-plane grid (centre pad/crop); slices keep their indices."""
    pad = {"fill": harmonize.BACKGROUND, "axes": (1, 2)}
    fov = centre_pad_crop(prepared.fov, size, fill=False, axes=(0, 1))
    return PreparedSubject(prepared.name, centre_pad_crop(prepared.inputs, size, **pad),
                           centre_pad_crop(prepared.targets, size, **pad), prepared.present, fov,
                           np.flatnonzero(fov.any(axis=(0, 1))), prepared.reference)


# ----------------------------------------------------------------------------------------------------
# Cache: preprocess once, reuse across epochs and runs
# ----------------------------------------------------------------------------------------------------


def _cache_key(files: SubjectFiles, config: PreprocessConfig) -> str:
    """Changes whenever an input file or a preprocessing setting changes."""
    paths = sorted([*files.modalities.values(), *files.targets.values(), *(p for p in (files.seg, files.tissue) if p)])
    stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    blob = json.dumps({"files": stamp, "config": asdict(config)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _save_cached(path: Path, prepared: PreparedSubject) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, inputs=prepared.inputs, targets=prepared.targets, present=prepared.present,
                     fov=prepared.fov, slices=prepared.slices, name=np.array(prepared.name))


def _load_cached(path: Path) -> PreparedSubject:
    with np.load(path) as data:
        return PreparedSubject(str(data["name"]), data["inputs"], data["targets"], data["present"], data["fov"],
                               data["slices"])


def load_prepared(
    files: SubjectFiles, config: PreprocessConfig, cache_dir: Path | None = None
) -> PreparedSubject:
    """Preprocess a subject, or read it from the on-disk cache when nothing changed."""
    if cache_dir is not None:
        cached = Path(cache_dir) / f"{files.name}-{_cache_key(files, config)}.npz"
        if cached.is_file():
            return _load_cached(cached)
    subject = load_subject(files, config.modality_set, config.resample_to, config.nan_to_num)
    prepared = prepare_subject(subject, config)
    if cache_dir is not None:
        _save_cached(cached, prepared)
    return prepared


# ----------------------------------------------------------------------------------------------------
# Slices and batches
# ----------------------------------------------------------------------------------------------------


class SliceDataset(Dataset):
    """2D slices (third array axis) of prepared subjects, as tensors.

    Item: inputs [M, H, W], targets [M, H, W], present [M] bool, fov [H, W] bool, subject and slice index.
    """

    def __init__(self, subjects: Sequence[PreparedSubject]):
        if not subjects:
            raise InputError("no subjects to make slices from")
        self.subjects = list(subjects)
        self.index = [(i, int(k)) for i, s in enumerate(self.subjects) for k in s.slices]
        if not self.index:
            raise InputError("no slice has any foreground in the field of view")

    def __len__(self) -> int:
        return len(self.index)

    def pattern_of(self, item: int) -> Pattern:
        return self.subjects[self.index[item][0]].pattern

    def patterns(self) -> list[Pattern]:
        return [self.subjects[i].pattern for i, _ in self.index]

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        i, k = self.index[item]
        subject = self.subjects[i]
        return {
            "inputs": torch.from_numpy(np.ascontiguousarray(subject.inputs[..., k])),
            "targets": torch.from_numpy(np.ascontiguousarray(subject.targets[..., k])),
            "present": torch.from_numpy(subject.present.copy()),
            "fov": torch.from_numpy(np.ascontiguousarray(subject.fov[..., k])),
            "subject": torch.tensor(i),
            "slice": torch.tensor(k),
        }


class PatternBatchSampler(Sampler[list[int]]):
    """Batches of B slices sharing one missingness pattern r (Algorithm 1, lines 3-4).

    r is drawn from the training set's observed patterns in proportion to their number of slices (i.e. as
    the r of a random training slice), then B slices are drawn among those with that r, without replacement
    when there are enough. Deterministic for (seed, epoch, rank); each rank of a distributed run draws its
    own batches.
    """

    def __init__(self, patterns: Sequence[Pattern], batch_size: int, num_batches: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1 or num_batches < 1:
            raise ValueError("batch_size and num_batches must be positive")
        groups: dict[Pattern, list[int]] = defaultdict(list)
        for item, pattern in enumerate(patterns):
            groups[tuple(pattern)].append(item)
        self.patterns = sorted(groups)
        self.members = [np.array(groups[p]) for p in self.patterns]
        sizes = np.array([len(m) for m in self.members], float)
        self.pattern_probs = sizes / sizes.sum()
        self.batch_size, self.num_batches = batch_size, num_batches
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, self.world_size])
        for _ in range(self.num_batches):
            members = self.members[rng.choice(len(self.members), p=self.pattern_probs)]
            replace = len(members) < self.batch_size
            yield [int(i) for i in rng.choice(members, self.batch_size, replace=replace)]


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


def pattern_counts(patterns: Sequence[Pattern]) -> Counter:
    return Counter(tuple(p) for p in patterns)

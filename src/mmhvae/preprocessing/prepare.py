"""From a subject on disk to the network's inputs and targets (Section 4.4.1), and the settings that say how.

- `PreprocessConfig` is saved with every model: a model file says how its subjects must be prepared, including
  which input normalisation its network was trained on (ours, or the authors' for their released network).
- A subject's inputs are normalised per volume, its targets harmonised, MR cropped to the ultrasound field of
  view, and the in-plane grid padded or cropped to the model's.
- Slices run along the third array axis (the ultrasound sweep axis); slices with no foreground are skipped.
- A prepared subject can be cached on disk, so that training never re-reads NIfTI for an unchanged subject.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmhvae.errors import InputError
from mmhvae.io.files import atomic_path
from mmhvae.io.layouts import SubjectFiles
from mmhvae.io.subjects import Subject, load_subject
from mmhvae.io.volumes import Volume
from mmhvae.modalities import ULTRASOUND, ModalitySet
from mmhvae.preprocessing.authors import normalise_input_authors
from mmhvae.preprocessing.grid import centre_pad_crop
from mmhvae.preprocessing.intensity import (
    BACKGROUND,
    INPUT_PERCENTILE,
    harmonise_target,
    normalise_input,
    target_to_network,
)
from mmhvae.preprocessing.masks import crop_to_fov, field_of_view, white_matter_mask

Pattern = tuple[int, ...]

OUR_INPUT_NORMALISATION = "mmhvae"
AUTHORS_INPUT_NORMALISATION = "authors"
# How one input volume is normalised, by the name a model's preprocessing records: (array, foreground or
# region, percentile) -> the network's scale. Targets are harmonised the same way whichever is used.
INPUT_NORMALISATIONS: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    OUR_INPUT_NORMALISATION: normalise_input,
    AUTHORS_INPUT_NORMALISATION: normalise_input_authors,
}


@dataclass
class PreprocessConfig:
    """How subjects become network inputs and targets; saved next to every checkpoint."""

    modalities: tuple[str, ...] = ("us", "t2", "t1c", "flair")
    input_percentile: float = INPUT_PERCENTILE
    wm_targets: dict[str, float] = field(default_factory=dict)
    crop_to_ultrasound_fov: bool = True
    resample_to: str | None = None
    nan_to_num: bool = False
    image_size: int | None = None  # in-plane grid of the model; None keeps the subject's grid
    input_normalisation: str = OUR_INPUT_NORMALISATION  # a key of INPUT_NORMALISATIONS

    def __post_init__(self) -> None:
        if self.input_normalisation not in INPUT_NORMALISATIONS:
            raise ValueError(f"input_normalisation must be one of {', '.join(INPUT_NORMALISATIONS)}, "
                             f"got {self.input_normalisation!r}")

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


def _harmonised_target(subject: Subject, key: str, fov: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Harmonised target on the network's scale: from targets/<key>.nii.gz when given, else computed."""
    if key in subject.targets:
        target = crop_to_fov(subject.targets[key].array, fov)
    elif key == ULTRASOUND:
        return normalise_input(subject.volumes[key].array, fov, config.input_percentile)
    else:
        try:
            target = harmonise_target(subject.volumes[key].array, white_matter_mask(subject, key, fov),
                                                key, config.wm_targets, foreground=fov)
        except InputError as exc:
            raise InputError(exc.problem, subject.volumes[key].path) from None
    out = target_to_network(target)
    out[~fov] = BACKGROUND
    return out


def prepare_subject(subject: Subject, config: PreprocessConfig, with_targets: bool = True) -> PreparedSubject:
    """Normalise inputs, harmonise targets and crop MR to the ultrasound FOV (Section 4.4.1).

    Inputs are normalised as `config.input_normalisation` says. Inference needs no targets
    (`with_targets=False`: they stay at background).
    """
    normalise = INPUT_NORMALISATIONS[config.input_normalisation]
    modalities = config.modality_set
    fov = field_of_view(subject) if config.crop_to_ultrasound_fov else np.ones(subject.reference.shape, bool)
    shape = (len(modalities), *subject.reference.shape)
    inputs = np.full(shape, BACKGROUND, np.float32)
    targets = np.full(shape, BACKGROUND, np.float32)
    for key in subject.present(modalities):
        index = modalities.index(key)
        raw = subject.volumes[key].array
        try:
            inputs[index] = normalise(raw, fov & np.isfinite(raw), config.input_percentile)
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


def fit_in_plane(prepared: PreparedSubject, size: int) -> PreparedSubject:
    """The subject on a size x size in-plane grid (centre pad/crop); slices keep their indices."""
    pad = {"fill": BACKGROUND, "axes": (1, 2)}
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

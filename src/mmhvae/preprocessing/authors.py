"""TODO docstring."""

from __future__ import annotations

import dataclasses

import numpy as np

from mmhvae.errors import InputError
from mmhvae.io.subjects import Subject
from mmhvae.preprocessing.intensity import BACKGROUND, INPUT_PERCENTILE
from mmhvae.preprocessing.prepare import PreparedSubject, PreprocessConfig, fit_in_plane, prepare_subject


def normalise_input_authors(array: np.ndarray, region: np.ndarray | None = None,
                            percentile: float = INPUT_PERCENTILE) -> np.ndarray:
    """Input normalisation of the authors' code (utilities/dataset.py, 'min-max') for one 3D volume.

    The volume's minimum is first shifted to 0, as their data preparation does for every MR volume
    (`zero_mean` in data/utils/coregistration.py; a no-op on their data). Foreground = voxels > 0 (inside
    `region`, e.g. the ultrasound field of view). Clip above at the 99.95th foreground percentile, then
    min-max: the foreground minimum goes to -255/256 (one 8-bit step above the background) and the clip
    value to 1; background -1. Ours (`harmonize.normalise_input`) maps the foreground minimum to -1.
    """
    array = np.asarray(array, dtype=np.float32)  # they compute in float32
    finite = np.isfinite(array)
    if not finite.any():
        raise InputError("the image has no finite voxel")
    array = np.where(finite, array - array[finite].min(), 0.0).astype(np.float32)
    foreground = array > 0
    if region is not None:
        foreground &= region.astype(bool)
    if not foreground.any():
        raise InputError("the image has no voxel above its minimum")
    values = array[foreground]
    low, high = float(values.min()), float(np.percentile(values, percentile))
    if high <= low:
        raise InputError("the image is constant inside its foreground")
    unit = (np.minimum(array, high) - low) / (high - low)
    out = unit * (1.0 + 255.0 / 256.0) - 255.0 / 256.0
    out[~foreground] = BACKGROUND
    return out.astype(np.float32)


def prepare_subject_authors(subject: Subject, preprocess: PreprocessConfig) -> PreparedSubject:
    """Our `prepare_subject` (FOV crop, slices, pad/crop to the model grid) with their input normalisation."""
    prepared = prepare_subject(subject, dataclasses.replace(preprocess, image_size=None), with_targets=False)
    modalities = preprocess.modality_set
    for key in subject.present(modalities):
        raw = subject.volumes[key].array
        try:
            prepared.inputs[modalities.index(key)] = normalise_input_authors(
                raw, prepared.fov & np.isfinite(raw), preprocess.input_percentile)
        except InputError as exc:
            raise InputError(f"{exc.problem} inside the field of view", subject.volumes[key].path) from None
    if preprocess.image_size is not None:
        prepared = fit_in_plane(prepared, preprocess.image_size)
    return prepared

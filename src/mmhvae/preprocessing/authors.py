"""The authors' input normalisation (their utilities/dataset.py), which their released network was trained on.

It differs from ours (`intensity.normalise_input`) by one 8-bit step at the foreground minimum and in what counts
as foreground; a model file names the one its network expects (`PreprocessConfig.input_normalisation`).
"""

from __future__ import annotations

import numpy as np

from mmhvae.errors import InputError
from mmhvae.preprocessing.intensity import BACKGROUND, INPUT_PERCENTILE, foreground_range


def normalise_input_authors(array: np.ndarray, region: np.ndarray | None = None,
                            percentile: float = INPUT_PERCENTILE) -> np.ndarray:
    """Input normalisation of the authors' code (utilities/dataset.py, 'min-max') for one 3D volume.

    The volume's minimum is first shifted to 0, as their data preparation does for every MR volume
    (`zero_mean` in data/utils/coregistration.py; a no-op on their data). Foreground = voxels > 0 (inside
    `region`, e.g. the ultrasound field of view). Clip above at the 99.95th foreground percentile, then
    min-max: the foreground minimum goes to -255/256 (one 8-bit step above the background) and the clip
    value to 1; background -1. Ours (`intensity.normalise_input`) maps the foreground minimum to -1.
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
    low, high = foreground_range(array, foreground, percentile)
    unit = (np.minimum(array, high) - low) / (high - low)
    out = unit * (1.0 + 255.0 / 256.0) - 255.0 / 256.0
    out[~foreground] = BACKGROUND
    return out.astype(np.float32)

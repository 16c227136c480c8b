"""The model grid: every slice is centre-padded or centre-cropped in-plane to the network's square size, and
predictions go back onto the subject's own grid the same way."""

from __future__ import annotations

import numpy as np


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

"""The preview figure of a phantom cohort (`mmhvae simulate --preview`, docs/phantom-preview.png): one subject's
inputs and harmonised targets side by side, with its field of view and tumour outline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from mmhvae.errors import InputError
from mmhvae.io.layouts import discover_subjects
from mmhvae.io.volumes import read_volume
from mmhvae.modalities import CANONICAL_KEYS


def write_preview(subject_dir: Path, png: Path) -> None:
    """One subject's modalities side by side (inputs above, harmonised targets below) on the sweep slice with
    the most tumour, with the field of view (cyan) and the tumour outline (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subject_dir, png = Path(subject_dir), Path(png)
    (files,) = discover_subjects(subject_dir)  # the canonical or the BraTS layout
    keys = [k for k in CANONICAL_KEYS if k in files.modalities]
    if not keys:
        raise InputError("no modality image to preview", subject_dir)
    inputs = {k: read_volume(files.modalities[k]).array for k in keys}
    targets = {k: read_volume(files.targets[k]).array for k in keys if k in files.targets}
    seg = read_volume(files.seg).array if files.seg is not None else None
    fov = np.any([image != 0 for image in inputs.values()], axis=0)
    fov = np.stack([ndimage.binary_fill_holes(fov[..., k]) for k in range(fov.shape[2])], axis=2)
    k = int(np.argmax((seg > 0).sum(axis=(0, 1)))) if seg is not None and seg.any() else fov.shape[2] // 2

    rows = (inputs, targets) if targets else (inputs,)  # BraTS has no harmonised targets
    fig, axes = plt.subplots(len(rows), len(keys), figsize=(2.3 * len(keys), 2.4 * len(rows)), squeeze=False)
    for column, key in enumerate(keys):
        for row, images in enumerate(rows):
            axis = axes[row, column]
            axis.set_axis_off()
            if key not in images:
                continue
            image = images[key][:, :, k].T  # rows: depth (probe at the top), columns: lateral
            values = image[fov[:, :, k].T]
            high = float(np.percentile(values, 99.5)) if values.size else 1.0
            axis.imshow(image, cmap="gray", vmin=0.0, vmax=high or 1.0, interpolation="nearest")
            axis.contour(fov[:, :, k].T, levels=[0.5], colors="cyan", linewidths=0.6)
            if seg is not None and seg[:, :, k].any():
                axis.contour(seg[:, :, k].T > 0, levels=[0.5], colors="red", linewidths=0.6)
            axis.set_title(f"{key}{' target' if row else ''}", fontsize=8)
    fig.suptitle(f"{subject_dir.name}, {'axial' if files.layout == 'brats' else 'sweep'} slice {k}", fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)

"""Qualitative figure of the evaluation (the paper's Fig. 3): one slice synthesised from each input subset,
next to the ground truth, for every modality."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmhvae.io.files import atomic_path


def fig3_grid(png: Path, slices: dict[str, np.ndarray], ground_truth: np.ndarray, fov: np.ndarray,
              modalities: tuple[str, ...], title: str) -> None:
    """Rows: input subsets, then the ground truth; columns: modalities (paper's Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(slices.items()) + [("ground truth", ground_truth)]
    # one grey scale per modality, from its ground truth inside the field of view
    ranges = [(-1.0, float(np.percentile(ground_truth[j][fov], 99.5)) if fov.any() else 1.0)
              for j in range(len(modalities))]
    fig, axes = plt.subplots(len(rows), len(modalities), figsize=(1.5 * len(modalities), 1.5 * len(rows)),
                             squeeze=False)
    for i, (label, images) in enumerate(rows):
        for j, key in enumerate(modalities):
            ax = axes[i, j]
            image = np.where(fov, images[j], -1.0)
            ax.imshow(np.rot90(image), cmap="gray", vmin=ranges[j][0], vmax=ranges[j][1])
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(key, fontsize=9)
            if j == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / fig.get_figheight()))  # room for the title above the columns' keys
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)

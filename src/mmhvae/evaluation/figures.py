"""Qualitative figure of the evaluation (the paper's Fig. 3): one slice synthesised from each input subset,
next to the ground truth, for every modality."""

from __future__ import annotations

from collections.abc import Sequence
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


IMAGE, SPREAD, MASK = "image", "spread", "mask"


def uncertainty_row(png: Path, panels: Sequence[tuple[str, str, np.ndarray]], fov: np.ndarray, title: str) -> None:
    """One row of maps of one slice, each (label, kind, array): IMAGE on a shared grey scale (network scale),
    SPREAD (an error, sd or interval width, >= 0) on one shared colour scale so that an sd or an interval can be
    read against the error, MASK in white (e.g. where the truth falls outside the interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def top(kind: str, q: float, default: float) -> float:
        arrays = [a for _, k, a in panels if k == kind]
        return max(float(np.percentile(a[fov], q)) for a in arrays) if arrays and fov.any() else default

    grey_top, spread_top = top(IMAGE, 99.5, 1.0), top(SPREAD, 99.0, 1.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(1.9 * len(panels), 2.3), squeeze=False)
    coloured = None
    for ax, (label, kind, array) in zip(axes[0], panels):
        if kind == SPREAD:
            coloured = ax.imshow(np.rot90(np.where(fov, array, 0.0)), cmap="magma", vmin=0.0, vmax=spread_top)
        elif kind == MASK:
            ax.imshow(np.rot90(fov & array.astype(bool)), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(np.rot90(np.where(fov, array, -1.0)), cmap="gray", vmin=-1.0, vmax=grey_top)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=7)
    if coloured is not None:
        fig.colorbar(coloured, ax=list(axes[0]), fraction=0.02, pad=0.01, label="network scale")
    fig.suptitle(title, fontsize=8)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=90, format="png", bbox_inches="tight")
    plt.close(fig)

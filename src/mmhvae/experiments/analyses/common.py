"""The two analyses of Section 6 of Dorent et al.: latent alignment (Fig. 4) and temperature (Fig. 5).

`analyse_latent` (Section 6.1, Fig. 4): for one subject, the posterior mean of the finest latent group z_1
(one C_1-vector per pixel) is computed from every non-empty subset of the subject's modalities. One PCA is
fitted on pixel descriptors drawn from all subsets (the paper: N = 10,000 random pixels of one patient), the
first three components are shown as RGB, one picture per input subset. If the mixture of products of experts
aligns the modalities, the pictures look alike. Two numbers per subset make this quantitative: the mean
per-pixel cosine similarity between its z_1 descriptors and those of the full input, and the linear CKA
(centred kernel alignment) between the two descriptor sets.

`analyse_temperature` (Section 6.2, Fig. 5): samples at several temperatures T (the posterior standard
deviations scaled by T) for source -> target pairs (US -> T2 and US -> T1c by default): one figure for one
subject, and PSNR/SSIM/LPIPS against the harmonised target inside the field of view (the scoring of
`mmhvae.evaluate`), averaged over the subjects of a data folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmhvae.errors import InputError
from mmhvae.inference.device import resolve_device
from mmhvae.io.files import atomic_path
from mmhvae.io.layouts import SubjectFiles
from mmhvae.model.registry import ZERO_IMPUTATION_NETWORKS
from mmhvae.model_file import LoadedModel, load_model_file


@dataclass
class AnalysisResult:
    """What an analysis computed (its table rows) and the files it wrote."""

    rows: list[dict]
    files: list[Path]


# ----------------------------------------------------------------------------------------------------
# Shared helpers: model, subject, output files
# ----------------------------------------------------------------------------------------------------


def load_model(model: str | Path, device: str) -> LoadedModel:
    """A model file whose network has a stochastic z_1 (MM-GAN and ResViT have no latent to analyse)."""
    loaded = load_model_file(model, resolve_device(device))
    if loaded.variant in ZERO_IMPUTATION_NETWORKS:
        raise InputError(f"the analyses need an MMHVAE model (this file holds the {loaded.variant} baseline, which "
                         "has no latent variables)", model)
    return loaded


def subject_folder(files: SubjectFiles) -> Path:
    """The folder holding a subject's images, to name in error messages."""
    return next(iter(files.modalities.values())).parent


def find_subject(subjects: Sequence[SubjectFiles], name: str, data: Path) -> SubjectFiles:
    for files in subjects:
        if files.name == name:
            return files
    known = ", ".join(f.name for f in subjects)
    raise InputError(f"no subject '{name}' in the data folder (subjects: {known})", data)


def refuse_to_overwrite(paths: Sequence[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise InputError("the output folder already has this analysis (use --overwrite)", existing[0])


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, png: Path, dpi: int = 100) -> Path:
    plt = pyplot()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return png




def show_image(ax, image: np.ndarray, title: str | None = None, **imshow) -> None:
    """One picture without ticks; rotated as in the demo's Fig. 3 so both figures share one orientation."""
    ax.imshow(np.rot90(image), **imshow)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def grey_range(target: np.ndarray, fov: np.ndarray) -> tuple[float, float]:
    """Grey scale of one modality: background (-1) to the 99.5th percentile of its ground truth in the FOV."""
    return -1.0, float(np.percentile(target[fov], 99.5)) if fov.any() else 1.0


# ----------------------------------------------------------------------------------------------------
# Section 6.1, Fig. 4: alignment of the z_1 representations across input subsets
# ----------------------------------------------------------------------------------------------------


def central_slices(slices: np.ndarray, count: int | None) -> np.ndarray:
    """The `count` slices around the middle of the field-of-view sweep (all of them for None)."""
    if count is None or count >= len(slices):
        return np.asarray(slices)
    start = (len(slices) - count) // 2
    return np.asarray(slices[start:start + count])

"""What the two analyses of Section 6 share: a model with latent variables to analyse, the subject to show,
the refusal to overwrite an earlier analysis, and the look of their figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmhvae.errors import InputError, refuse_to_overwrite
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
# Model, subject, output files
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
    """The subject called `name`; the error lists the subjects there are."""
    for files in subjects:
        if files.name == name:
            return files
    known = ", ".join(f.name for f in subjects)
    raise InputError(f"no subject '{name}' in the data folder (subjects: {known})", data)


def refuse_to_overwrite_analysis(paths: Sequence[Path], overwrite: bool) -> None:
    """An earlier analysis in the output folder is kept unless --overwrite (the first file found is named)."""
    for path in paths:
        refuse_to_overwrite(path, overwrite, problem="the output folder already has this analysis")


# ----------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, png: Path, dpi: int = 100) -> Path:
    """Write `fig` as a PNG (whole or not at all) and release it."""
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

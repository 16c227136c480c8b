"""Section 6.1, Fig. 4 of Dorent et al.: do the modalities share one latent representation?

For one subject, the posterior mean of the finest latent group z_1 (one C_1-vector per pixel) is computed from
every non-empty subset of the subject's modalities. One PCA is fitted on pixel descriptors drawn from all
subsets (the paper: N = 10,000 random pixels of one patient), the first three components are shown as RGB, one
picture per input subset. If the mixture of products of experts aligns the modalities, the pictures look alike.
Two numbers per subset make this quantitative: the mean per-pixel cosine similarity between its z_1
descriptors and those of the full input, and the linear CKA (centred kernel alignment) between the two
descriptor sets.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmhvae.errors import InputError
from mmhvae.experiments.analyses.common import (
    AnalysisResult,
    find_subject,
    load_model,
    pyplot,
    refuse_to_overwrite_analysis,
    save_figure,
    show_image,
    subject_folder,
)
from mmhvae.inference.predict import prepare_for_model
from mmhvae.io.files import write_csv_atomic, write_text_atomic
from mmhvae.io.layouts import SubjectFiles, discover_subjects
from mmhvae.io.subjects import load_subject
from mmhvae.modalities import ModalitySet, Subset, non_empty_subsets, subset_label
from mmhvae.preprocessing.prepare import PreparedSubject

log = logging.getLogger(__name__)

# Section 6.1: "randomly selecting N = 10,000 pixel representations from all slices ... and all combinations".
PCA_PIXELS = 10_000
# Colour scale of each principal component: these percentiles of its values map to 0 and 1, so a few
# extreme pixels do not wash out the picture.
COLOUR_PERCENTILES = (1.0, 99.0)


def central_slices(slices: np.ndarray, count: int | None) -> np.ndarray:
    """The `count` slices around the middle of the field-of-view sweep (all of them for None)."""
    if count is None or count >= len(slices):
        return np.asarray(slices)
    start = (len(slices) - count) // 2
    return np.asarray(slices[start:start + count])


@torch.inference_mode()
def z1_maps(model, prepared: PreparedSubject, subsets: Sequence[Subset], slices: np.ndarray,
            temperature: float = 0.0, seed: int = 0, slice_batch: int = 8) -> dict[Subset, np.ndarray]:
    """Posterior mean of z_1 [S, C_1, H, W] on `slices` for each input subset.

    As in `mmhvae.inference.synthesis.synthesise`: each slice batch is encoded once and decoded for every subset. At
    temperature 0 (default) the coarser groups z_>1 are their posterior means too, so the descriptors are
    deterministic; a positive temperature samples z_>1 (seeded).
    """
    modalities = ModalitySet(tuple(model.config.modalities))
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    present = torch.from_numpy(prepared.present).to(device)
    maps: dict[Subset, list[np.ndarray]] = {s: [] for s in subsets}
    for start in range(0, len(slices), slice_batch):
        ks = slices[start:start + slice_batch]
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(prepared.inputs[..., ks], -1, 0))).to(device)
        features = model.encode(x, present.expand(len(ks), len(modalities)))
        for subset in subsets:
            mask = torch.tensor(modalities.indicator(subset), dtype=torch.bool, device=device)
            out = model.decode(features, mask.expand(len(ks), len(modalities)), temperature, generator=generator)
            if out.z1_mean is None:
                raise InputError("this model's finest latent group z_1 is not stochastic: there is no z_1 "
                                 "posterior to analyse")
            maps[subset].append(out.z1_mean.float().cpu().numpy())
    return {s: np.concatenate(parts) for s, parts in maps.items()}


def pixel_descriptors(maps: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """z_1 maps [S, C, H, W] and the FOV [H, W, S] -> one C-vector per pixel inside the FOV, [N, C].

    The pixel order is the same for every subset, so rows of two subsets describe the same pixel.
    """
    return np.moveaxis(maps, 1, -1)[np.moveaxis(fov, -1, 0)]


def fit_pca(descriptors: dict[Subset, np.ndarray], max_pixels: int = PCA_PIXELS, seed: int = 0):
    """One PCA (first three components) on at most `max_pixels` descriptors drawn at random from all subsets.

    Returns the fitted PCA and its training sample (used to set the colour scale).
    """
    from sklearn.decomposition import PCA

    pool = np.concatenate(list(descriptors.values()))
    rng = np.random.default_rng(seed)
    sample = pool[rng.choice(len(pool), size=min(max_pixels, len(pool)), replace=False)]
    components = min(3, sample.shape[1], len(sample))
    return PCA(n_components=components, svd_solver="full").fit(sample), sample


def colour_scale(pca, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Low and high value of each component, shared by every subset so that equal colours mean equal z_1."""
    projected = pca.transform(sample)
    low, high = np.percentile(projected, COLOUR_PERCENTILES, axis=0)
    return low, np.where(high > low, high, low + 1.0)


def pca_rgb(pca, maps: np.ndarray, fov: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """One slice's z_1 [C, H, W] -> RGB [H, W, 3] of its first three principal components; black outside FOV.

    A model with fewer than three z_1 channels leaves the missing colours at 0.
    """
    channels, height, width = maps.shape
    projected = pca.transform(maps.reshape(channels, -1).T)
    scaled = np.clip((projected - low) / (high - low), 0.0, 1.0)
    rgb = np.zeros((height * width, 3))
    rgb[:, :scaled.shape[1]] = scaled
    rgb = rgb.reshape(height, width, 3)
    rgb[~fov] = 0.0
    return rgb


def per_pixel_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity between matching rows of two descriptor sets [N, C] (float64)."""
    return torch.nn.functional.cosine_similarity(torch.from_numpy(a).double(), torch.from_numpy(b).double(),
                                                 dim=1).numpy()


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment between two descriptor sets [N, C] of the same N pixels, in [0, 1].

    Kornblith et al., "Similarity of neural network representations revisited", ICML 2019, Eq. for linear
    CKA in feature space: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred X and Y. It is
    invariant to rotations and isotropic scaling of either set, so it asks whether two inputs give the same
    geometry of pixel descriptors even when their axes differ. (No installed library provides it.)
    """
    x = x.astype(np.float64) - x.mean(axis=0)
    y = y.astype(np.float64) - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norms = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    if norms == 0:  # a constant descriptor set has no geometry to compare
        return math.nan
    return float(np.clip(cross / norms, 0.0, 1.0))  # 1 + 1e-13 from rounding is still 1


def latent_similarity_rows(descriptors: dict[Subset, np.ndarray], full: Subset, subject: str) -> list[dict]:
    """Per input subset: mean (sd) per-pixel cosine similarity to the full input's z_1, and linear CKA."""
    rows = []
    reference = descriptors[full]
    for subset, values in descriptors.items():
        cosine = per_pixel_cosine(values, reference)
        rows.append({"subject": subject, "inputs": subset_label(subset), "modalities": len(subset),
                     "reference": subset_label(full), "pixels": len(values),
                     "cosine_mean": float(cosine.mean()), "cosine_sd": float(cosine.std()),
                     "linear_cka": linear_cka(values, reference)})
    return rows


def latent_figure(png: Path, rgb: dict[Subset, np.ndarray], inputs: dict[str, np.ndarray], fov: np.ndarray,
                  title: str) -> Path:
    """Fig. 4: first row, the subject's input images; then one RGB picture of z_1's PCA per input subset."""
    plt = pyplot()
    columns = max(4, len(inputs))
    subset_rows = math.ceil(len(rgb) / columns)
    fig, axes = plt.subplots(1 + subset_rows, columns, figsize=(1.9 * columns, 2.0 * (1 + subset_rows)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (key, image) in zip(axes[0], inputs.items()):
        ax.axis("on")
        show_image(ax, np.where(fov, image, -1.0), f"input {key}", cmap="gray", vmin=-1.0, vmax=1.0)
    for ax, (subset, picture) in zip(axes[1:].flat, rgb.items()):
        ax.axis("on")
        show_image(ax, picture, f"z1 from {subset_label(subset)}")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, png)


def latent_markdown(rows: list[dict], explained: np.ndarray, subject: str, slices: np.ndarray, temperature: float,
                    pca_pixels: int) -> str:
    variance = ", ".join(f"PC{i + 1}: {100 * v:.0f}%" for i, v in enumerate(explained))
    lines = [f"# Latent representation analysis (Section 6.1, Fig. 4): subject {subject}", "",
             f"z_1 posterior means at temperature {temperature:g} on {len(slices)} slice(s) "
             f"({int(slices[0])}-{int(slices[-1])}); PCA fitted on {pca_pixels} pixel descriptors drawn from every "
             f"input subset; explained variance {variance}.", "",
             "Similarity of each input subset's z_1 to that of the full input, over every pixel in the field "
             "of view: mean (sd) per-pixel cosine similarity, and linear CKA (Kornblith et al. 2019).", "",
             "| inputs | reference | pixels | cosine similarity | linear CKA |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['inputs']} | {r['reference']} | {r['pixels']} | {r['cosine_mean']:.3f} "
                     f"({r['cosine_sd']:.3f}) | {r['linear_cka']:.3f} |")
    return "\n".join(lines) + "\n"


LATENT_FIELDS = ("subject", "inputs", "modalities", "reference", "pixels", "cosine_mean", "cosine_sd", "linear_cka")


def analyse_latent(model: Path, data: Path, out: Path, subject: str | None = None, slices: int | None = 8,
                   temperature: float = 0.0, pca_pixels: int = PCA_PIXELS, seed: int = 0, device: str = "cpu",
                   overwrite: bool = False) -> AnalysisResult:
    """Section 6.1 / Fig. 4: PCA of the z_1 descriptors from every input subset of one subject.

    `subject`: a subject of `data` (default: the one with the most modalities, first by name); `slices`: the
    number of slices around the middle of the FOV sweep to analyse (None: all, as in the paper); the figure
    shows the middle one. Writes OUT/latent_pca.png, OUT/latent_similarity.csv and OUT/latent.md.
    """
    out = Path(out)
    png, table_csv, table_md = out / "latent_pca.png", out / "latent_similarity.csv", out / "latent.md"
    check_latent_settings(slices, temperature, pca_pixels)
    refuse_to_overwrite_analysis([png, table_csv, table_md], overwrite)
    loaded = load_model(model, device)
    modalities = ModalitySet(loaded.modalities)
    files = subject_with_subsets(discover_subjects(data), subject, modalities, Path(data))
    prepared = prepare_for_model(load_subject(files, modalities, loaded.preprocess.resample_to,
                                              loaded.preprocess.nan_to_num), loaded)
    chosen = central_slices(prepared.slices, slices)
    if len(chosen) == 0:
        raise InputError(f"subject '{files.name}' has an empty field of view", subject_folder(files))
    subsets = non_empty_subsets(files.present(modalities))
    full = subsets[-1]
    maps = z1_maps(loaded.model, prepared, subsets, chosen, temperature, seed)
    descriptors = {s: pixel_descriptors(m, prepared.fov[..., chosen]) for s, m in maps.items()}
    pca, sample = fit_pca(descriptors, pca_pixels, seed)
    write_latent_figure(png, prepared, maps, chosen, pca, colour_scale(pca, sample), subsets, modalities)

    rows = latent_similarity_rows(descriptors, full, files.name)
    write_csv_atomic(table_csv, rows, LATENT_FIELDS)
    write_text_atomic(table_md, latent_markdown(rows, pca.explained_variance_ratio_, files.name, chosen,
                                                temperature, len(sample)))
    log.info(f"{files.name}: z1 from {len(subsets)} input subsets on {len(chosen)} slice(s); wrote {png}, "
             f"{table_csv}, {table_md}")
    return AnalysisResult(rows, [png, table_csv, table_md])


def check_latent_settings(slices: int | None, temperature: float, pca_pixels: int) -> None:
    if slices is not None and slices < 1:
        raise InputError(f"--slices must be at least 1, got {slices}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"--temperature must be a finite number >= 0, got {temperature}")
    if pca_pixels < 3:
        raise InputError(f"the PCA needs at least 3 pixels, got {pca_pixels}")


def subject_with_subsets(subjects: Sequence[SubjectFiles], name: str | None, modalities: ModalitySet,
                         data: Path) -> SubjectFiles:
    """The subject called `name`, or by default the richest one (the most input subsets to compare); it needs
    two of the model's modalities at least."""
    if name is None:
        files = max(subjects, key=lambda f: len(f.present(modalities)))
    else:
        files = find_subject(subjects, name, data)
    present = files.present(modalities)
    if len(present) < 2:
        raise InputError(f"subject '{files.name}' has {subset_label(present) or 'none'} of the model's modalities "
                         f"({','.join(modalities)}); comparing input subsets needs at least two",
                         subject_folder(files))
    return files


def write_latent_figure(png: Path, prepared: PreparedSubject, maps: dict[Subset, np.ndarray], chosen: np.ndarray,
                        pca, scale: tuple[np.ndarray, np.ndarray], subsets: list[Subset],
                        modalities: ModalitySet) -> Path:
    """Fig. 4 on the middle analysed slice; the full input first, as the paper's panel (a)."""
    middle = len(chosen) // 2
    k = int(chosen[middle])
    full = subsets[-1]
    rgb = {s: pca_rgb(pca, maps[s][middle], prepared.fov[..., k], *scale) for s in [full, *subsets[:-1]]}
    images = {key: prepared.inputs[modalities.index(key), ..., k] for key in full}
    variance = ", ".join(f"PC{i + 1} {100 * v:.0f}%" for i, v in enumerate(pca.explained_variance_ratio_))
    return latent_figure(png, rgb, images, prepared.fov[..., k],
                         f"{prepared.name}, slice {k}: first principal components of z1 as RGB ({variance})")

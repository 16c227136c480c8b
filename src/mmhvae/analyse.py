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

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmhvae import metrics
from mmhvae.data.dataset import PreparedSubject
from mmhvae.errors import InputError
from mmhvae.evaluate import prepared_for_evaluation, score, summarise
from mmhvae.files import atomic_path, write_csv_atomic, write_text_atomic
from mmhvae.io import SubjectFiles, discover_subjects, load_subject
from mmhvae.modalities import ModalitySet, Subset, non_empty_subsets, require_key, subset_label
from mmhvae.model.registry import ZERO_IMPUTATION_NETWORKS
from mmhvae.model_file import LoadedModel, load_model_file
from mmhvae.predict import prepare_for_model, resolve_device, synthesise

DEFAULT_TEMPERATURES = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_PAIRS = (("us", "t2"), ("us", "t1c"))
# Section 6.1: "randomly selecting N = 10,000 pixel representations from all slices ... and all combinations".
PCA_PIXELS = 10_000
# Colour scale of each principal component: these percentiles of its values map to 0 and 1, so a few
# extreme pixels do not wash out the picture.
COLOUR_PERCENTILES = (1.0, 99.0)
METRICS = ("psnr", "ssim", "lpips")


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


@torch.inference_mode()
def z1_maps(model, prepared: PreparedSubject, subsets: Sequence[Subset], slices: np.ndarray,
            temperature: float = 0.0, seed: int = 0, slice_batch: int = 8) -> dict[Subset, np.ndarray]:
    """Posterior mean of z_1 [S, C_1, H, W] on `slices` for each input subset.

    As in `mmhvae.predict.synthesise`: each slice batch is encoded once and decoded for every subset. At
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
    if slices is not None and slices < 1:
        raise InputError(f"--slices must be at least 1, got {slices}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"--temperature must be a finite number >= 0, got {temperature}")
    if pca_pixels < 3:
        raise InputError(f"the PCA needs at least 3 pixels, got {pca_pixels}")
    refuse_to_overwrite([png, table_csv, table_md], overwrite)
    loaded = load_model(model, device)
    modalities = ModalitySet(loaded.modalities)
    subjects = discover_subjects(data)
    if subject is None:  # the richest subject: the most input subsets to compare
        files = max(subjects, key=lambda f: len(f.present(modalities)))
    else:
        files = find_subject(subjects, subject, Path(data))
    present = files.present(modalities)
    if len(present) < 2:
        raise InputError(f"subject '{files.name}' has {subset_label(present) or 'none'} of the model's modalities "
                         f"({','.join(modalities)}); comparing input subsets needs at least two",
                         subject_folder(files))

    prepared = prepare_for_model(load_subject(files, modalities, loaded.preprocess.resample_to,
                                              loaded.preprocess.nan_to_num), loaded)
    chosen = central_slices(prepared.slices, slices)
    if len(chosen) == 0:
        raise InputError(f"subject '{files.name}' has an empty field of view", subject_folder(files))
    subsets = non_empty_subsets(present)
    full = subsets[-1]
    maps = z1_maps(loaded.model, prepared, subsets, chosen, temperature, seed)
    fov = prepared.fov[..., chosen]
    descriptors = {s: pixel_descriptors(m, fov) for s, m in maps.items()}
    pca, sample = fit_pca(descriptors, pca_pixels, seed)
    low, high = colour_scale(pca, sample)

    # Figure: the middle analysed slice; the full input first, as the paper's panel (a).
    middle = len(chosen) // 2
    k = int(chosen[middle])
    order = [full] + subsets[:-1]
    rgb = {s: pca_rgb(pca, maps[s][middle], prepared.fov[..., k], low, high) for s in order}
    images = {key: prepared.inputs[modalities.index(key), ..., k] for key in present}
    variance = ", ".join(f"PC{i + 1} {100 * v:.0f}%" for i, v in enumerate(pca.explained_variance_ratio_))
    latent_figure(png, rgb, images, prepared.fov[..., k],
                  f"{files.name}, slice {k}: first principal components of z1 as RGB ({variance})")

    rows = latent_similarity_rows(descriptors, full, files.name)
    write_csv_atomic(table_csv, rows, LATENT_FIELDS)
    write_text_atomic(table_md, latent_markdown(rows, pca.explained_variance_ratio_, files.name, chosen,
                                                temperature, len(sample)))
    print(f"{files.name}: z1 from {len(subsets)} input subsets on {len(chosen)} slice(s); wrote {png}, "
          f"{table_csv}, {table_md}")
    return AnalysisResult(rows, [png, table_csv, table_md])


# ----------------------------------------------------------------------------------------------------
# Section 6.2, Fig. 5: quality and diversity of the samples against the temperature
# ----------------------------------------------------------------------------------------------------

Pair = tuple[Subset, str]


def check_temperatures(temperatures: Sequence[float]) -> tuple[float, ...]:
    """Finite, non-negative temperatures, sorted and without repeats."""
    values = []
    for t in temperatures:
        try:
            value = float(t)
        except (TypeError, ValueError):
            raise InputError(f"temperature '{t}' is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise InputError(f"temperatures must be finite numbers >= 0, got {t}")
        values.append(value)
    if not values:
        raise InputError("no temperature given")
    return tuple(sorted(set(values)))


def parse_pairs(pairs: Sequence[tuple[str, str]], modalities: ModalitySet) -> list[Pair]:
    """(source, target) pairs -> (input subset, target key); a source may be 'us+t2' (several inputs)."""
    parsed = []
    for pair in pairs:
        if len(pair) != 2:
            raise InputError(f"a pair is (source, target), got {pair}")
        source, target = pair
        keys = [require_key(k) for k in str(source).split("+")]
        target = require_key(target)
        unknown = [k for k in [*keys, target] if k not in modalities]
        if unknown:
            raise InputError(f"pair {source} -> {target}: the model has no {unknown} (it has {','.join(modalities)})")
        parsed.append((modalities.ordered(keys), target))
    if not parsed:
        raise InputError("no source -> target pair given")
    return list(dict.fromkeys(parsed))


def pair_label(pair: Pair) -> str:
    return f"{subset_label(pair[0])} -> {pair[1]}"


def has_pair(files: SubjectFiles, pair: Pair) -> bool:
    """The subject has the inputs and the ground truth of the pair."""
    return all(k in files.modalities for k in (*pair[0], pair[1]))


def temperature_rows(loaded: LoadedModel, prepared: PreparedSubject, pairs: Sequence[Pair],
                     temperatures: Sequence[float], with_lpips: bool, seed: int = 0) -> list[dict]:
    """Per-slice scores of one subject: one sample per temperature and pair, against the harmonised target.

    Each temperature draws its noise from the same seeded stream, so the samples at different temperatures
    differ by the temperature, not by the luck of the draw.
    """
    modalities = ModalitySet(loaded.modalities)
    sources = list(dict.fromkeys(source for source, _ in pairs))  # pairs sharing a source share one synthesis
    rows = []
    for temperature in temperatures:
        results = synthesise(loaded.model, prepared, sources, temperature, generator_seed=seed)
        by_source = {r.subset: r for r in results}
        for source, target in pairs:
            j = modalities.index(target)
            for r in score(by_source[source].mean[j], prepared.targets[j], prepared.fov, with_lpips):
                rows.append({"subject": prepared.name, "slice": r["slice"], "temperature": temperature,
                             "inputs": subset_label(source), "target": target, "psnr": r["psnr"],
                             "ssim": r["ssim"], "lpips": r.get("lpips", math.nan)})
    return rows


def summarise_over_subjects(rows: list[dict]) -> list[dict]:
    """Per (pair, temperature): each subject's mean over slices, then mean and sd over subjects."""
    per_subject = summarise(rows, ("inputs", "target", "temperature", "subject"))
    groups: dict[tuple, list[dict]] = {}
    for (inputs, target, temperature, _), entry in per_subject.items():
        groups.setdefault((inputs, target, temperature), []).append(entry)
    summary = []
    for (inputs, target, temperature), entries in groups.items():
        row = {"inputs": inputs, "target": target, "temperature": temperature, "subjects": len(entries),
               "slices": sum(e["n"] for e in entries)}
        for name in METRICS:
            values = np.array([e[name][0] for e in entries])
            values = values[np.isfinite(values)]
            row[f"{name}_mean"] = float(values.mean()) if values.size else math.nan
            row[f"{name}_sd"] = float(values.std()) if values.size else math.nan
        summary.append(row)
    return summary


def figure_samples(loaded: LoadedModel, prepared: PreparedSubject, pair: Pair, temperatures: Sequence[float],
                   slice_index: int, samples: int, seed: int) -> np.ndarray:
    """Samples of the pair's target on one slice, [T, K, H, W]. Sample i uses generator seed `seed` + i at
    every temperature, so a column of the figure shows one noise draw scaled by T."""
    one_slice = dataclasses.replace(prepared, slices=np.array([slice_index]))  # synthesise only this slice
    j = ModalitySet(loaded.modalities).index(pair[1])
    images = np.zeros((len(temperatures), samples, *prepared.fov.shape[:2]), np.float32)
    for t, temperature in enumerate(temperatures):
        for i in range(samples):
            (result,) = synthesise(loaded.model, one_slice, [pair[0]], temperature, generator_seed=seed + i)
            images[t, i] = result.mean[j, ..., slice_index]
    return images


def temperature_figure(png: Path, samples: dict[Pair, np.ndarray], truths: dict[Pair, np.ndarray], fov: np.ndarray,
                       temperatures: Sequence[float], title: str) -> Path:
    """Fig. 5: rows, temperatures; columns, for each pair, its samples and the ground truth."""
    plt = pyplot()
    per_pair = next(iter(samples.values())).shape[1] + 1
    columns = per_pair * len(samples)
    fig, axes = plt.subplots(len(temperatures), columns, figsize=(1.6 * columns, 1.7 * len(temperatures)),
                             squeeze=False)
    for p, (pair, images) in enumerate(samples.items()):
        vmin, vmax = grey_range(truths[pair], fov)
        for i, temperature in enumerate(temperatures):
            for k in range(per_pair):
                image = images[i, k] if k < per_pair - 1 else truths[pair]
                label = None
                if i == 0:
                    label = f"{pair_label(pair)}\nsample {k + 1}" if k < per_pair - 1 else f"{pair[1]} ground truth"
                ax = axes[i, p * per_pair + k]
                show_image(ax, np.where(fov, image, -1.0), label, cmap="gray", vmin=vmin, vmax=vmax)
                if p == 0 and k == 0:
                    ax.set_ylabel(f"T = {temperature:g}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, png)


def temperature_plot(png: Path, summary: list[dict], metric_names: Sequence[str]) -> Path:
    """Each metric against the temperature, one line per pair; error bars: sd over subjects."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metric_names), figsize=(3.6 * len(metric_names), 3.0), squeeze=False)
    labels = list(dict.fromkeys(f"{r['inputs']} -> {r['target']}" for r in summary))
    for ax, name in zip(axes[0], metric_names):
        for label in labels:
            points = sorted((r for r in summary if f"{r['inputs']} -> {r['target']}" == label),
                            key=lambda r: r["temperature"])
            ax.errorbar([r["temperature"] for r in points], [r[f"{name}_mean"] for r in points],
                        yerr=[r[f"{name}_sd"] for r in points], marker="o", capsize=3, label=label)
        ax.set_xlabel("temperature T")
        ax.set_ylabel(name.upper())
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, png)


def sample_spread(images: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Diversity of the figure samples [T, K, H, W]: per temperature, the mean over FOV pixels of the sd
    across samples (network scale; 0 at T = 0, where every sample is the posterior mean)."""
    if images.shape[1] < 2:
        return np.full(images.shape[0], math.nan)
    return images.std(axis=1, ddof=1)[:, fov].mean(axis=1)


def temperature_markdown(summary: list[dict], spreads: dict[Pair, np.ndarray], temperatures: Sequence[float],
                         metric_names: Sequence[str], figure_subject: str, slice_index: int) -> str:
    header = ["pair", "T", "subjects", "slices"] + [n.upper() for n in metric_names]
    lines = ["# Samples against temperature (Section 6.2, Fig. 5)", "",
             "One sample per subject, pair and temperature (posterior standard deviations scaled by T), scored "
             f"per slice inside the field of view against the harmonised target ({metrics.SCALE_NOTE}). "
             "Mean (sd) over subjects of each subject's mean over slices.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in summary:
        cells = [f"{r['inputs']} -> {r['target']}", f"{r['temperature']:g}", str(r["subjects"]), str(r["slices"])]
        for name in metric_names:
            digits = 2 if name == "psnr" else 3
            cells.append(f"{r[f'{name}_mean']:.{digits}f} ({r[f'{name}_sd']:.{digits}f})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Sample diversity in the figure ({figure_subject}, slice {slice_index}): mean over FOV pixels "
              "of the per-pixel sd across the samples (network scale).", "",
              "| pair | " + " | ".join(f"T = {t:g}" for t in temperatures) + " |",
              "|---|" + "---|" * len(temperatures)]
    for pair, spread in spreads.items():
        lines.append(f"| {pair_label(pair)} | " + " | ".join(f"{s:.3f}" for s in spread) + " |")
    return "\n".join(lines) + "\n"


TEMPERATURE_FIELDS = ("subject", "slice", "temperature", "inputs", "target", "psnr", "ssim", "lpips")


def analyse_temperature(model: Path, data: Path, out: Path, temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
                        pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS, with_lpips: bool = True,
                        subject: str | None = None, samples: int = 3, seed: int = 0, device: str = "cpu",
                        overwrite: bool = False) -> AnalysisResult:
    """Section 6.2 / Fig. 5: synthesis quality and diversity against the sampling temperature.

    Every subject of `data` with a pair's inputs and target is scored for that pair (PSNR, SSIM and, with
    `with_lpips`, LPIPS); the figure shows `samples` samples per temperature of `subject` (default: the first
    subject with every pair) on its middle FOV slice. Writes OUT/temperature_samples.png,
    OUT/temperature_metrics.csv (per slice), OUT/temperature_summary.csv, OUT/temperature.md and
    OUT/temperature_plot.png. Returns the summary rows.
    """
    out = Path(out)
    names = ("temperature_samples.png", "temperature_metrics.csv", "temperature_summary.csv", "temperature.md",
             "temperature_plot.png")
    figure_png, slices_csv, summary_csv, table_md, plot_png = (out / n for n in names)
    temperatures = check_temperatures(temperatures)
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    refuse_to_overwrite([out / n for n in names], overwrite)
    loaded = load_model(model, device)
    modalities = ModalitySet(loaded.modalities)
    pairs = parse_pairs(pairs, modalities)
    subjects = discover_subjects(data)
    for pair in pairs:
        if not any(has_pair(f, pair) for f in subjects):
            raise InputError(f"no subject has both the inputs and the ground truth of {pair_label(pair)}", data)
    if subject is None:
        complete = [f for f in subjects if all(has_pair(f, p) for p in pairs)]
        if not complete:
            raise InputError("no subject has every pair's inputs and ground truth; name one with --subject", data)
        shown = complete[0]
    else:
        shown = find_subject(subjects, subject, Path(data))
        lacking = [pair_label(p) for p in pairs if not has_pair(shown, p)]
        if lacking:
            raise InputError(f"subject '{shown.name}' lacks a modality of {', '.join(lacking)}", subject_folder(shown))

    rows, figure_subject = [], None
    for files in subjects:
        wanted = [p for p in pairs if has_pair(files, p)]
        if not wanted:
            print(f"{files.name}: skipped (has no pair's inputs and ground truth)")
            continue
        prepared = prepared_for_evaluation(files, loaded)
        rows += temperature_rows(loaded, prepared, wanted, temperatures, with_lpips, seed)
        if files.name == shown.name:
            figure_subject = prepared
        print(f"{files.name}: {', '.join(pair_label(p) for p in wanted)} at {len(temperatures)} temperatures")
    assert figure_subject is not None  # `shown` has every pair, so it was prepared above
    summary = summarise_over_subjects(rows)
    summary.sort(key=lambda r: ([pair_label(p) for p in pairs].index(f"{r['inputs']} -> {r['target']}"),
                                r["temperature"]))

    k = int(figure_subject.slices[len(figure_subject.slices) // 2])
    fov = figure_subject.fov[..., k]
    images = {p: figure_samples(loaded, figure_subject, p, temperatures, k, samples, seed) for p in pairs}
    truths = {p: figure_subject.targets[modalities.index(p[1]), ..., k] for p in pairs}
    temperature_figure(figure_png, images, truths, fov, temperatures,
                       f"{figure_subject.name}, slice {k}: samples against temperature T")
    metric_names = METRICS if with_lpips else METRICS[:2]
    summary_fields = ["inputs", "target", "temperature", "subjects", "slices"]
    summary_fields += [f"{n}_{s}" for n in metric_names for s in ("mean", "sd")]
    write_csv_atomic(slices_csv, rows, TEMPERATURE_FIELDS)
    write_csv_atomic(summary_csv, summary, summary_fields)
    spreads = {p: sample_spread(images[p], fov) for p in pairs}
    write_text_atomic(table_md, temperature_markdown(summary, spreads, temperatures, metric_names,
                                                     figure_subject.name, k))
    temperature_plot(plot_png, summary, metric_names)
    print(f"wrote {figure_png}, {slices_csv}, {summary_csv}, {table_md} and {plot_png}")
    return AnalysisResult(summary, [figure_png, slices_csv, summary_csv, table_md, plot_png])

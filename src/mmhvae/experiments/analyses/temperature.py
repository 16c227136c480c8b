"""Section 6.2, Fig. 5 of Dorent et al.: what the sampling temperature does to the syntheses.

Samples at several temperatures T (the posterior standard deviations scaled by T) for source -> target pairs
(US -> T2 and US -> T1c by default): one figure for one subject, and PSNR/SSIM/LPIPS against the harmonised
target inside the field of view (the scoring of `mmhvae evaluate`), averaged over the subjects of a data folder.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmhvae.errors import InputError
from mmhvae.evaluation.metrics import SCALE_NOTE
from mmhvae.evaluation.scoring import prepared_for_evaluation, score
from mmhvae.evaluation.statistics import summarise
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
from mmhvae.inference.synthesis import synthesise
from mmhvae.io.files import write_csv_atomic, write_text_atomic
from mmhvae.io.layouts import SubjectFiles, discover_subjects
from mmhvae.modalities import ModalitySet, Subset, require_key, subset_label
from mmhvae.model_file import LoadedModel
from mmhvae.preprocessing.prepare import PreparedSubject

log = logging.getLogger(__name__)

DEFAULT_TEMPERATURES = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_PAIRS = (("us", "t2"), ("us", "t1c"))
METRICS = ("psnr", "ssim", "lpips")


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


def grey_range(target: np.ndarray, fov: np.ndarray) -> tuple[float, float]:
    """Grey scale of one modality: background (-1) to the 99.5th percentile of its ground truth in the FOV."""
    return -1.0, float(np.percentile(target[fov], 99.5)) if fov.any() else 1.0


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
             f"per slice inside the field of view against the harmonised target ({SCALE_NOTE}). "
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
TEMPERATURE_OUTPUTS = ("temperature_samples.png", "temperature_metrics.csv", "temperature_summary.csv",
                       "temperature.md", "temperature_plot.png")


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
    outputs = [out / n for n in TEMPERATURE_OUTPUTS]
    temperatures = check_temperatures(temperatures)
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    refuse_to_overwrite_analysis(outputs, overwrite)
    loaded = load_model(model, device)
    pairs = parse_pairs(pairs, ModalitySet(loaded.modalities))
    subjects = discover_subjects(data)
    shown = subject_to_show(subjects, pairs, subject, data)
    rows, figure_subject = score_subjects(loaded, subjects, pairs, temperatures, with_lpips, seed, shown.name)
    summary = summarise_over_subjects(rows)
    summary.sort(key=lambda r: ([pair_label(p) for p in pairs].index(f"{r['inputs']} -> {r['target']}"),
                                r["temperature"]))
    write_temperature_outputs(outputs, loaded, figure_subject, pairs, temperatures, samples, seed, rows, summary,
                              METRICS if with_lpips else METRICS[:2])
    log.info(f"wrote {', '.join(map(str, outputs[:-1]))} and {outputs[-1]}")
    return AnalysisResult(summary, outputs)


def subject_to_show(subjects: Sequence[SubjectFiles], pairs: Sequence[Pair], name: str | None,
                    data: str | Path) -> SubjectFiles:
    """The figure's subject: `name`, or by default the first subject with every pair. Every pair must be
    scorable on some subject of `data`."""
    for pair in pairs:
        if not any(has_pair(f, pair) for f in subjects):
            raise InputError(f"no subject has both the inputs and the ground truth of {pair_label(pair)}", data)
    if name is None:
        complete = [f for f in subjects if all(has_pair(f, p) for p in pairs)]
        if not complete:
            raise InputError("no subject has every pair's inputs and ground truth; name one with --subject", data)
        return complete[0]
    shown = find_subject(subjects, name, Path(data))
    lacking = [pair_label(p) for p in pairs if not has_pair(shown, p)]
    if lacking:
        raise InputError(f"subject '{shown.name}' lacks a modality of {', '.join(lacking)}", subject_folder(shown))
    return shown


def score_subjects(loaded: LoadedModel, subjects: Sequence[SubjectFiles], pairs: Sequence[Pair],
                   temperatures: Sequence[float], with_lpips: bool, seed: int,
                   shown: str) -> tuple[list[dict], PreparedSubject]:
    """Per-slice rows of every subject with some pair, and the prepared subject `shown` (for the figure)."""
    rows, figure_subject = [], None
    for files in subjects:
        wanted = [p for p in pairs if has_pair(files, p)]
        if not wanted:
            log.info(f"{files.name}: skipped (has no pair's inputs and ground truth)")
            continue
        prepared = prepared_for_evaluation(files, loaded)
        rows += temperature_rows(loaded, prepared, wanted, temperatures, with_lpips, seed)
        if files.name == shown:
            figure_subject = prepared
        log.info(f"{files.name}: {', '.join(pair_label(p) for p in wanted)} at {len(temperatures)} temperatures")
    assert figure_subject is not None  # `shown` has every pair, so it was prepared above
    return rows, figure_subject


def write_temperature_outputs(outputs: list[Path], loaded: LoadedModel, figure_subject: PreparedSubject,
                              pairs: Sequence[Pair], temperatures: Sequence[float], samples: int, seed: int,
                              rows: list[dict], summary: list[dict], metric_names: Sequence[str]) -> None:
    """The figure of one subject's samples on its middle FOV slice, the two tables, the page and the plot."""
    figure_png, slices_csv, summary_csv, table_md, plot_png = outputs
    modalities = ModalitySet(loaded.modalities)
    k = int(figure_subject.slices[len(figure_subject.slices) // 2])
    fov = figure_subject.fov[..., k]
    images = {p: figure_samples(loaded, figure_subject, p, temperatures, k, samples, seed) for p in pairs}
    truths = {p: figure_subject.targets[modalities.index(p[1]), ..., k] for p in pairs}
    temperature_figure(figure_png, images, truths, fov, temperatures,
                       f"{figure_subject.name}, slice {k}: samples against temperature T")
    summary_fields = ["inputs", "target", "temperature", "subjects", "slices"]
    summary_fields += [f"{n}_{s}" for n in metric_names for s in ("mean", "sd")]
    write_csv_atomic(slices_csv, rows, TEMPERATURE_FIELDS)
    write_csv_atomic(summary_csv, summary, summary_fields)
    spreads = {p: sample_spread(images[p], fov) for p in pairs}
    write_text_atomic(table_md, temperature_markdown(summary, spreads, temperatures, metric_names,
                                                     figure_subject.name, k))
    temperature_plot(plot_png, summary, metric_names)

"""Evaluation of unified synthesis: every input subset x every target, per slice, inside the FOV.

For each test subject, each non-empty subset of its present modalities is fed to the model and every
modality with ground truth is scored against its harmonised target (Section 4.4.1): *harmonisation* when
the target is among the inputs, *synthesis* when it is not. Metrics are computed per 2D slice on the
network's scale (data range 2; SSIM with the background as zero intensity, see `mmhvae.metrics`), inside
the field of view.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mmhvae import metrics
from mmhvae.data.dataset import PreparedSubject, load_prepared
from mmhvae.errors import InputError
from mmhvae.files import write_csv_atomic, write_text_atomic
from mmhvae.io import SubjectFiles, discover_subjects, load_subject, read_every_subject_first
from mmhvae.modalities import ModalitySet, Subset, non_empty_subsets, subset_label
from mmhvae.model_file import LoadedModel, load_model_file
from mmhvae.predict import DEFAULT_TEMPERATURE, check_sampling, synthesise

CSV_FIELDS = ("subject", "slice", "method", "inputs", "target", "task", "psnr", "ssim", "lpips")


def score(prediction: np.ndarray, target: np.ndarray, fov: np.ndarray, with_lpips: bool) -> list[dict]:
    """Per-slice metrics of one predicted volume [H, W, S] against its target, inside the FOV."""
    return metrics.volume_metrics(prediction, target, fov, axis=2, data_range=2.0, with_lpips=with_lpips)


def evaluate_subject(loaded: LoadedModel, prepared: PreparedSubject, method: str = "mmhvae",
                     subsets: Sequence[Subset] | None = None, temperature: float = DEFAULT_TEMPERATURE,
                     with_lpips: bool = False, samples: int = 1) -> tuple[list[dict], dict[Subset, np.ndarray]]:
    """Rows of the long table for one subject, and the predictions [M, H, W, S] of each subset.

    With `samples` > 1 each prediction is the mean of that many samples, as `mmhvae predict --samples` writes.
    """
    modalities = ModalitySet(loaded.modalities)
    present = modalities.from_indicator(prepared.present.astype(int))
    subsets = list(subsets or non_empty_subsets(present))
    results = synthesise(loaded.model, prepared, subsets, temperature, samples)
    rows = []
    for result in results:
        for key in present:
            j = modalities.index(key)
            task = "harmonisation" if key in result.subset else "synthesis"
            for r in score(result.mean[j], prepared.targets[j], prepared.fov, with_lpips):
                rows.append({"subject": prepared.name, "slice": r["slice"], "method": method,
                             "inputs": subset_label(result.subset), "target": key, "task": task,
                             "psnr": r["psnr"], "ssim": r["ssim"], "lpips": r.get("lpips", float("nan"))})
    return rows, {r.subset: r.mean for r in results}


def mean_images(subjects: Iterable[PreparedSubject], modalities: Sequence[str]) -> np.ndarray:
    """The training set's mean image of each modality [M, H, W] (network scale), over the foreground slices
    of the subjects where that modality was observed: the floor every synthesis method must beat."""
    sums, counts = None, np.zeros(len(modalities))
    for subject in subjects:
        if sums is None:
            sums = np.zeros(subject.targets.shape[:3])
        for j in np.flatnonzero(subject.present):
            sums[j] += subject.targets[j][..., subject.slices].sum(axis=-1)
            counts[j] += len(subject.slices)
    if sums is None:
        raise InputError("the mean-image baseline needs training subjects; there are none")
    missing = [m for m, c in zip(modalities, counts) if not c]
    if missing:
        warnings.warn(f"no training images of {missing}: the mean-image baseline skips these targets", stacklevel=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts[:, None, None]).astype(np.float32)  # NaN for a modality never observed


def evaluate_mean_image(mean: np.ndarray, prepared: PreparedSubject, modalities: Sequence[str]) -> list[dict]:
    """Rows for the mean-image baseline: the same prediction whatever the inputs (so one row set per target)."""
    rows = []
    present = [m for m, p in zip(modalities, prepared.present) if p]
    prediction = np.repeat(mean[..., None], prepared.inputs.shape[-1], axis=-1)
    for key in present:
        j = list(modalities).index(key)
        if np.isnan(mean[j]).all():  # never observed in training: no floor for this target
            continue
        for subset in non_empty_subsets(present):
            task = "harmonisation" if key in subset else "synthesis"
            for r in score(prediction[j], prepared.targets[j], prepared.fov, False):
                rows.append({"subject": prepared.name, "slice": r["slice"], "method": "mean-image",
                             "inputs": subset_label(subset), "target": key, "task": task,
                             "psnr": r["psnr"], "ssim": r["ssim"], "lpips": float("nan")})
    return rows


def summarise(rows: Iterable[dict], by: Sequence[str] = ("method", "inputs", "target")) -> dict[tuple, dict]:
    """Mean and standard deviation of each metric over the rows of each group (subject-slice pairs)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in by)].append(row)
    summary = {}
    for key, members in groups.items():
        entry = {"n": len(members), "task": members[0].get("task")}
        for name in ("psnr", "ssim", "lpips"):
            values = np.array([float(m[name]) for m in members], float)
            values = values[np.isfinite(values)]
            entry[name] = (float(values.mean()), float(values.std())) if values.size else (float("nan"),) * 2
        summary[key] = entry
    return summary


def standard_error(values: Sequence[float]) -> float:
    """Standard error of a mean (sample sd / sqrt(n)); nan below two finite values."""
    finite = np.asarray(values, float)
    finite = finite[np.isfinite(finite)]
    return float(finite.std(ddof=1) / np.sqrt(finite.size)) if finite.size >= 2 else float("nan")


def subject_means(rows: Iterable[dict], by: Sequence[str] = ("method", "inputs", "target")) -> dict[tuple, dict]:
    """Per group, the mean over subjects of each subject's mean over slices (each subject weighs the same),
    and its standard error over subjects (`psnr_se`, `ssim_se`): how far a bar-crossing is from chance."""
    per_subject = summarise(rows, ("subject", *by))
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for key, entry in per_subject.items():
        grouped[key[1:]].append(entry)
    means = {}
    for key, entries in grouped.items():
        entry = {"subjects": len(entries), "task": entries[0]["task"]}
        for metric in ("psnr", "ssim"):
            per_subject_means = [e[metric][0] for e in entries]
            entry[metric] = float(np.nanmean(per_subject_means))
            entry[f"{metric}_se"] = standard_error(per_subject_means)
        means[key] = entry
    return means


def floor_comparison(rows: list[dict], method: str = "mmhvae", floor: str = "mean-image") -> str:
    """Markdown: for every (inputs, target), subject-averaged PSNR/SSIM of `method` (with the SSIM's standard
    error over subjects) and its PSNR margin over the `floor` method (the mean-image baseline)."""
    means = subject_means(rows)
    lines = ["| inputs | target | task | subjects | PSNR | SSIM | SSIM SE | floor PSNR | margin (dB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (name, inputs, target), entry in sorted(means.items(), key=lambda kv: (kv[0][1].count("+"), kv[0][1:])):
        if name != method:
            continue
        base = means.get((floor, inputs, target))
        base_psnr = base["psnr"] if base else float("nan")
        ssim_se = f"{entry['ssim_se']:.3f}" if np.isfinite(entry["ssim_se"]) else "-"  # one subject: no spread
        lines.append(f"| {inputs} | {target} | {entry['task']} | {entry['subjects']} | {entry['psnr']:.2f} | "
                     f"{entry['ssim']:.3f} | {ssim_se} | {base_psnr:.2f} | {entry['psnr'] - base_psnr:+.2f} |")
    return "\n".join(lines)


HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}
SIGNIFICANCE_LEVEL = 0.01


def significantly_best(rows: list[dict], metric: str, alpha: float = SIGNIFICANCE_LEVEL,
                       cell: Sequence[str] = ("inputs", "target"),
                       unit: Sequence[str] = ("subject", "slice")) -> set[tuple]:
    """(method, *cell) entries whose method beats every other method on that cell of the table.

    As in the paper: paired two-sided Wilcoxon signed-rank tests over the same units (by default the
    (subject, slice) pairs of one input combination and target), one per competing method,
    Bonferroni-corrected for the number of competitors, p < alpha; and a better mean.
    """
    from scipy.stats import wilcoxon

    values: dict[tuple, dict[str, dict[tuple, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        value = float(r[metric])
        if np.isfinite(value):
            values[tuple(r[k] for k in cell)][r["method"]][tuple(str(r[k]) for k in unit)] = value
    best = set()
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    for key, by_method in values.items():
        methods = list(by_method)
        if len(methods) < 2:
            continue
        for method in methods:
            wins = 0
            for other in methods:
                if other == method:
                    continue
                keys = sorted(set(by_method[method]) & set(by_method[other]))
                a = np.array([by_method[method][k] for k in keys])
                b = np.array([by_method[other][k] for k in keys])
                if len(keys) < 6 or np.allclose(a, b) or sign * (a.mean() - b.mean()) <= 0:
                    break
                if wilcoxon(a, b).pvalue * (len(methods) - 1) >= alpha:
                    break
                wins += 1
            if wins == len(methods) - 1:
                best.add((method, *key))
    return best


def format_cell(entry: dict | None, name: str, bold: bool) -> str:
    """'mean (sd)' of one metric, bold when significantly best; empty when the cell has no scores."""
    if entry is None:
        return ""
    mean, sd = entry[name]
    if not np.isfinite(mean):  # e.g. LPIPS of the mean-image floor, which is not computed
        return "-"
    digits = 2 if name == "psnr" else 3
    cell = f"{mean:.{digits}f} ({sd:.{digits}f})"
    return f"**{cell}**" if bold else cell


def method_summary(rows: list[dict], metric_names: Sequence[str] = ("psnr", "ssim", "lpips")) -> str:
    """Markdown: per method, mean (sd) of each metric over every (subject, slice, inputs, target) of each task.

    Bold: significantly better than every other method on that task (paired over the same scores)."""
    summary = summarise(rows, ("method", "task"))
    unit = ("subject", "slice", "inputs", "target")
    bold = {m: significantly_best(rows, m, cell=("task",), unit=unit) for m in metric_names}
    tasks = [t for t in ("synthesis", "harmonisation") if any(r["task"] == t for r in rows)]
    header = ["method"] + [f"{t} {m.upper()}" for t in tasks for m in metric_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = [method] + [format_cell(summary.get((method, t)), m, (method, t) in bold[m])
                            for t in tasks for m in metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_table(rows: list[dict], groups: Sequence[tuple[str, Sequence[tuple[str, str]]]],
                   modalities: Sequence[str], metric_names: Sequence[str] = ("psnr", "ssim", "lpips")) -> str:
    """Table II layout: one section per ablation group (title, [(row label, method name)]), columns target x
    metric averaged over every input combination (harmonisation and synthesis). A method may appear in
    several sections (the full model is the reference of each).

    Bold: significantly better than every other setting of its group (paired over subject, slice, inputs)."""
    targets = [m for m in modalities if any(r["target"] == m for r in rows)]
    header = ["setting"] + [f"{t} {m.upper()}" for t in targets for m in metric_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for title, members in groups:
        names = [name for _, name in members]
        chosen = [r for r in rows if r["method"] in names]
        summary = summarise(chosen, ("method", "target"))
        bold = {m: significantly_best(chosen, m, cell=("target",), unit=("subject", "slice", "inputs"))
                for m in metric_names}
        lines.append(f"| *{title}* |" + " |" * len(targets) * len(metric_names))
        for label, method in members:
            cells = [label] + [format_cell(summary.get((method, t)), m, (method, t) in bold[m])
                                for t in targets for m in metric_names]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(rows: list[dict], modalities: Sequence[str], metric_names=("psnr", "ssim")) -> str:
    """Table I layout: rows method x input combination, columns target x metric, 'mean (sd)'.

    Bold: significantly better than every other method in that cell (`significantly_best`)."""
    summary = summarise(rows)
    bold = {name: significantly_best(rows, name) for name in metric_names}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    subsets = sorted({r["inputs"] for r in rows}, key=lambda s: (s.count("+"), [modalities.index(k)
                                                                               for k in s.split("+")]))
    targets = [m for m in modalities if any(r["target"] == m for r in rows)]
    header = ["method", "inputs"] + [f"{t} {m.upper()}" for t in targets for m in metric_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        for inputs in subsets:
            cells = [method, inputs]
            for target in targets:
                entry = summary.get((method, inputs, target))
                for name in metric_names:
                    cell = format_cell(entry, name, (method, inputs, target) in bold[name])
                    cells.append(f"*{cell}*" if cell and target in inputs.split("+") else cell)
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Italic: harmonisation (the target is among the inputs); plain: synthesis. "
                 f"Mean (sd) over slices inside the field of view; {metrics.SCALE_NOTE}. "
                 f"Bold: better than every other method, paired Wilcoxon signed-rank, Bonferroni-corrected "
                 f"p < {SIGNIFICANCE_LEVEL}.")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> None:
    """The long table of scores (CSV_FIELDS)."""
    write_csv_atomic(path, rows, CSV_FIELDS)


def prepared_for_evaluation(files: SubjectFiles, loaded: LoadedModel) -> PreparedSubject:
    """Inputs, harmonised targets and FOV on the model grid; an authors' model gets its own input normalisation."""
    prepared = load_prepared(files, loaded.preprocess)
    if loaded.variant == "authors":
        from mmhvae.import_authors import prepare_subject_authors

        subject = load_subject(files, loaded.preprocess.modality_set, loaded.preprocess.resample_to,
                               loaded.preprocess.nan_to_num)
        prepared.inputs = prepare_subject_authors(subject, loaded.preprocess).inputs
    return prepared


def method_names(paths: Sequence[Path], loaded: Sequence[LoadedModel]) -> list[str]:
    """Table names of the models: the method recorded at training (`train --method`), made unique by file name."""
    names = [m.meta.get("method") or m.variant for m in loaded]
    return [f"{name} ({Path(path).stem})" if names.count(name) > 1 else name for name, path in zip(names, paths)]


def load_models(paths: Sequence[str | Path]) -> list[LoadedModel]:
    """Model files to compare in one table: the same modalities and preprocessing, or an input error."""
    models = [load_model_file(p) for p in paths]
    for path, other in zip(paths[1:], models[1:]):
        if other.preprocess != models[0].preprocess or other.modalities != models[0].modalities:
            raise InputError("models compared in one table need the same modalities and preprocessing as "
                             f"{paths[0]}", path)
    return models


def evaluation_rows(models: Sequence[LoadedModel], names: Sequence[str], subjects: Sequence[SubjectFiles],
                    temperature: float = DEFAULT_TEMPERATURE, with_lpips: bool = True,
                    mean: np.ndarray | None = None, samples: int = 1) -> list[dict]:
    """Long-table rows of every model (named `names`) on every test subject; `mean` adds the mean-image floor."""
    rows = []
    for files in subjects:
        for name, each in zip(names, models):
            prepared = prepared_for_evaluation(files, each)
            subject_rows, _ = evaluate_subject(each, prepared, name, temperature=temperature,
                                              with_lpips=with_lpips, samples=samples)
            rows += subject_rows
        if mean is not None:
            rows += evaluate_mean_image(mean, prepared, models[0].modalities)
        print(f"{files.name}: {len(subject_rows)} slice scores per model")
    return rows


def training_mean_images(subjects: Iterable[SubjectFiles], loaded: LoadedModel) -> np.ndarray:
    """The mean-image baseline of a training set, on the model's grid and scale."""
    return mean_images((load_prepared(f, loaded.preprocess) for f in subjects), loaded.modalities)


def write_results(out: Path, rows: list[dict], modalities: Sequence[str], with_lpips: bool = True,
                  preamble: str = "") -> None:
    """metrics.csv (long table) and table.md (Table I layout, plus the margin over the floor when present)."""
    if not rows:
        raise InputError("no subject had a modality of the model", out)
    write_csv(out / "metrics.csv", rows)
    metric_names = ("psnr", "ssim", "lpips") if with_lpips else ("psnr", "ssim")
    text = preamble + markdown_table(rows, list(modalities), metric_names) + "\n"
    names = list(dict.fromkeys(r["method"] for r in rows))
    if "mean-image" in names:
        text += ("\n## Mean synthesis and harmonisation scores per method\n\n" + method_summary(rows, metric_names)
                 + "\n")
        for name in names:
            if name != "mean-image":
                text += (f"\n## {name}: subject-averaged scores and margin over the mean-image floor\n\n"
                         "SSIM SE: standard error of the mean over subjects (sample sd / sqrt(subjects)).\n\n"
                         + floor_comparison(rows, name) + "\n")
    write_text_atomic(out / "table.md", text)
    print(f"wrote {out / 'metrics.csv'} and {out / 'table.md'}")


def note_targets_from_inputs(subjects: Sequence[SubjectFiles]) -> None:
    """Say when scores are against targets harmonised from the inputs themselves (real data) rather than given."""
    own = [f.name for f in subjects if not f.targets]
    if own:
        print(f"note: {len(own)} of {len(subjects)} subjects ({', '.join(own[:3])}{', ...' if len(own) > 3 else ''})"
              " have no targets/ folder: their targets are their own images, harmonised (Section 4.4.1; white "
              "matter from tissue.nii.gz, else by clustering)")


def settings_line(temperature: float, samples: int) -> str:
    """How the predictions of a table were drawn, for its first line."""
    drawn = "one sample" if samples == 1 else f"the mean of {samples} samples"
    return f"Predictions at temperature {temperature:g}, {drawn} each.\n\n"


def evaluate(model: str | Path | Sequence[str | Path], data: str | Path, out: str | Path,
             temperature: float = DEFAULT_TEMPERATURE, with_lpips: bool = True, method: str | None = None,
             overwrite: bool = False, mean_image_from: str | Path | None = None, samples: int = 1) -> list[dict]:
    """The `mmhvae evaluate` job: long CSV and Table I-style Markdown for every test subject in `data`.

    `model` may be several model files (methods compared in one table, with the paired tests); each is named
    by the method it was trained with, or `method` for a single model. `mean_image_from` (a training data
    folder) adds the mean-image baseline computed on it. `samples` > 1 scores the mean of that many samples per
    prediction (at `temperature`); table.md names both settings.
    """
    check_sampling(temperature, samples)
    out = Path(out)
    if (out / "metrics.csv").exists() and not overwrite:
        raise InputError("the output folder already has results (use --overwrite)", out)
    paths = [Path(model)] if isinstance(model, (str, Path)) else [Path(m) for m in model]
    models = load_models(paths)
    names = [method] if method is not None and len(models) == 1 else method_names(paths, models)
    subjects = discover_subjects(data)
    read_every_subject_first(subjects, lambda files: prepared_for_evaluation(files, models[0]))
    note_targets_from_inputs(subjects)
    mean = None if mean_image_from is None else training_mean_images(discover_subjects(mean_image_from), models[0])
    rows = evaluation_rows(models, names, subjects, temperature, with_lpips, mean, samples)
    if not rows:
        raise InputError("no subject had a modality of the model", data)
    write_results(out, rows, models[0].modalities, with_lpips, preamble=settings_line(temperature, samples))
    return rows

"""Markdown tables of the evaluation (Table I per input combination, Table II per ablation group, the
per-method summary and the margin over the mean-image floor), and the one Markdown table writer that every
table of the package uses."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from mmhvae.evaluation.metrics import SCALE_NOTE
from mmhvae.evaluation.statistics import SIGNIFICANCE_LEVEL, significantly_best, subject_means, summarise


def table_row(cells: Iterable[object]) -> str:
    """One Markdown table row: '| a | b |'."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def section_row(title: str, columns: int) -> str:
    """A row that titles the rows below it: the title in italics, then `columns` empty cells."""
    return f"| *{title}* |" + " |" * columns


def markdown_lines(header: Sequence[str], rows: Iterable[Iterable[object]] = ()) -> list[str]:
    """A Markdown table as lines: the header, the '|---|' line under it, then one line per row of cells."""
    return [table_row(header), "|" + "---|" * len(header)] + [table_row(cells) for cells in rows]


def floor_comparison(rows: list[dict], method: str = "mmhvae", floor: str = "mean-image") -> str:
    """Markdown: for every (inputs, target), subject-averaged PSNR/SSIM of `method` (with the SSIM's standard
    error over subjects) and its PSNR margin over the `floor` method (the mean-image baseline)."""
    means = subject_means(rows)
    lines = markdown_lines(["inputs", "target", "task", "subjects", "PSNR", "SSIM", "SSIM SE", "floor PSNR",
                            "margin (dB)"])
    for (name, inputs, target), entry in sorted(means.items(), key=lambda kv: (kv[0][1].count("+"), kv[0][1:])):
        if name != method:
            continue
        base = means.get((floor, inputs, target))
        base_psnr = base["psnr"] if base else float("nan")
        ssim_se = f"{entry['ssim_se']:.3f}" if np.isfinite(entry["ssim_se"]) else "-"  # one subject: no spread
        lines.append(table_row([inputs, target, entry["task"], entry["subjects"], f"{entry['psnr']:.2f}",
                                f"{entry['ssim']:.3f}", ssim_se, f"{base_psnr:.2f}",
                                f"{entry['psnr'] - base_psnr:+.2f}"]))
    return "\n".join(lines)


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
    table = [[method] + [format_cell(summary.get((method, t)), m, (method, t) in bold[m])
                         for t in tasks for m in metric_names]
             for method in dict.fromkeys(r["method"] for r in rows)]
    return "\n".join(markdown_lines(header, table))


def ablation_table(rows: list[dict], groups: Sequence[tuple[str, Sequence[tuple[str, str]]]],
                   modalities: Sequence[str], metric_names: Sequence[str] = ("psnr", "ssim", "lpips")) -> str:
    """Table II layout: one section per ablation group (title, [(row label, method name)]), columns target x
    metric averaged over every input combination (harmonisation and synthesis). A method may appear in
    several sections (the full model is the reference of each).

    Bold: significantly better than every other setting of its group (paired over subject, slice, inputs)."""
    targets = [m for m in modalities if any(r["target"] == m for r in rows)]
    header = ["setting"] + [f"{t} {m.upper()}" for t in targets for m in metric_names]
    lines = markdown_lines(header)
    for title, members in groups:
        names = [name for _, name in members]
        chosen = [r for r in rows if r["method"] in names]
        summary = summarise(chosen, ("method", "target"))
        bold = {m: significantly_best(chosen, m, cell=("target",), unit=("subject", "slice", "inputs"))
                for m in metric_names}
        lines.append(section_row(title, len(targets) * len(metric_names)))
        lines += [table_row([label] + [format_cell(summary.get((method, t)), m, (method, t) in bold[m])
                                       for t in targets for m in metric_names])
                  for label, method in members]
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
    lines = markdown_lines(header)
    for method in methods:
        for inputs in subsets:
            cells = [method, inputs]
            for target in targets:
                entry = summary.get((method, inputs, target))
                for name in metric_names:
                    cell = format_cell(entry, name, (method, inputs, target) in bold[name])
                    cells.append(f"*{cell}*" if cell and target in inputs.split("+") else cell)
            lines.append(table_row(cells))
    lines.append("")
    lines.append("Italic: harmonisation (the target is among the inputs); plain: synthesis. "
                 f"Mean (sd) over slices inside the field of view; {SCALE_NOTE}. "
                 f"Bold: better than every other method, paired Wilcoxon signed-rank, Bonferroni-corrected "
                 f"p < {SIGNIFICANCE_LEVEL}.")
    return "\n".join(lines)

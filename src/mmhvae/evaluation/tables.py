"""Markdown tables of the evaluation, with subjects as the unit: Table I per input combination, Table II per
ablation group, the per-method summary, the paired differences against a reference method, the margin over the
mean-image floor, and the one Markdown table writer that every table of the package uses."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from mmhvae.evaluation.metrics import SCALE_NOTE
from mmhvae.evaluation.statistics import (
    CONFIDENCE_LEVEL,
    HIGHER_IS_BETTER,
    SIGNIFICANCE_LEVEL,
    Comparison,
    Scores,
    against_reference,
    cell_scores,
    reach_note,
    significantly_best,
    subject_means,
    summarise,
)

FLOOR = "mean-image"


def table_row(cells: Iterable[object]) -> str:
    """One Markdown table row: '| a | b |'."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def section_row(title: str, columns: int) -> str:
    """A row that titles the rows below it: the title in italics, then `columns` empty cells."""
    return f"| *{title}* |" + " |" * columns


def markdown_lines(header: Sequence[str], rows: Iterable[Iterable[object]] = ()) -> list[str]:
    """A Markdown table as lines: the header, the '|---|' line under it, then one line per row of cells."""
    return [table_row(header), "|" + "---|" * len(header)] + [table_row(cells) for cells in rows]


def digits(metric: str) -> int:
    return 2 if metric == "psnr" else 3


def subject_count(rows: Sequence[dict]) -> int:
    return len({str(r["subject"]) for r in rows})


def seed_count(rows: Sequence[dict]) -> int:
    """Training seeds per method (the most any method has)."""
    seeds: dict[str, set] = {}
    for r in rows:
        seeds.setdefault(r["method"], set()).add(r.get("seed", 0) or 0)
    return max((len(s) for s in seeds.values()), default=1)


def spread_text(rows: Sequence[dict]) -> str:
    """What the parenthesis of a cell holds, in words, for a caption."""
    if subject_count(rows) < 2:
        return "mean (sd) over the slices of the one subject"
    seeds = seed_count(rows)
    if seeds > 1:
        return (f"mean over {subject_count(rows)} subjects and {seeds} training seeds (sd over subjects of "
                "their seed-averaged means; between-seed sd of the mean)")
    return f"mean (sd) over {subject_count(rows)} subjects of each subject's mean"


def format_scores(scores: Scores | None, metric: str, bold: bool, slices: dict | None = None) -> str:
    """'mean (sd)' of one cell, '(sd; seed sd)' with several seeds; with one subject the mean and sd of its
    slices (`slices`, a `summarise` entry); bold when significantly best; empty when the cell has no scores."""
    if scores is None:
        return "" if slices is None else "-"
    if scores.n < 2 and slices is not None:
        mean, sd = slices[metric]
        text = f"{mean:.{digits(metric)}f} ({sd:.{digits(metric)}f})"
    elif not math.isfinite(scores.mean):
        return "-"
    else:
        spread = f"{scores.sd:.{digits(metric)}f}"
        if len(scores.seeds) > 1:
            spread += f"; {scores.seed_sd:.{digits(metric)}f}"
        text = f"{scores.mean:.{digits(metric)}f} ({spread})"
    return f"**{text}**" if bold else text


def test_caption(rows: list[dict], cell: Sequence[str], metric_names: Sequence[str], alpha: float,
                 correction: str, what: str) -> str:
    """The sentence on the bold entries, and, when subjects are too few, why none can be bold."""
    if subject_count(rows) < 2:
        return "One subject: no test between methods is possible."
    text = (f"Bold: better than every other {what}, two-sided paired Wilcoxon signed-rank tests over subjects, "
            f"{correction.capitalize()}-corrected over the comparisons of the cell, p < {alpha:g}.")
    note = reach_note(rows, cell, metric_names[0], alpha, correction)
    return text + (" " + note if note else "")


def cell_table(rows: list[dict], cell: Sequence[str], metric_names: Sequence[str], alpha: float,
               correction: str) -> tuple[dict, dict, dict]:
    """Scores, bold entries and slice summaries of every cell, per metric."""
    scores = {m: cell_scores(rows, m, cell) for m in metric_names}
    bold = {m: significantly_best(rows, m, alpha, cell, correction) for m in metric_names}
    slices = summarise(rows, ("method", *cell))
    return scores, bold, slices


def markdown_table(rows: list[dict], modalities: Sequence[str], metric_names=("psnr", "ssim"),
                   alpha: float = SIGNIFICANCE_LEVEL, correction: str = "holm") -> str:
    """Table I layout: rows method x input combination, columns target x metric (`format_scores`)."""
    cell = ("inputs", "target")
    scores, bold, slices = cell_table(rows, cell, metric_names, alpha, correction)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    subsets = sorted({r["inputs"] for r in rows}, key=lambda s: (s.count("+"), [modalities.index(k)
                                                                               for k in s.split("+")]))
    targets = [m for m in modalities if any(r["target"] == m for r in rows)]
    header = ["method", "inputs"] + [f"{t} {m.upper()}" for t in targets for m in metric_names]
    lines = markdown_lines(header)
    for method in methods:
        for inputs in subsets:
            if not any((method, inputs, t) in slices for t in targets):
                continue  # a method with fewer modalities has no row for this input combination
            cells = [method, inputs]
            for target in targets:
                for name in metric_names:
                    text = format_scores(scores[name].get((inputs, target), {}).get(method), name,
                                         (method, inputs, target) in bold[name], slices.get((method, inputs, target)))
                    cells.append(f"*{text}*" if text and target in inputs.split("+") else text)
            lines.append(table_row(cells))
    lines += ["", "Italic: harmonisation (the target is among the inputs); plain: synthesis. "
              f"Each cell: {spread_text(rows)} inside the field of view; {SCALE_NOTE}. "
              + test_caption(rows, cell, metric_names, alpha, correction, "method in that cell")]
    return "\n".join(lines)


def full_coverage(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """The rows of the methods scored on every (inputs, target) cell of the table, and the names of those left
    out (e.g. a two-modality method, scored on its own pair only): pooled summaries need the same cells."""
    cells: dict[str, set] = {}
    for r in rows:
        cells.setdefault(r["method"], set()).add((r["inputs"], r["target"]))
    widest = set().union(*cells.values()) if cells else set()
    narrower = [m for m, c in cells.items() if c != widest and m != FLOOR]
    return [r for r in rows if r["method"] not in narrower], narrower


def left_out_note(narrower: Sequence[str]) -> str:
    return (f" Left out: {', '.join(narrower)}, scored on fewer input combinations (Table I has its rows)."
            if narrower else "")


def method_summary(rows: list[dict], metric_names: Sequence[str] = ("psnr", "ssim", "lpips"),
                   alpha: float = SIGNIFICANCE_LEVEL, correction: str = "holm") -> str:
    """Markdown: per method and task, every (inputs, target, slice) of the task pooled per subject."""
    rows, narrower = full_coverage(rows)
    scores, bold, slices = cell_table(rows, ("task",), metric_names, alpha, correction)
    tasks = [t for t in ("synthesis", "harmonisation") if any(r["task"] == t for r in rows)]
    header = ["method"] + [f"{t} {m.upper()}" for t in tasks for m in metric_names]
    table = [[method] + [format_scores(scores[m].get((t,), {}).get(method), m, (method, t) in bold[m],
                                       slices.get((method, t)))
                         for t in tasks for m in metric_names]
             for method in dict.fromkeys(r["method"] for r in rows)]
    caption = (f"Each cell: {spread_text(rows)}, every input combination and target of the task pooled. "
               + test_caption(rows, ("task",), metric_names, alpha, correction, "method on that task")
               + left_out_note(narrower))
    return "\n".join(markdown_lines(header, table) + ["", caption])


def ablation_table(rows: list[dict], groups: Sequence[tuple[str, Sequence[tuple[str, str]]]],
                   modalities: Sequence[str], metric_names: Sequence[str] = ("psnr", "ssim", "lpips"),
                   alpha: float = SIGNIFICANCE_LEVEL, correction: str = "holm") -> str:
    """Table II layout: one section per ablation group (title, [(row label, method name)]), columns target x
    metric, every input combination pooled per subject. A method may appear in several sections (the full model
    is the reference of each); bold: better than every other setting of its group."""
    targets = [m for m in modalities if any(r["target"] == m for r in rows)]
    header = ["setting"] + [f"{t} {m.upper()}" for t in targets for m in metric_names]
    lines = markdown_lines(header)
    for title, members in groups:
        chosen = [r for r in rows if r["method"] in {name for _, name in members}]
        scores, bold, slices = cell_table(chosen, ("target",), metric_names, alpha, correction)
        lines.append(section_row(title, len(targets) * len(metric_names)))
        lines += [table_row([label] + [format_scores(scores[m].get((t,), {}).get(method), m, (method, t) in bold[m],
                                                     slices.get((method, t)))
                                       for t in targets for m in metric_names])
                  for label, method in members]
    caption = (f"Each cell: {spread_text(rows)}, every input combination (harmonisation and synthesis) pooled. "
               + test_caption(rows, ("target",), metric_names, alpha, correction, "setting of its section"))
    return "\n".join(lines + ["", caption])


def verdict(c: Comparison, metric: str) -> str:
    """Whether the paired difference supports a claim: its confidence interval excludes 0, its paired test is
    significant after the correction (p < SIGNIFICANCE_LEVEL), and the difference is larger than the
    between-seed spread of the difference (so retraining is unlikely to undo it)."""
    if c.subjects < 2:
        return "no test (one subject)"
    low, high = c.ci
    if not (low > 0 or high < 0):
        return "no claim: CI includes 0"
    if not c.p_corrected < SIGNIFICANCE_LEVEL:
        return "no claim: not significant after correction"
    if c.seeds < 2:
        return "no claim: one training seed"
    if abs(c.difference) <= c.seed_sd:
        return "no claim: within the seed spread"
    better = (c.difference > 0) == HIGHER_IS_BETTER[metric]
    return f"{c.first} {'better' if better else 'worse'}"


def task_comparisons(rows: list[dict], reference: str, task: str, metric: str,
                     correction: str = "holm") -> list[Comparison]:
    """`reference` against every other method on one task (every cell of the task pooled per subject)."""
    by_method = cell_scores([r for r in rows if r["task"] == task], metric, ("task",)).get((task,), {})
    if reference not in by_method:
        return []
    return against_reference(reference, {m: s for m, s in by_method.items() if m != FLOOR}, correction)


def paired_differences(rows: list[dict], reference: str, metric_names: Sequence[str] = ("psnr", "ssim", "lpips"),
                       correction: str = "holm") -> str:
    """Markdown: `reference` minus each other method per task and metric, pooled per subject: mean paired
    difference, its bootstrap CI over subjects, the corrected p, the between-seed sd, and the verdict."""
    rows, narrower = full_coverage(rows)
    header = ["task", "metric", "against", "difference", f"{CONFIDENCE_LEVEL:.0%} CI", "p (corrected)",
              "seed sd", "subjects", "seeds", "verdict"]
    table = []
    for task in [t for t in ("synthesis", "harmonisation") if any(r["task"] == t for r in rows)]:
        for metric in metric_names:
            for c in task_comparisons(rows, reference, task, metric, correction):
                d = digits(metric)
                table.append([task, metric.upper(), c.second, f"{c.difference:+.{d}f}",
                              f"{c.ci[0]:+.{d}f} to {c.ci[1]:+.{d}f}", f"{c.p_corrected:.2g}",
                              "-" if not math.isfinite(c.seed_sd) else f"{c.seed_sd:.{d}f}", c.subjects, c.seeds,
                              verdict(c, metric)])
    caption = (f"Difference: {reference} minus the other method, the mean over subjects of paired per-subject "
               f"means (seed-averaged); CI: bootstrap (BCa) over subjects; p: two-sided Wilcoxon signed-rank over "
               f"subjects, {correction.capitalize()}-corrected over the comparisons of each task and metric. "
               f"A claim needs a CI that excludes 0, a corrected p < {SIGNIFICANCE_LEVEL:g} and a difference larger "
               "than its between-seed sd."
               + left_out_note(narrower))
    return "\n".join(markdown_lines(header, table) + ["", caption])


def floor_comparison(rows: list[dict], method: str = "mmhvae", floor: str = FLOOR) -> str:
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

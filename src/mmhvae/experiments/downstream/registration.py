"""MR-ultrasound rigid registration, the downstream task of Sections 4.4.4 and 5.4 (Table III).

A pre-operative MR volume (moving) is registered rigidly (6 degrees of freedom) to a fixed volume in the
ultrasound field of view: either the acquired ultrasound itself ("direct") or an MR sequence synthesised
from that ultrasound by a cross-modal model. On paired data (MR already aligned with the ultrasound) a
known rigid displacement is applied to the MR (as the registration's starting transform, so the MR is never
resampled), the registration tries to undo it, and the Target Registration Error (TRE) between the true and
the estimated transforms is measured at every voxel of the field of view.

Conventions: transforms are SimpleITK transforms from fixed physical points to moving physical points
(LPS, mm), as SimpleITK registration estimates them; points are LPS coordinates in mm.

Difference from the paper: the paper optimises a multi-scale local normalised cross-correlation [53] by
gradient descent; this module uses SimpleITK's multi-resolution registration with Mattes mutual
information (MR vs ultrasound) or global correlation (MR vs synthetic MR of the same sequence).
"""

from __future__ import annotations

import logging
import re
import time
import warnings
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmhvae.errors import InputError, refuse_to_overwrite
from mmhvae.evaluation.scoring import method_names
from mmhvae.evaluation.statistics import corrected, paired_p_value, sample_sd, significantly_lowest
from mmhvae.evaluation.tables import markdown_lines, table_row
from mmhvae.experiments.downstream.rigid import (
    METRICS,
    RegistrationSettings,
    centred_rigid_transform,
    image_from_array,
    mask_from_array,
    random_rigid_displacement,
    register_rigid,
    target_registration_error,
    voxel_points_mm,
)
from mmhvae.inference.device import resolve_device
from mmhvae.inference.predict import back_to_grid, prepare_for_model, to_intensities
from mmhvae.inference.synthesis import DEFAULT_TEMPERATURE, synthesise
from mmhvae.io.files import write_csv_atomic, write_text_atomic
from mmhvae.io.layouts import SubjectFiles, discover_subjects
from mmhvae.io.subjects import Subject, load_subject
from mmhvae.modalities import ULTRASOUND, ModalitySet, parse_modality_list
from mmhvae.model_file import LoadedModel, load_model_file
from mmhvae.preprocessing.masks import field_of_view, ultrasound_fov_mask

DEFAULT_RANGES_MM: tuple[tuple[float, float], ...] = ((0, 4), (4, 8), (8, 12), (12, 16))  # Table III columns
DEFAULT_SEQUENCES: tuple[str, ...] = ("t2", "t1c", "flair")  # Table III (a), (b), (c)
DEFAULT_DISPLACEMENTS_PER_RANGE = 10
DIRECT_METHOD = "acquired US"  # Table III's first row: the MR registered to the ultrasound itself
INITIAL_METHOD = "initial"  # the displacement before registration
SIGNIFICANCE_LEVEL = 0.05  # Table III: paired Wilcoxon signed-rank test, p < 0.05
CSV_FIELDS = ("subject", "sequence", "range_mm", "displacement", "method", "metric", "initial_median_mm",
              "tre_mean_mm", "tre_median_mm", "tre_max_mm", "failed", "seconds")
SUMMARY_FIELDS = ("sequence", "range_mm", "method", "trials", "subjects", "tre_mean_mm", "tre_sd_mm", "failed",
                  "p_vs_direct")

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# Table III experiment
# ----------------------------------------------------------------------------------------------------


def parse_ranges(text: str) -> tuple[tuple[float, float], ...]:
    """'0-4,4-8' -> ((0.0, 4.0), (4.0, 8.0)); an InputError for anything else."""
    ranges = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)\s*", item)
        if not match or float(match.group(1)) >= float(match.group(2)):
            raise InputError(f"--ranges: '{item.strip()}' is not a range LOW-HIGH in mm with LOW < HIGH "
                             "(e.g. 0-4,4-8,8-12,12-16)")
        ranges.append((float(match.group(1)), float(match.group(2))))
    return tuple(ranges)


def range_label(low: float, high: float) -> str:
    return f"{low:g}-{high:g} mm"


def synthesise_from_ultrasound(loaded: LoadedModel, subject: Subject, sequences: Sequence[str],
                               temperature: float = DEFAULT_TEMPERATURE) -> dict[str, np.ndarray]:
    """Each MR sequence synthesised from the subject's ultrasound alone, on the subject's grid (harmonised
    intensities, 0 outside the field of view)."""
    modalities = ModalitySet(loaded.modalities)
    prepared = prepare_for_model(subject, loaded, inputs=(ULTRASOUND,))
    (result,) = synthesise(loaded.model, prepared, [(ULTRASOUND,)], temperature=temperature)
    grid_shape = subject.reference.shape
    fov = back_to_grid(prepared.fov, grid_shape, fill=False)
    images = {}
    for key in sequences:
        image = to_intensities(result.mean[modalities.index(key)], prepared.fov)
        images[key] = np.where(fov, back_to_grid(image, grid_shape, fill=0.0), 0.0).astype(np.float32)
    return images


def _trial_rng(seed: int, subject: str, sequence: str, range_index: int) -> np.random.Generator:
    """The displacements of one (subject, sequence, range): the same whatever the cohort or the models."""
    return np.random.default_rng(np.random.SeedSequence(
        [int(seed), zlib.crc32(subject.encode()), zlib.crc32(sequence.encode()), int(range_index)]))


def _check_models(paths: Sequence[Path], models: Sequence[LoadedModel], sequences: Sequence[str]) -> None:
    for path, loaded in zip(paths, models):
        lacking = [k for k in (ULTRASOUND, *sequences) if k not in loaded.modalities]
        if lacking:
            raise InputError(f"the model does not handle {lacking} (it has {','.join(loaded.modalities)})", path)


def _trial_row(subject: str, sequence: str, low: float, high: float, index: int, method: str, metric: str,
               initial_median: float, errors: np.ndarray, failed: bool, seconds: float) -> dict:
    return {"subject": subject, "sequence": sequence, "range_mm": range_label(low, high), "displacement": index,
            "method": method, "metric": metric, "initial_median_mm": round(initial_median, 4),
            "tre_mean_mm": float(errors.mean()), "tre_median_mm": float(np.median(errors)),
            "tre_max_mm": float(errors.max()), "failed": int(failed), "seconds": round(seconds, 3)}


def register_subject(subject: Subject, synthetic: dict[str, dict[str, np.ndarray]], sequences: Sequence[str],
                     ranges: Sequence[tuple[float, float]], displacements_per_range: int, seed: int,
                     synthetic_metric: str = "correlation",
                     settings: RegistrationSettings = RegistrationSettings()) -> list[dict]:
    """Rows for one subject: every sequence x range x displacement, initial + direct + each synthesis method.

    The MR is aligned with the ultrasound (paired data), so the true transform is the identity; displacing
    the MR by D^-1 is the same as starting the registration at D, which avoids resampling the MR (and losing
    what would move out of its grid). `synthetic` maps method name -> sequence -> synthetic image.
    """
    grid = subject.reference
    fov = field_of_view(subject)
    points = voxel_points_mm(fov, grid.affine)
    centre = points.mean(axis=0)
    fixed_mask = mask_from_array(fov, grid.affine)
    ultrasound = image_from_array(subject.volumes[ULTRASOUND].array, grid.affine)
    truth = centred_rigid_transform(centre)
    rows = []
    for sequence in sequences:
        if sequence not in subject.volumes:
            continue
        mr = subject.volumes[sequence].array
        moving = image_from_array(mr, grid.affine)
        moving_mask = mask_from_array(ultrasound_fov_mask(mr), grid.affine)  # where the (cropped) MR is defined
        fixed_images = [(DIRECT_METHOD, ultrasound, "mattes")]
        fixed_images += [(name, image_from_array(images[sequence], grid.affine), synthetic_metric)
                         for name, images in synthetic.items()]
        for r, (low, high) in enumerate(ranges):
            rng = _trial_rng(seed, subject.name, sequence, r)
            for index in range(displacements_per_range):
                start = random_rigid_displacement(points, centre, low, high, rng)
                initial_errors = target_registration_error(truth, start, points)
                initial_median = float(np.median(initial_errors))
                rows.append(_trial_row(subject.name, sequence, low, high, index, INITIAL_METHOD, "", initial_median,
                                       initial_errors, False, 0.0))
                for method, fixed, metric in fixed_images:
                    tic = time.perf_counter()
                    result = register_rigid(fixed, moving, fixed_mask, moving_mask, metric, start, settings)
                    errors = target_registration_error(truth, result.transform, points)
                    rows.append(_trial_row(subject.name, sequence, low, high, index, method, metric, initial_median,
                                           errors, result.failed, time.perf_counter() - tic))
    return rows


def subject_errors(rows: Sequence[dict], sequence: str, range_mm: str, methods: Sequence[str]
                   ) -> dict[str, dict[str, float]]:
    """Per method, each subject's mean over its trials (displacements) of the per-trial mean TRE, for one
    sequence and range: the trials of a subject share its images, so the subject is the unit of the tests."""
    trials: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["sequence"] == sequence and row["range_mm"] == range_mm and row["method"] in methods:
            trials[row["method"]][str(row["subject"])].append(float(row["tre_mean_mm"]))
    return {method: {s: float(np.mean(v)) for s, v in by_subject.items()} for method, by_subject in trials.items()}


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Per (sequence, range, method): trials, subjects, mean and sd over subjects of each subject's mean TRE,
    failures, and the paired Wilcoxon p-value over subjects against direct registration to the acquired
    ultrasound, Holm-corrected over the synthesis methods of that sequence and range."""
    failures: dict[tuple, int] = defaultdict(int)
    trials: dict[tuple, int] = defaultdict(int)
    for row in rows:
        key = (row["sequence"], row["range_mm"], row["method"])
        failures[key] += int(row["failed"])
        trials[key] += 1
    summary = []
    for sequence, range_mm in dict.fromkeys((k[0], k[1]) for k in trials):
        methods = [k[2] for k in trials if k[:2] == (sequence, range_mm)]
        errors = subject_errors(rows, sequence, range_mm, methods)
        direct = errors.get(DIRECT_METHOD, {})
        compared = [m for m in methods if m not in (DIRECT_METHOD, INITIAL_METHOD) and direct]
        p_raw = [paired_p_value(*paired(errors[m], direct)) for m in compared]
        p_values = dict(zip(compared, corrected(p_raw) if p_raw else []))
        for method in methods:
            tre = np.array(list(errors[method].values()))
            summary.append({"sequence": sequence, "range_mm": range_mm, "method": method,
                            "trials": trials[(sequence, range_mm, method)], "subjects": tre.size,
                            "tre_mean_mm": float(tre.mean()), "tre_sd_mm": sample_sd(tre),
                            "failed": failures[(sequence, range_mm, method)],
                            "p_vs_direct": p_values.get(method, float("nan"))})
    return summary


def paired(first: dict[str, float], second: dict[str, float]) -> tuple[list[float], list[float]]:
    """The values of the subjects both have, in the same order."""
    subjects = sorted(set(first) & set(second))
    return [first[s] for s in subjects], [second[s] for s in subjects]


def significantly_best(rows: Sequence[dict], sequence: str, range_mm: str, methods: Sequence[str],
                       alpha: float = SIGNIFICANCE_LEVEL) -> str | None:
    """The registration method with the lowest mean TRE if paired Wilcoxon tests over subjects, Holm-corrected,
    put it below every other method at p < alpha (Table III's bold), else None."""
    return significantly_lowest(subject_errors(rows, sequence, range_mm, methods), alpha)


def mean_sd_text(mean: float, sd: float) -> str:
    """'mean (sd)' in mm; '-' for the sd of a single subject."""
    return f"{mean:.1f} ({'-' if np.isnan(sd) else f'{sd:.1f}'})"


def markdown_table(rows: Sequence[dict], methods: Sequence[str], sequences: Sequence[str],
                   ranges: Sequence[tuple[float, float]], how: str = "") -> str:
    """Table III: per MR sequence, mean (sd) TRE in mm per displacement range; bold = significantly best;
    then the Wilcoxon p-value of each synthesis method against the acquired ultrasound."""
    summary = {(s["sequence"], s["range_mm"], s["method"]): s for s in summarise(rows)}
    labels = [range_label(low, high) for low, high in ranges]
    subjects = len({r["subject"] for r in rows})
    lines = ["# MR-ultrasound rigid registration (Table III)", "",
             f"Target registration error (mm) over the ultrasound field-of-view voxels: mean (sd) over {subjects} "
             "subject(s) of each subject's mean, over its displacements, of a trial's mean TRE; columns are ranges "
             "of the median initial displacement. Bold: lower than every other method, two-sided paired Wilcoxon "
             f"signed-rank tests over subjects, Holm-corrected, p < {SIGNIFICANCE_LEVEL:g}. `{INITIAL_METHOD}`: "
             f"before registration; `{DIRECT_METHOD}`: the MR registered "
             "to the acquired ultrasound; other rows: to the sequence synthesised from the ultrasound by that model.",
             ""] + ([how, ""] if how else [])
    registration_methods = [DIRECT_METHOD, *methods]
    for sequence in sequences:
        if not any((sequence, label, INITIAL_METHOD) in summary for label in labels):
            continue
        best = {label: significantly_best(rows, sequence, label, registration_methods) for label in labels}
        lines += [f"## {sequence}", ""] + markdown_lines(["method", *labels])
        for method in [INITIAL_METHOD, *registration_methods]:
            cells = []
            for label in labels:
                entry = summary.get((sequence, label, method))
                text = "-" if entry is None else mean_sd_text(entry["tre_mean_mm"], entry["tre_sd_mm"])
                if entry is not None and entry["failed"]:
                    text += f" [{entry['failed']} failed]"
                cells.append(f"**{text}**" if best[label] == method else text)
            lines.append(table_row([method, *cells]))
        if methods:
            p_values = [[method] + [f"{summary[(sequence, label, method)]['p_vs_direct']:.2g}"
                                    if (sequence, label, method) in summary else "-" for label in labels]
                        for method in methods]
            lines += ["", f"Wilcoxon p over subjects vs {DIRECT_METHOD}, Holm-corrected ({sequence}):", ""]
            lines += markdown_lines(["method", *labels], p_values)
        lines.append("")
    return "\n".join(lines)


def checked_options(displacements_per_range: int, synthetic_metric: str, ranges: Sequence[tuple[float, float]],
                    sequences: Sequence[str]) -> tuple[tuple[tuple[float, float], ...], tuple[str, ...]]:
    """The experiment's ranges (as floats) and MR sequences, or an InputError before anything is read."""
    if displacements_per_range < 1:
        raise InputError(f"--displacements must be at least 1, got {displacements_per_range}")
    if synthetic_metric not in METRICS:
        raise InputError(f"unknown registration metric '{synthetic_metric}' (choose {' or '.join(METRICS)})")
    ranges = tuple((float(low), float(high)) for low, high in ranges)
    for low, high in ranges:
        if not 0 <= low < high:
            raise InputError(f"a displacement range needs 0 <= low < high (got {low:g}-{high:g} mm)")
    sequences = parse_modality_list(sequences)
    if ULTRASOUND in sequences:
        raise InputError("--sequences lists the MR sequences to register; the ultrasound is the fixed image")
    return ranges, sequences


def load_compared_models(models: Sequence[str | Path], sequences: Sequence[str], device: str
                         ) -> tuple[list[LoadedModel], list[str]]:
    """The synthesis models (each must handle the ultrasound and `sequences`) and their row names."""
    paths = [Path(m) for m in models]
    loaded = [load_model_file(p, resolve_device(device)) for p in paths]
    _check_models(paths, loaded, sequences)
    names = method_names(paths, loaded) if loaded else []
    if DIRECT_METHOD in names or INITIAL_METHOD in names:
        raise InputError(f"a model's method name clashes with the row '{DIRECT_METHOD}' or '{INITIAL_METHOD}'")
    return loaded, names


def subject_to_register(files: SubjectFiles, sequences: Sequence[str]) -> Subject | None:
    """The subject's ultrasound and MR sequences of `sequences`; None (and a message) when it lacks either."""
    wanted = [k for k in (ULTRASOUND, *sequences) if k in files.modalities]
    if ULTRASOUND not in wanted or len(wanted) < 2:
        log.info(f"{files.name}: skipped (needs an ultrasound and one of {','.join(sequences)})")
        return None
    with warnings.catch_warnings():  # leaving out the subject's other modalities is intended here
        warnings.filterwarnings("ignore", message=".*ignoring modalities")
        return load_subject(files, wanted)


def settings_note(settings: RegistrationSettings, synthetic_metric: str, displacements_per_range: int, seed: int,
                  temperature: float) -> str:
    """How the trials were run, for the table's page."""
    return (f"Settings: SimpleITK rigid Euler3D about the field-of-view centre; Mattes mutual information "
            f"({settings.histogram_bins} bins) to the ultrasound, {synthetic_metric} to synthetic MR; shrink factors "
            f"{','.join(map(str, settings.shrink_factors))}, smoothing sigmas "
            f"{','.join(f'{v:g}' for v in settings.smoothing_sigmas)} voxels; regular-step gradient descent, "
            f"{settings.iterations} iterations per level; {settings.sampling_percentage:.0%} of the voxels sampled "
            f"(seed {settings.seed}); {displacements_per_range} displacements per range (seed {seed}); synthesis at "
            f"temperature {temperature:g} from the ultrasound alone.")


def registration_experiment(models: Sequence[str | Path], data: str | Path, out: str | Path,
                            ranges: Sequence[tuple[float, float]] = DEFAULT_RANGES_MM,
                            displacements_per_range: int = DEFAULT_DISPLACEMENTS_PER_RANGE,
                            sequences: Sequence[str] = DEFAULT_SEQUENCES, seed: int = 0,
                            temperature: float = DEFAULT_TEMPERATURE,
                            synthetic_metric: str = "correlation", overwrite: bool = False, device: str = "cpu",
                            settings: RegistrationSettings = RegistrationSettings()) -> list[dict]:
    """Table III (Sections 4.4.4 and 5.4): registration of displaced MR to the acquired ultrasound vs to MR
    synthesised from it by each model; writes OUT/registration.csv (one row per trial and method),
    OUT/registration-summary.csv and OUT/registration.md. Returns the trial rows.

    Every test subject with an ultrasound and a sequence of `sequences` contributes `displacements_per_range`
    random rigid displacements per range of median displacement (seeded by `seed`, subject, sequence and
    range, so every method sees the same displacements: paired tests).
    """
    out = Path(out)
    refuse_to_overwrite(out, overwrite, exists=(out / "registration.csv").exists(),
                        problem="the output folder already has results")
    ranges, sequences = checked_options(displacements_per_range, synthetic_metric, ranges, sequences)
    loaded, names = load_compared_models(models, sequences, device)
    rows = []
    for files in discover_subjects(data):
        tic = time.perf_counter()
        subject = subject_to_register(files, sequences)
        if subject is None:
            continue
        present = [k for k in sequences if k in subject.volumes]
        synthetic = {name: synthesise_from_ultrasound(each, subject, present, temperature)
                     for name, each in zip(names, loaded)}
        subject_rows = register_subject(subject, synthetic, present, ranges, displacements_per_range, seed,
                                        synthetic_metric, settings)
        rows += subject_rows
        registrations = sum(row["method"] != INITIAL_METHOD for row in subject_rows)
        log.info(f"{files.name}: {registrations} registrations of {','.join(present)} in "
                 f"{time.perf_counter() - tic:.1f} s")
    if not rows:
        raise InputError(f"no subject has both an ultrasound and one of {','.join(sequences)}", data)
    write_csv_atomic(out / "registration.csv", rows, CSV_FIELDS)
    write_csv_atomic(out / "registration-summary.csv", summarise(rows), SUMMARY_FIELDS)
    how = settings_note(settings, synthetic_metric, displacements_per_range, seed, temperature)
    write_text_atomic(out / "registration.md", markdown_table(rows, names, sequences, ranges, how))
    return rows

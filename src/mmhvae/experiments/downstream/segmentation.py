"""Tumour segmentation in ultrasound learnt from synthetic ultrasound: the downstream task of Sections 4.4.3
and 5.3 (Table IV).

The paper's protocol and ours:

- Training data (paper: UPenn-GBM, MR with tumour labels and no ultrasound, cropped to virtual ultrasound
  sweeps): an MR-only cohort with complete MR and label maps. Phantom cohorts (`mmhvae.phantom`) serve:
  their MR is already cropped to the probe's fan (the "virtual sweep"); their simulated ultrasound is
  ignored.
- Each synthesis method synthesises ultrasound from every non-empty subset of a subject's MR sequences (7 for
  t2, t1c, flair: "all combinations of possible input MR data", Section 5.3), giving one paired set of
  synthetic ultrasound and tumour labels per method.
- Paper: a 5-fold nnU-Net ensemble per method. Here: a 2D MONAI UNet on the ultrasound slices (DiceCE loss,
  Adam, a fixed number of steps, a third of each batch drawn from slices with tumour as nnU-Net does,
  lateral mirroring and a random gamma), optionally an ensemble over `folds` subject folds (probabilities
  averaged).
- Fully supervised baseline (paper: nnU-Net trained on RESECT-SEG): the same network trained on a few
  acquired, labelled ultrasound volumes.
- Test sets (paper: RESECT-SEG and ReMIND): acquired ultrasound of labelled cohorts, e.g. a phantom cohort
  of the default probe and one simulated with `us_probe="alt"` (the domain-shift analogue of RESECT-SEG).
- Metrics: Dice and average symmetric surface distance (ASSD, mm) per subject in 3D (MONAI), reported as
  median [interquartile range] per method and test set.

Label: the tumour core, i.e. labels 1 (necrosis) and 3 (enhancing) of `seg.nii.gz`, as the BraTS tumour core
of UPenn-GBM; oedema (2) is not tumour. Low-grade phantoms have no tumour core (their solid tumour shares
label 2 with oedema), so subjects whose tumour core is empty are left out of training and testing (UPenn-GBM
holds glioblastomas only; Dice and ASSD are undefined without a reference tumour); the table says how many.

Intensities: the synthesis models learnt ultrasound as the normalised input (Section 4.4.1) and
`mmhvae.inference.predict.to_intensities` maps their output to [0, 1]; acquired ultrasound gets the same two steps, so
synthetic training images and acquired test images share one scale.

Grid: networks work on 2D slices along the third axis (the sweep) and remember the in-plane voxel size they
were trained at; a volume of another voxel size is refused (resample it first).
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice

from mmhvae import __version__
from mmhvae.errors import InputError, refuse_to_overwrite
from mmhvae.evaluation.scoring import method_names
from mmhvae.evaluation.tables import markdown_lines
from mmhvae.experiments.downstream.labelled_ultrasound import (
    TUMOUR_CORE_LABELS,
    LabelledVolume,
    check_spacing,
    header_spacing,
    load_labelled_ultrasound,
    tumour_core,
)
from mmhvae.experiments.downstream.segmenter import (
    DEFAULT_STEPS,
    Segmenter,
    save_segmenter,
    segment_volume,
    train_segmenter,
)
from mmhvae.inference.device import resolve_device
from mmhvae.inference.predict import back_to_grid, prepare_for_model, to_intensities
from mmhvae.inference.synthesis import DEFAULT_TEMPERATURE, synthesise
from mmhvae.io.files import write_csv_atomic, write_text_atomic
from mmhvae.io.layouts import SubjectFiles, discover_subjects
from mmhvae.io.subjects import Subject, load_subject
from mmhvae.modalities import ULTRASOUND, ModalitySet, Subset, non_empty_subsets, subset_label
from mmhvae.model_file import LoadedModel, load_model_file

SUPERVISED_METHOD = "fully supervised"
CSV_FIELDS = ("method", "test_set", "subject", "dice", "assd_mm", "empty_prediction", "predicted_voxels",
              "reference_voxels")

log = logging.getLogger(__name__)


def mr_only(files: SubjectFiles, modalities: ModalitySet) -> SubjectFiles:
    """The subject's files without its ultrasound: training data is MR with labels only (Section 4.4.3)."""
    mr = {k: p for k, p in files.modalities.items() if k != ULTRASOUND and k in modalities}
    if not mr:
        raise InputError(f"subject '{files.name}' has none of the model's MR sequences "
                         f"{[k for k in modalities if k != ULTRASOUND]}", next(iter(files.modalities.values())))
    if files.seg is None:
        raise InputError(f"subject '{files.name}' has no label map (seg.nii.gz)", next(iter(mr.values())))
    return replace(files, modalities=mr)


def synthetic_ultrasound(loaded: LoadedModel, subject: Subject, temperature: float = DEFAULT_TEMPERATURE,
                         seed: int = 0) -> tuple[list[Subset], list[np.ndarray], np.ndarray]:
    """Ultrasound synthesised from every non-empty subset of the subject's MR sequences (Section 5.3), as [0, 1]
    intensities on the subject's grid, and the field of view. One `synthesise` call: each MR is encoded once."""
    modalities = ModalitySet(loaded.modalities)
    mr = modalities.ordered(k for k in subject.volumes if k != ULTRASOUND)
    subsets = non_empty_subsets(mr)
    prepared = prepare_for_model(subject, loaded, inputs=mr)
    results = synthesise(loaded.model, prepared, subsets, temperature, generator_seed=seed)
    grid, us = subject.reference.shape, modalities.index(ULTRASOUND)
    fov = back_to_grid(prepared.fov, grid, fill=False)
    images = [back_to_grid(to_intensities(r.mean[us], prepared.fov), grid, fill=0.0) for r in results]
    return subsets, images, fov


def synthetic_training_volumes(loaded: LoadedModel, subjects: Sequence[SubjectFiles],
                               temperature: float = DEFAULT_TEMPERATURE, seed: int = 0,
                               labels: Sequence[int] = TUMOUR_CORE_LABELS) -> tuple[list[LabelledVolume], list[str]]:
    """Synthetic ultrasound volumes (one per MR subset) with tumour masks for the MR-only cohort, and the names of
    the subjects left out (no tumour)."""
    modalities = ModalitySet(loaded.modalities)
    volumes, left_out = [], []
    for files in subjects:
        subject = load_subject(mr_only(files, modalities), modalities)
        tumour = tumour_core(subject.seg.array, labels)
        if not tumour.any():
            left_out.append(files.name)
            continue
        subsets, images, fov = synthetic_ultrasound(loaded, subject, temperature, seed)
        spacing = subject.reference.zooms
        volumes += [LabelledVolume(files.name, image, tumour & fov, fov, spacing, subset_label(subset))
                    for subset, image in zip(subsets, images)]
    return volumes, left_out


def worst_case_distance(shape: Sequence[int], spacing_mm: Sequence[float]) -> float:
    """The grid's diagonal in mm: no surface distance inside the volume is larger."""
    return float(np.linalg.norm(np.array(shape[:3]) * np.array(spacing_mm[:3])))


def segmentation_scores(prediction: np.ndarray, reference: np.ndarray, spacing_mm: Sequence[float]) -> dict:
    """Dice and average symmetric surface distance (mm) of one 3D prediction, with MONAI (Section 4.4.3).

    An empty prediction has Dice 0 and no surface, so its ASSD is undefined (MONAI gives inf): it is scored as
    the grid's diagonal (`worst_case_distance`) and flagged `empty_prediction`. The reference must hold a tumour.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    if not reference.any():
        raise InputError("the reference has no tumour: Dice and ASSD are undefined")
    y_pred = torch.from_numpy(np.asarray(prediction, bool))[None, None].float()
    y = torch.from_numpy(np.asarray(reference, bool))[None, None].float()
    dice = float(compute_dice(y_pred, y, include_background=True)[0, 0])
    empty = not prediction.any()
    if empty:
        assd = worst_case_distance(prediction.shape, spacing_mm)
    else:
        with warnings.catch_warnings():  # MONAI 1.5-1.6 warn about an argument they pass to themselves
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            assd = float(compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True,
                                                          spacing=[float(s) for s in spacing_mm[:3]])[0, 0])
    return {"dice": dice, "assd_mm": assd, "empty_prediction": empty,
            "predicted_voxels": int(np.count_nonzero(prediction)), "reference_voxels": int(np.count_nonzero(reference))}


def evaluate_segmenter(segmenter: Segmenter, method: str, test_sets: dict[str, Sequence[LabelledVolume]]
                       ) -> list[dict]:
    """Long-table rows: one per test subject of each test set."""
    rows = []
    for test_set, volumes in test_sets.items():
        for v in volumes:
            check_spacing(v.spacing_mm, segmenter.config.spacing_mm, None, f"test set '{test_set}', '{v.subject}'")
            scores = segmentation_scores(segment_volume(segmenter, v.image, v.fov), v.tumour, v.spacing_mm)
            rows.append({"method": method, "test_set": test_set, "subject": v.subject, **scores})
    return rows


# ----------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------


def median_iqr(values: Sequence[float], scale: float = 1.0) -> str:
    """'median [Q1 - Q3]' as in Table IV."""
    q1, median, q3 = np.percentile(np.asarray(values, float) * scale, [25, 50, 75])
    return f"{median:.1f} [{q1:.1f} - {q3:.1f}]"


def markdown_table(rows: Sequence[dict]) -> str:
    """Table IV layout: rows methods, columns Dice (%) and ASSD (mm) per test set, median [IQR] over subjects.

    An ASSD cell says how many of its predictions were empty (scored as the grid diagonal)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    test_sets = list(dict.fromkeys(r["test_set"] for r in rows))
    header = ["method"] + [f"{t} {m}" for t in test_sets for m in ("Dice (%)", "ASSD (mm)")]
    table = []
    for method in methods:
        cells = [method]
        for test_set in test_sets:
            cells += score_cells([r for r in rows if r["method"] == method and r["test_set"] == test_set])
        table.append(cells)
    return "\n".join(markdown_lines(header, table))


def score_cells(rows: Sequence[dict]) -> list[str]:
    """The Dice (%) and ASSD cells of one method on one test set; empty cells when it has no scores there."""
    if not rows:
        return ["", ""]
    empty = sum(bool(r["empty_prediction"]) for r in rows)
    note = f" ({empty}/{len(rows)} empty)" if empty else ""
    return [median_iqr([r["dice"] for r in rows], 100.0), median_iqr([r["assd_mm"] for r in rows]) + note]


def file_stem(method: str) -> str:
    """A file name for a method name ('mmhvae (phantom-tiny)' -> 'mmhvae-phantom-tiny')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", method).strip("-") or "method"


# ----------------------------------------------------------------------------------------------------
# Entries: the experiment, training one network, segmenting one volume
# ----------------------------------------------------------------------------------------------------


def load_synthesis_models(models: Sequence[str | Path], device: torch.device) -> tuple[list[LoadedModel], list[str]]:
    """The synthesis models and their table names; each must synthesise ultrasound from some MR sequence."""
    paths = [Path(m) for m in models]
    loaded = [load_model_file(p, device) for p in paths]
    for path, each in zip(paths, loaded):
        if ULTRASOUND not in each.modalities or len(each.modalities) < 2:
            raise InputError(f"the model's modalities {list(each.modalities)} need ultrasound and an MR sequence",
                             path)
    return loaded, method_names(paths, loaded)


def mr_cohort_spacing(subjects: Sequence[SubjectFiles]) -> tuple[float, ...]:
    """The voxel size every subject of the MR cohort shares (read from headers), or an InputError."""
    spacing = None
    for files in subjects:
        path = next((p for k, p in files.modalities.items() if k != ULTRASOUND), None)
        if path is None:
            raise InputError(f"subject '{files.name}' has no MR sequence", next(iter(files.modalities.values())))
        this = header_spacing(path)
        if spacing is None:
            spacing = this
        check_spacing(this, spacing, path, f"MR cohort subject '{files.name}'")
    return spacing


def left_out_note(left_out: Sequence[str]) -> str:
    return f"; left out without tumour core: {', '.join(left_out)}" if left_out else ""


def load_test_sets(test_cohorts: dict[str, Path], spacing_mm: Sequence[float]
                   ) -> tuple[dict[str, list[LabelledVolume]], list[str]]:
    """Every test cohort's labelled acquired ultrasound (on the training voxel size), and a note per test set."""
    if not test_cohorts:
        raise InputError("at least one test cohort is needed")
    test_sets, notes = {}, []
    for name, folder in test_cohorts.items():
        volumes, left_out = load_labelled_ultrasound(folder)
        if not volumes:
            raise InputError(f"test set '{name}': no subject with a tumour core", folder)
        for v in volumes:
            check_spacing(v.spacing_mm, spacing_mm, Path(folder) / v.subject, f"test set '{name}', '{v.subject}'")
        test_sets[name] = volumes
        notes.append(f"test set '{name}': {len(volumes)} subject(s) of {folder}{left_out_note(left_out)}")
    return test_sets, notes


def segmentation_experiment(models: Sequence[Path], mr_cohort: Path, test_cohorts: dict[str, Path],
                            supervised_cohort: Path | None, out: Path, steps: int = DEFAULT_STEPS, seed: int = 0,
                            temperature: float = DEFAULT_TEMPERATURE, folds: int = 1, batch_size: int = 16,
                            learning_rate: float = 1e-3, device: str = "cpu", overwrite: bool = False) -> list[dict]:
    """Table IV: one segmenter per synthesis method, trained on ultrasound it synthesised from every MR subset of
    `mr_cohort` (Sections 4.4.3, 5.3), plus a fully supervised one trained on the acquired ultrasound of
    `supervised_cohort` (if given); all scored on the acquired ultrasound of each test cohort (name -> folder).

    Writes OUT/segmentation.csv (one row per method, test set and subject), OUT/table.md, OUT/training-loss.csv
    and OUT/networks/<method>.pt (each usable by `segment_ultrasound`). Returns the rows.
    """
    out = Path(out)
    refuse_to_overwrite(out, overwrite, exists=(out / "table.md").exists(),
                        problem="the output folder already has results")
    if steps < 1:
        raise InputError(f"the number of training steps must be at least 1 (got {steps})")
    # Everything is read and checked before the long synthesis and training.
    torch_device = resolve_device(device)
    loaded, names = load_synthesis_models(models, torch_device)
    if SUPERVISED_METHOD in names:
        raise InputError(f"a synthesis method may not be named '{SUPERVISED_METHOD}'")
    mr_subjects = discover_subjects(mr_cohort)
    spacing = mr_cohort_spacing(mr_subjects)
    test_sets, test_notes = load_test_sets(test_cohorts, spacing)
    supervised, supervised_left_out = [], []
    if supervised_cohort is not None:
        supervised, supervised_left_out = load_labelled_ultrasound(supervised_cohort)
        if not supervised:
            raise InputError("no supervised training subject with a tumour core", supervised_cohort)
        for v in supervised:
            check_spacing(v.spacing_mm, spacing, Path(supervised_cohort) / v.subject, f"supervised '{v.subject}'")

    rows, loss_log, notes = [], [], []
    for each, name in zip(loaded, names):
        started = time.perf_counter()
        volumes, left_out = synthetic_training_volumes(each, mr_subjects, temperature, seed)
        per_subject = (time.perf_counter() - started) / max(len(mr_subjects) - len(left_out), 1)
        log.info(f"{name}: {len(volumes)} synthetic ultrasound volumes, {per_subject:.1f} s per MR subject")
        segmenter, losses, per_step = train_and_save(volumes, steps, seed, folds, batch_size, learning_rate,
                                                     f"ultrasound synthesised by {name} from {mr_cohort}",
                                                     torch_device, out / "networks" / f"{file_stem(name)}.pt")
        rows += evaluate_segmenter(segmenter, name, test_sets)
        loss_log += [{"method": name, **r} for r in losses]
        notes.append(f"{name}: {len(volumes)} synthetic volume(s) (MR subjects of {mr_cohort} x their MR subsets), "
                     f"{per_subject:.1f} s synthesis per subject, {per_step:.3f} s per training step"
                     f"{left_out_note(left_out)}")
    if supervised:
        segmenter, losses, per_step = train_and_save(supervised, steps, seed, folds, batch_size, learning_rate,
                                                     f"acquired ultrasound of {supervised_cohort}", torch_device,
                                                     out / "networks" / f"{file_stem(SUPERVISED_METHOD)}.pt")
        rows += evaluate_segmenter(segmenter, SUPERVISED_METHOD, test_sets)
        loss_log += [{"method": SUPERVISED_METHOD, **r} for r in losses]
        notes.append(f"{SUPERVISED_METHOD}: {len(supervised)} acquired ultrasound volume(s) of {supervised_cohort}, "
                     f"{per_step:.3f} s per training step{left_out_note(supervised_left_out)}")
    write_experiment_results(out, rows, loss_log, notes + test_notes, steps, folds, seed, worst_case_note(test_sets))
    return rows


def train_and_save(volumes: Sequence[LabelledVolume], steps: int, seed: int, folds: int, batch_size: int,
                   learning_rate: float, trained_on: str, device: torch.device, path: Path
                   ) -> tuple[Segmenter, list[dict], float]:
    """Train, save, and time: returns the segmenter, its loss log and the seconds per training step."""
    started = time.perf_counter()
    segmenter, losses = train_segmenter(volumes, steps, seed, folds, batch_size, learning_rate, trained_on,
                                        device=device)
    seconds = time.perf_counter() - started
    save_segmenter(path, segmenter)
    log.info(f"  trained {folds} x {steps} steps in {seconds:.0f} s (last loss {losses[-1]['loss']:.3f}) -> {path}")
    return segmenter, losses, seconds / (steps * folds)


def worst_case_note(test_sets: dict[str, Sequence[LabelledVolume]]) -> str:
    distances = sorted({round(worst_case_distance(v.image.shape, v.spacing_mm), 1)
                        for volumes in test_sets.values() for v in volumes})
    return ", ".join(f"{d:g}" for d in distances)


def write_experiment_results(out: Path, rows: list[dict], loss_log: list[dict], notes: list[str], steps: int,
                             folds: int, seed: int, worst_case: str) -> None:
    """segmentation.csv, training-loss.csv and table.md (the table with what it was computed from)."""
    write_csv_atomic(out / "segmentation.csv", rows, CSV_FIELDS)
    write_csv_atomic(out / "training-loss.csv", loss_log, ("method", "fold", "step", "loss"))
    text = (
        "# Tumour segmentation in acquired ultrasound, learnt from synthetic ultrasound (Table IV analogue)\n\n"
        + markdown_table(rows) + "\n\n"
        f"Median [interquartile range] over test subjects, per subject in 3D (MONAI Dice; symmetric average surface "
        f"distance in mm). Label: tumour core (seg labels {', '.join(map(str, TUMOUR_CORE_LABELS))}: necrosis and "
        f"enhancing tumour). An empty prediction scores Dice 0 and ASSD = the grid's diagonal ({worst_case} mm), "
        "the largest distance inside the volume; the ASSD cell counts them. "
        f"Networks: 2D MONAI UNet, {folds} fold(s) x {steps} Adam steps, seed {seed}.\n\n"
        + "".join(f"- {n}\n" for n in notes)
        + f"\nmmhvae {__version__}\n"
    )
    write_text_atomic(out / "table.md", text)
    log.info(f"wrote {out / 'segmentation.csv'} and {out / 'table.md'}")


def train_segmentation_network(data: Path, out: Path, steps: int = DEFAULT_STEPS, seed: int = 0,
                               model: Path | None = None, temperature: float = DEFAULT_TEMPERATURE, folds: int = 1,
                               batch_size: int = 16, learning_rate: float = 1e-3, device: str = "cpu",
                               overwrite: bool = False) -> Path:
    """One segmentation network file: trained on ultrasound that `model` synthesises from the MR (and labels) of
    `data`, or, without `model`, on the acquired labelled ultrasound of `data` (the fully supervised baseline)."""
    out = Path(out)
    refuse_to_overwrite(out, overwrite, problem="the output file already exists")
    torch_device = resolve_device(device)
    if model is None:
        volumes, _ = load_labelled_ultrasound(data)
        trained_on = f"acquired ultrasound of {data}"
    else:
        (loaded,), (name,) = load_synthesis_models([model], torch_device)
        subjects = discover_subjects(data)
        mr_cohort_spacing(subjects)
        volumes, _ = synthetic_training_volumes(loaded, subjects, temperature, seed)
        trained_on = f"ultrasound synthesised by {name} ({model}) from {data}"
    train_and_save(volumes, steps, seed, folds, batch_size, learning_rate, trained_on, torch_device, out)
    return out

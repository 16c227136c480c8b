"""What the results viewer shows: the prediction folders of `predict` (or `demo`), found on disk, matched to
the subjects' inputs and ground truth, and the evaluation's tables and figures.

A prediction folder holds `<modality>.nii.gz` (the prediction) and, with several samples, `<modality>_std`,
and with a calibrated model `<modality>_lo` and `<modality>_hi`. Layouts understood:
`DIR/<subject>/<input subset>/` (`predict --all-subsets`, `demo`) and `DIR/<subject>/` (`predict --inputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmhvae.errors import InputError
from mmhvae.io.layouts import SubjectFiles, discover_subjects
from mmhvae.io.volumes import Volume, read_volume

# What a prediction folder may hold per modality, by file suffix.
MAP_SUFFIXES = {"": "prediction", "_std": "sd", "_lo": "interval low", "_hi": "interval high"}
GIVEN_INPUTS = "given inputs"


@dataclass
class Entry:
    """One subject's outputs from one input subset: map kind -> modality -> file."""

    subject: str
    label: str
    maps: dict[str, dict[str, Path]] = field(default_factory=dict)


def maps_in(folder: Path) -> dict[str, dict[str, Path]]:
    """The prediction maps of one folder by kind and modality (files of other names are left alone)."""
    maps: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.glob("*.nii.gz")):
        stem = path.name[: -len(".nii.gz")]
        suffix = next((s for s in MAP_SUFFIXES if s and stem.endswith(s)), "")
        maps.setdefault(MAP_SUFFIXES[suffix], {})[stem[: len(stem) - len(suffix)]] = path
    return maps


def is_subset_folder(folder: Path) -> bool:
    """A folder named like an input subset ('us+t2') whose name parts are modalities it has predictions of."""
    predicted = {p.name[: -len(".nii.gz")] for p in folder.glob("*.nii.gz")}
    return all(part in predicted for part in folder.name.split("+"))


def find_entries(predictions: Path) -> list[Entry]:
    """Every (subject, input subset) with a prediction under `predictions`."""
    if not predictions.is_dir():
        raise InputError("the predictions folder does not exist", predictions)
    entries = []
    for subject in sorted(p for p in predictions.iterdir() if p.is_dir()):
        own = maps_in(subject)
        if "prediction" in own:
            entries.append(Entry(subject.name, GIVEN_INPUTS, own))
        for folder in sorted(p for p in subject.iterdir() if p.is_dir() and is_subset_folder(p)):
            found = maps_in(folder)
            if "prediction" in found:
                entries.append(Entry(subject.name, folder.name, found))
    if not entries:
        raise InputError("no predictions found (expected <subject>/<inputs>/<modality>.nii.gz or "
                         "<subject>/<modality>.nii.gz, as mmhvae predict writes them)", predictions)
    return entries


def collect_entries(predictions: Sequence[Path]) -> list[Entry]:
    """Entries of every prediction folder; a label already taken by an earlier folder gets the folder's name."""
    entries: list[Entry] = []
    for folder in predictions:
        found = find_entries(Path(folder))
        taken = {(e.subject, e.label) for e in entries}
        for entry in found:
            if (entry.subject, entry.label) in taken:
                entry.label = f"{entry.label} ({Path(folder).name})"
        entries += found
    return entries


def model_order(entries: Sequence[Entry]) -> list[str]:
    """The predicted modalities in the model's order, as its largest input subset's label lists them (predict
    names subsets in that order); modalities it does not name follow, sorted."""
    predicted = sorted({m for e in entries for by_modality in e.maps.values() for m in by_modality})
    named = max((e.label.split(" (")[0].split("+") for e in entries if e.label != GIVEN_INPUTS), key=len, default=[])
    ordered = [m for m in named if m in predicted]
    return ordered + [m for m in predicted if m not in ordered]


def in_model_order(entries: Sequence[Entry], modalities: Sequence[str]) -> list[Entry]:
    """Entries by subject, then by number of inputs and the inputs' places in `modalities` (the paper's order)."""
    def key(entry: Entry) -> tuple:
        inputs = [] if entry.label == GIVEN_INPUTS else entry.label.split(" (")[0].split("+")
        places = [modalities.index(m) if m in modalities else len(modalities) for m in inputs]
        return entry.subject, len(inputs), places, entry.label

    return sorted(entries, key=key)


@dataclass
class Truth:
    """What a data folder gives one subject: its input images and, where present, its harmonised targets."""

    inputs: dict[str, Path]
    targets: dict[str, Path]


def subject_truths(data: Path | None, subjects: Sequence[str]) -> dict[str, Truth]:
    """The inputs and harmonised targets of the shown subjects in `data` (none without a data folder)."""
    if data is None:
        return {}
    found: dict[str, SubjectFiles] = {files.name: files for files in discover_subjects(data)}
    missing = [s for s in subjects if s not in found]
    if missing:
        raise InputError(f"the data folder has no subject {', '.join(missing)} of the predictions", data)
    return {s: Truth(dict(found[s].modalities), dict(found[s].targets)) for s in subjects}


def absolute_error(prediction: Path, target: Path) -> tuple[np.ndarray, Volume]:
    """|prediction - harmonised target| on the prediction's grid, 0 where the prediction is (outside the FOV)."""
    predicted, truth = read_volume(prediction), read_volume(target)
    if predicted.shape != truth.shape:
        raise InputError(f"the prediction is {predicted.shape} but its target {target} is {truth.shape}: not on the "
                         "subject's grid", prediction)
    error = np.abs(predicted.array - truth.array)
    return np.where(predicted.array != 0, error, 0.0).astype(np.float32), predicted

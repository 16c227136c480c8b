"""Subject discovery: which files of a data folder are which subject's modalities, labels and targets.

Nothing is read here but file names. Layouts (docs/data.md), a missing file meaning a missing modality:
- canonical: DATA/<subject>/<modality>.nii.gz, optional seg.nii.gz, tissue.nii.gz, mask.nii.gz (a brain
  mask) and harmonised targets in DATA/<subject>/targets/<modality>.nii.gz;
- flat (the authors'): DATA/<subject>-<modality>.nii.gz;
- BraTS: DATA/<subject>/<subject>-{t1n,t1c,t2w,t2f,seg}.nii.gz.
A subject folder written by `mmhvae prepare` also holds prepared.json, the way back to its original grid.
Which modalities a folder holds, and the one clear error when it holds none of those a run expects, are here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmhvae.errors import InputError
from mmhvae.io.volumes import nifti_stem
from mmhvae.modalities import ALIASES, CANONICAL_KEYS, ModalitySet, Subset, canonical_key, in_data_order

LABEL_NAMES = ("seg", "tissue", "mask")
TARGETS_FOLDER = "targets"
PREPARED_RECORD = "prepared.json"  # written by `mmhvae prepare`: how to go back to the subject's original grid


@dataclass
class SubjectFiles:
    """Where a subject's files are; nothing is read yet."""

    name: str
    layout: str
    modalities: dict[str, Path] = field(default_factory=dict)
    targets: dict[str, Path] = field(default_factory=dict)
    seg: Path | None = None
    tissue: Path | None = None
    mask: Path | None = None
    record: Path | None = None

    def present(self, modalities: ModalitySet) -> Subset:
        return modalities.ordered(k for k in self.modalities if k in modalities)

    def indicator(self, modalities: ModalitySet) -> tuple[int, ...]:
        """Missingness vector r of Section 3.2 (1 observed, 0 missing) in the order of `modalities`."""
        return modalities.indicator(self.present(modalities))


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and nifti_stem(p) is not None)


def _classify(stem: str, subject: str | None) -> str | None:
    """Map a file stem to a modality key or label name; strips a '<subject>-' prefix (BraTS)."""
    if subject is not None and stem.lower().startswith(subject.lower() + "-"):
        stem = stem[len(subject) + 1 :]
    if stem.lower() in LABEL_NAMES:
        return stem.lower()
    return canonical_key(stem)


def _add_file(files: SubjectFiles, kind: str, path: Path) -> None:
    if kind in LABEL_NAMES:
        if getattr(files, kind) is not None:
            raise InputError(f"subject '{files.name}' has two {kind} files ({getattr(files, kind).name})", path)
        setattr(files, kind, path)
        return
    if kind in files.modalities:
        raise InputError(
            f"subject '{files.name}' has modality '{kind}' twice (also {files.modalities[kind].name})", path
        )
    files.modalities[kind] = path


def _unknown_name(path: Path, name: str | None = None) -> InputError:
    found = f" '{name}'" if name else ""
    return InputError(f"unknown modality name{found} in the file name; expected <modality>.nii.gz or "
                      f"<subject>-<modality>.nii.gz with a modality of {', '.join(CANONICAL_KEYS)} (or an alias: "
                      f"{', '.join(sorted(ALIASES))}), or seg, tissue, mask", path)


def _subject_from_folder(folder: Path) -> SubjectFiles:
    """A canonical or BraTS subject folder."""
    niftis = _nifti_files(folder)
    brats = any(nifti_stem(p).lower().startswith(folder.name.lower() + "-") for p in niftis)
    files = SubjectFiles(folder.name, "brats" if brats else "canonical")
    for path in niftis:
        kind = _classify(nifti_stem(path), folder.name)
        if kind is None:
            raise _unknown_name(path, _unprefixed(nifti_stem(path), folder.name))
        _add_file(files, kind, path)
    targets = folder / TARGETS_FOLDER
    if targets.is_dir():
        for path in _nifti_files(targets):
            key = canonical_key(nifti_stem(path))
            if key is None:
                raise _unknown_name(path, nifti_stem(path))
            files.targets[key] = path
    if (folder / PREPARED_RECORD).is_file():
        files.record = folder / PREPARED_RECORD
    return files


def _unprefixed(stem: str, subject: str) -> str:
    """A file stem without its '<subject>-' prefix (BraTS names)."""
    return stem[len(subject) + 1:] if stem.lower().startswith(subject.lower() + "-") else stem


def _subjects_from_flat(folder: Path, niftis: list[Path]) -> list[SubjectFiles]:
    """The authors' flat layout: DATA/<subject>-<modality>.nii.gz."""
    subjects: dict[str, SubjectFiles] = {}
    for path in niftis:
        stem = nifti_stem(path)
        name, sep, suffix = stem.rpartition("-")
        kind = _classify(suffix, None) if sep else None
        if kind is None or not name:
            raise _unknown_name(path, suffix if sep else stem)
        files = subjects.setdefault(name, SubjectFiles(name, "flat"))
        _add_file(files, kind, path)
    return [subjects[name] for name in sorted(subjects)]


def _looks_like_subject_folder(folder: Path, niftis: list[Path]) -> bool:
    return any(_classify(nifti_stem(p), folder.name) is not None for p in niftis) and all(
        _classify(nifti_stem(p), folder.name) is not None or "-" not in nifti_stem(p) for p in niftis
    )


def discover_subjects(root: str | Path) -> list[SubjectFiles]:
    """Find subjects under `root`: a data folder (any of the three layouts) or one subject folder.

    Every subject must have at least one modality; unknown or duplicated modality names are errors.
    """
    root = Path(root)
    if not root.exists():
        raise InputError("input folder does not exist", root)
    if not root.is_dir():
        raise InputError("expected a folder of subjects or one subject folder", root)
    niftis = _nifti_files(root)
    if niftis and _looks_like_subject_folder(root, niftis):
        subjects = [_subject_from_folder(root)]
    elif niftis:
        subjects = _subjects_from_flat(root, niftis)
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        subjects = [_subject_from_folder(f) for f in folders if _nifti_files(f)]
    if not subjects:
        raise InputError("no subjects found (no .nii.gz or .nii files in it or in its sub-folders)", root)
    for files in subjects:
        if not files.modalities:
            where = files.seg or files.tissue or root / files.name
            raise InputError(f"subject '{files.name}' has no modality image", where)
    names = [s.name for s in subjects]
    if len(set(names)) != len(names):
        raise InputError("two subjects share one name", root)
    return subjects


def modalities_found(subjects: Sequence[SubjectFiles]) -> tuple[str, ...]:
    """Every modality some subject has, in DATA_ORDER: the modality set of a data folder."""
    return in_data_order(key for files in subjects for key in files.modalities)


def require_modalities_present(subjects: Sequence[SubjectFiles], modalities: Sequence[str], root: str | Path,
                               expected_from: str, how_to_choose: str) -> None:
    """The one clear error when no subject of a folder has any of `modalities`: what was found, what was expected
    (and where that came from, e.g. "the config tiny"), and how to choose others."""
    if any(key in modalities for files in subjects for key in files.modalities):
        return
    found = modalities_found(subjects)
    raise InputError(f"its subjects have {', '.join(found)} and none of {', '.join(modalities)} ({expected_from}); "
                     f"{how_to_choose.format(found=','.join(found))}", root)

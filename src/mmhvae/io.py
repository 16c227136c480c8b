"""NIfTI input/output with the full header, subject discovery over three layouts, and the Subject object.

Geometry travels with the array: a Volume holds the voxel array exactly as stored (no reorientation)
together with its affine and NIfTI header, and every output is written with a copy of that header,
so affine, qform/sform (and their codes), zooms and units survive bit-exact.

Layouts read (design.md), a missing file meaning a missing modality:
- canonical: DATA/<subject>/<modality>.nii.gz, optional seg.nii.gz, tissue.nii.gz and harmonised
  targets in DATA/<subject>/targets/<modality>.nii.gz;
- flat (the authors'): DATA/<subject>-<modality>.nii.gz;
- BraTS: DATA/<subject>/<subject>-{t1n,t1c,t2w,t2f,seg}.nii.gz.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from mmhvae.errors import InputError
from mmhvae.files import atomic_path
from mmhvae.modalities import ModalitySet, Subset, canonical_key

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABEL_NAMES = ("seg", "tissue")
TARGETS_FOLDER = "targets"
AFFINE_TOLERANCE_MM = 1e-3
# Working float32 copies of a subject's voxels held while it is processed: the images as read, the
# normalised inputs, the harmonised targets and the predictions (slices go through the network in batches).
WORKING_COPIES = 4
MEMORY_LIMIT_VARIABLE = "MMHVAE_MEMORY_LIMIT_GB"


# ----------------------------------------------------------------------------------------------------
# Memory: refuse a volume that cannot fit before allocating it
# ----------------------------------------------------------------------------------------------------


def available_memory_bytes() -> int | None:
    """Memory this process may still use: $MMHVAE_MEMORY_LIMIT_GB if set, else the system's available memory
    (MemAvailable of /proc/meminfo, or free pages where that does not exist); None when unknown."""
    limit = os.environ.get(MEMORY_LIMIT_VARIABLE)
    if limit:
        return int(float(limit) * 2**30)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(voxels: int, copies: float, path: Path, what: str) -> None:
    """InputError if `copies` float32 copies of `voxels` voxels exceed the available memory."""
    needed = int(voxels) * 4 * copies
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise InputError(f"{what} needs about {needed / 2**30:.1f} GiB of memory, more than the "
                         f"{available / 2**30:.1f} GiB available; crop or resample it first", path)


def header_voxels(path: Path) -> tuple[int, tuple[int, ...]]:
    """Number of voxels and shape from a NIfTI header, without reading the data."""
    try:
        shape = tuple(int(n) for n in nib.load(str(path)).shape)
    except Exception as exc:  # damaged files are reported by read_volume with the same wording
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read as NIfTI ({detail})", path) from None
    return int(np.prod(shape, dtype=np.int64)), shape


# ----------------------------------------------------------------------------------------------------
# Volumes
# ----------------------------------------------------------------------------------------------------


@dataclass
class Volume:
    """A 3D voxel array with the geometry it was read with (affine in RAS mm, full NIfTI header)."""

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def zooms(self) -> tuple[float, ...]:
        return tuple(float(z) for z in self.header.get_zooms()[:3])

    def with_array(self, array: np.ndarray) -> Volume:
        """Same geometry, other voxels (e.g. a prediction on this subject's grid)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array of shape {array.shape} does not fit the grid {self.array.shape}")
        return Volume(array, self.affine.copy(), self.header.copy(), None)

    def same_grid(self, other: Volume, tolerance_mm: float = AFFINE_TOLERANCE_MM) -> bool:
        return self.shape == other.shape and bool(np.max(np.abs(self.affine - other.affine)) <= tolerance_mm)


def nifti_stem(path: Path) -> str | None:
    """File name without its NIfTI suffix, or None if it is not a NIfTI file name."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def read_volume(path: str | Path, nan_to_num: bool = False, dtype=np.float32) -> Volume:
    """Read a 3D NIfTI volume; any problem is an InputError naming the file.

    A trailing singleton 4th dimension (x, y, z, 1) is accepted; other 4D, 2D and empty arrays are not.
    NaN or infinite voxels are refused unless `nan_to_num` replaces them (NaN -> 0, +-inf -> finite extremes).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file does not exist", path)
    try:
        image = nib.load(str(path))
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"not a NIfTI image (read as {type(image).__name__})", path)
        # The array as stored plus its float copy, checked before either is allocated.
        stored = np.dtype(image.get_data_dtype()).itemsize / 4
        check_fits_in_memory(int(np.prod(image.shape, dtype=np.int64)), 1 + stored, path,
                             f"the volume of shape {tuple(image.shape)}")
        array = np.asarray(image.dataobj, dtype=dtype)
    except InputError:
        raise
    except Exception as exc:  # nibabel, gzip and zlib raise many types for damaged files
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read as NIfTI ({detail})", path) from None
    if array.size == 0:
        raise InputError(f"the volume is empty (shape {array.shape})", path)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise InputError(f"expected a 3D volume, found a {array.ndim}D array of shape {array.shape}", path)
    if not np.all(np.isfinite(array)):
        if not nan_to_num:
            count = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise InputError(f"{count} voxels are NaN or infinite (use --nan-to-num to replace them)", path)
        array = np.nan_to_num(array, nan=0.0)
    header = image.header.copy()
    return Volume(np.ascontiguousarray(array), image.affine.copy(), header, path)


def write_volume(path: str | Path, array: np.ndarray, like: Volume, dtype=np.float32) -> Path:
    """Write `array` on the grid of `like`, with a copy of its header, atomically.

    The header's qform/sform, their codes, zooms and units are kept as they were read; only the data
    type and intensity scaling are set for the new voxels.
    """
    if tuple(array.shape) != like.shape:
        raise ValueError(f"array of shape {array.shape} does not fit the grid {like.shape} of {like.path}")
    header = like.header.copy()
    header.set_data_dtype(dtype)
    if np.issubdtype(np.dtype(dtype), np.integer):
        header.set_slope_inter(1.0, 0.0)
    if header["dim"][0] > 3:
        header.set_data_shape(array.shape)
    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), like.affine, header)
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path


def new_volume(array: np.ndarray, affine: np.ndarray, zooms_unit: str = "mm") -> Volume:
    """A volume with a fresh header (qform and sform set from the affine, code 1 = scanner)."""
    image = nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_xyzt_units(xyz=zooms_unit, t="sec")
    return Volume(np.asarray(array, dtype=np.float32), image.affine.copy(), image.header.copy(), None)


# ----------------------------------------------------------------------------------------------------
# Subject discovery
# ----------------------------------------------------------------------------------------------------


@dataclass
class SubjectFiles:
    """Where a subject's files are; nothing is read yet."""

    name: str
    layout: str
    modalities: dict[str, Path] = field(default_factory=dict)
    targets: dict[str, Path] = field(default_factory=dict)
    seg: Path | None = None
    tissue: Path | None = None

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


def _unknown_name(path: Path) -> InputError:
    return InputError("unknown modality name in file name (expected e.g. t2.nii.gz or <subject>-t2.nii.gz)", path)


def _subject_from_folder(folder: Path) -> SubjectFiles:
    """A canonical or BraTS subject folder."""
    niftis = _nifti_files(folder)
    brats = any(nifti_stem(p).lower().startswith(folder.name.lower() + "-") for p in niftis)
    files = SubjectFiles(folder.name, "brats" if brats else "canonical")
    for path in niftis:
        kind = _classify(nifti_stem(path), folder.name)
        if kind is None:
            raise _unknown_name(path)
        _add_file(files, kind, path)
    targets = folder / TARGETS_FOLDER
    if targets.is_dir():
        for path in _nifti_files(targets):
            key = canonical_key(nifti_stem(path))
            if key is None:
                raise _unknown_name(path)
            files.targets[key] = path
    return files


def _subjects_from_flat(folder: Path, niftis: list[Path]) -> list[SubjectFiles]:
    """The authors' flat layout: DATA/<subject>-<modality>.nii.gz."""
    subjects: dict[str, SubjectFiles] = {}
    for path in niftis:
        stem = nifti_stem(path)
        name, sep, suffix = stem.rpartition("-")
        kind = _classify(suffix, None) if sep else None
        if kind is None or not name:
            raise _unknown_name(path)
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


# ----------------------------------------------------------------------------------------------------
# Subjects in memory
# ----------------------------------------------------------------------------------------------------


@dataclass
class Subject:
    """A subject's present modalities (arrays with geometry), optional labels and harmonised targets."""

    name: str
    volumes: dict[str, Volume]
    files: SubjectFiles
    seg: Volume | None = None
    tissue: Volume | None = None
    targets: dict[str, Volume] = field(default_factory=dict)

    @property
    def reference(self) -> Volume:
        """The grid every array of this subject lives on."""
        return next(iter(self.volumes.values()))

    def present(self, modalities: ModalitySet) -> Subset:
        return modalities.ordered(k for k in self.volumes if k in modalities)

    def indicator(self, modalities: ModalitySet) -> tuple[int, ...]:
        """Missingness vector r (Section 3.2) in the order of `modalities`."""
        return modalities.indicator(self.present(modalities))


def sitk_from_volume(array: np.ndarray, affine: np.ndarray):
    """SimpleITK image (LPS) from a voxel array and its RAS affine."""
    import SimpleITK as sitk

    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    linear = ras_to_lps @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(d) for d in (linear / spacing).ravel()))
    image.SetOrigin(tuple(float(o) for o in ras_to_lps @ affine[:3, 3]))
    return image


def resample_onto(moving: Volume, reference: Volume, interpolation: str = "linear") -> Volume:
    """Resample `moving` onto the grid of `reference` (SimpleITK; linear or nearest for labels)."""
    import SimpleITK as sitk

    method = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}[interpolation]
    background = float(moving.array.min())
    try:
        out = sitk.Resample(
            sitk_from_volume(moving.array, moving.affine),
            sitk_from_volume(reference.array, reference.affine),
            sitk.Transform(),
            method,
            background,
        )
    except RuntimeError as exc:
        raise InputError(f"cannot resample onto {reference.path}: {str(exc).splitlines()[0]}", moving.path) from None
    array = np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0)).astype(np.float32)
    return reference.with_array(array)


def _check_or_resample(subject: Subject, resample_to: str | None) -> None:
    """Make every array share one grid: refuse mismatches, or resample onto `resample_to`'s grid."""
    if resample_to is not None:
        if resample_to not in subject.volumes:
            raise InputError(f"--resample-to {resample_to}: subject '{subject.name}' has no such modality",
                             subject.files.modalities.get(resample_to) or subject.reference.path)
        reference = subject.volumes[resample_to]
    else:
        reference = subject.reference

    def fix(volume: Volume, interpolation: str) -> Volume:
        if volume.same_grid(reference):
            return volume
        if resample_to is None:
            difference = (f"shape {volume.shape} differs from {reference.path.name} {reference.shape}"
                          if volume.shape != reference.shape else f"affine differs from {reference.path.name}")
            raise InputError(
                f"subject '{subject.name}': {difference} "
                "(use --resample-to MOD to resample onto one modality's grid)",
                volume.path,
            )
        resampled = resample_onto(volume, reference, interpolation)
        resampled.path = volume.path
        return resampled

    subject.volumes = {k: fix(v, "linear") for k, v in subject.volumes.items()}
    subject.targets = {k: fix(v, "linear") for k, v in subject.targets.items()}
    if subject.seg is not None:
        subject.seg = fix(subject.seg, "nearest")
    if subject.tissue is not None:
        subject.tissue = fix(subject.tissue, "nearest")
    if resample_to is not None:
        subject.volumes = {resample_to: subject.volumes[resample_to]} | subject.volumes


def check_subject_fits_in_memory(files: SubjectFiles, wanted: Sequence[str]) -> None:
    """Estimate a subject's working memory from its headers and refuse it before reading any voxel."""
    paths = [files.modalities[k] for k in wanted]
    first = paths[0]
    voxels, shape = header_voxels(first)
    check_fits_in_memory(voxels * len(paths), WORKING_COPIES, first,
                         f"subject '{files.name}' ({len(paths)} images of shape {shape})")


def load_subject(
    files: SubjectFiles,
    modalities: ModalitySet | Sequence[str] | None = None,
    resample_to: str | None = None,
    nan_to_num: bool = False,
) -> Subject:
    """Read a subject's images (only those in `modalities`, if given) and check they share one grid.

    Modalities outside `modalities` are ignored with a warning; the caller decides whether that is fatal.
    """
    if modalities is not None and not isinstance(modalities, ModalitySet):
        modalities = ModalitySet(tuple(modalities))
    wanted = [k for k in files.modalities if modalities is None or k in modalities]
    ignored = sorted(set(files.modalities) - set(wanted))
    if ignored:
        warnings.warn(f"subject '{files.name}': ignoring modalities {ignored} (not in {list(modalities)})",
                      stacklevel=2)
    if not wanted:
        raise InputError(f"subject '{files.name}' has none of the modalities {list(modalities)}",
                         next(iter(files.modalities.values())).parent)
    if modalities is not None:
        wanted = list(modalities.ordered(wanted))
    check_subject_fits_in_memory(files, wanted)
    subject = Subject(
        files.name,
        {k: read_volume(files.modalities[k], nan_to_num) for k in wanted},
        files,
        seg=read_volume(files.seg) if files.seg else None,
        tissue=read_volume(files.tissue) if files.tissue else None,
        targets={k: read_volume(p, nan_to_num) for k, p in files.targets.items() if k in wanted or modalities is None
                 or k in modalities},
    )
    _check_or_resample(subject, resample_to)
    return subject


def read_every_subject_first(subjects: Sequence[SubjectFiles], read: Callable[[SubjectFiles], object]) -> None:
    """Read and check every subject (with `read`) before a job writes or computes anything, so a bad one late in
    the folder is refused at once and cannot leave a half-done output behind. One subject at a time: memory
    stays that of the largest."""
    if len(subjects) > 1:
        for files in subjects:
            read(files)

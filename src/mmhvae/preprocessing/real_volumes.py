"""`mmhvae prepare`: a folder of real volumes made ready to train on, with the way back to each subject's grid.

For every subject (any of the three layouts), in this order:
1. a canonical axis order with the slice axis third, the model's voxel size and its geometry (`reorient`);
2. a brain mask: the subject's own mask.nii.gz, else the foreground of its images (voxels above each image's
   minimum, their union, holes filled), as for skull-stripped data such as BraTS;
3. a crop to the bounding box of the ultrasound field of view when there is an ultrasound, else of the brain
   mask, plus a margin;
4. harmonised targets (Section 4.4.1) with white matter from the subject's tissue.nii.gz (label 3), else from
   the offline intensity clustering; a tumour label map (seg.nii.gz) is taken out of the white matter.
It writes the canonical layout, OUT/<subject>/<modality>.nii.gz with mask.nii.gz, seg.nii.gz, tissue.nii.gz and
targets/, and OUT/<subject>/prepared.json, from which `mmhvae predict` writes its outputs back on the subject's
original grid and header.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from mmhvae.errors import InputError, refuse_to_overwrite
from mmhvae.io.files import write_text_atomic
from mmhvae.io.layouts import PREPARED_RECORD, TARGETS_FOLDER, SubjectFiles, discover_subjects
from mmhvae.io.subjects import Subject, load_subject, read_every_subject_first
from mmhvae.io.volumes import Volume, resample_onto, write_volume
from mmhvae.modalities import ULTRASOUND, in_data_order
from mmhvae.preprocessing.intensity import harmonise_target
from mmhvae.preprocessing.masks import (
    foreground_mask,
    ultrasound_fov_mask,
    white_matter_by_clustering,
    white_matter_from_labels,
)
from mmhvae.preprocessing.reorient import (
    GridRecord,
    bounding_box,
    check_slice_axis,
    cropped,
    grid_at_spacing,
    orientation_to,
    reoriented,
)

log = logging.getLogger(__name__)

CROP_REGIONS = ("brain", "none")
RECORD_FORMAT = "mmhvae-prepared"


@dataclass(frozen=True)
class PrepareSettings:
    """How `mmhvae prepare` makes a subject ready (its options)."""

    spacing_mm: float | None = 1.0  # the model's voxel size; None keeps each subject's
    slice_axis: str = "axial"  # reorient.SLICE_AXES
    crop: str = "brain"  # to the brain mask (the ultrasound field of view when there is one), or "none"
    margin_mm: float = 4.0
    targets: bool = True
    resample_to: str | None = None
    nan_to_num: bool = False

    def check(self) -> None:
        check_slice_axis(self.slice_axis)
        if self.crop not in CROP_REGIONS:
            raise InputError(f"unknown crop '{self.crop}'; choose one of {', '.join(CROP_REGIONS)}")
        if self.spacing_mm is not None and not self.spacing_mm > 0:
            raise InputError(f"--spacing must be a positive number of mm (or 'keep'), got {self.spacing_mm}")
        if not self.margin_mm >= 0:
            raise InputError(f"--margin must be >= 0 mm, got {self.margin_mm}")


@dataclass
class PreparedVolumes:
    """A subject on its prepared grid: images, labels, brain mask, targets, and the record of how."""

    name: str
    images: dict[str, Volume]
    labels: dict[str, Volume]  # seg, tissue (when given) and mask
    targets: dict[str, Volume]
    record: GridRecord
    sources: dict[str, str] = field(default_factory=dict)  # where the mask and the white matter came from


def on_prepared_grid(subject: Subject, settings: PrepareSettings) -> tuple[dict[str, Volume], dict[str, Volume],
                                                                          np.ndarray, tuple, Volume | None]:
    """Images and labels reoriented and at the model's voxel size (not yet cropped), with the orientation
    transform, the shape after reorientation and the resampled grid (None when the voxel size already fitted)."""
    transform = orientation_to(subject.reference.affine, settings.slice_axis)
    images = {k: reoriented(v, transform) for k, v in subject.volumes.items()}
    labels = {name: reoriented(getattr(subject, name), transform) for name in ("seg", "tissue", "mask")
              if getattr(subject, name) is not None}
    first = next(iter(images.values()))
    grid = None if settings.spacing_mm is None else grid_at_spacing(first, settings.spacing_mm)
    if grid is not None:
        images = {k: resample_onto(v, grid, "linear") for k, v in images.items()}
        labels = {k: resample_onto(v, grid, "nearest", background=0.0) for k, v in labels.items()}
    return images, labels, transform, first.shape, grid


def brain_mask(images: dict[str, Volume], labels: dict[str, Volume]) -> tuple[np.ndarray, str]:
    """The subject's mask.nii.gz, else the union of its images' foregrounds with holes filled."""
    if "mask" in labels:
        return labels["mask"].array > 0.5, "mask.nii.gz"
    union = np.logical_or.reduce([foreground_mask(v.array) for v in images.values()])
    return ndimage.binary_fill_holes(union), "foreground of the images"


def crop_box(images: dict[str, Volume], mask: np.ndarray, settings: PrepareSettings, spacing: float):
    """The box every volume is cropped to (the whole grid with crop 'none')."""
    if settings.crop == "none":
        return tuple((0, n) for n in mask.shape)
    region = ultrasound_fov_mask(images[ULTRASOUND].array) if ULTRASOUND in images else mask
    if not region.any():
        raise InputError("the images have no foreground to crop to (use --crop none)")
    return bounding_box(region, int(np.ceil(settings.margin_mm / spacing)))


def white_matter(key: str, image: np.ndarray, labels: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    """White matter of one image: label 3 of the tissue map, else the clustering of the brain's intensities; the
    tumour is left out of both (an enhancing rim would otherwise be T1c's brightest class)."""
    healthy = mask & (labels["seg"] < 0.5) if "seg" in labels else mask
    if "tissue" in labels:
        return white_matter_from_labels(labels["tissue"]) & healthy
    return white_matter_by_clustering(image, key, foreground=healthy)


def harmonised(images: dict[str, Volume], labels: dict[str, Volume], mask: np.ndarray,
               subject: Subject) -> dict[str, Volume]:
    """Targets of the MR images (Section 4.4.1), inside the brain mask."""
    arrays = {name: volume.array for name, volume in labels.items()}
    targets = {}
    for key, volume in images.items():
        if key == ULTRASOUND:
            continue  # its target is its own normalised input
        try:
            target = harmonise_target(volume.array, white_matter(key, volume.array, arrays, mask), key,
                                      foreground=mask)
        except InputError as exc:
            raise InputError(exc.problem, subject.volumes[key].path) from None
        targets[key] = volume.with_array(target)
    return targets


def prepare_volumes(subject: Subject, settings: PrepareSettings) -> PreparedVolumes:
    """One subject on its prepared grid (nothing written)."""
    images, labels, transform, oriented_shape, grid = on_prepared_grid(subject, settings)
    mask, mask_source = brain_mask(images, labels)
    spacing = float(np.linalg.norm(next(iter(images.values())).affine[:3, 0]))
    box = crop_box(images, mask, settings, spacing)
    images = {k: cropped(v, box) for k, v in images.items()}
    labels = {k: cropped(v, box) for k, v in labels.items() if k != "mask"}
    mask = mask[tuple(slice(lo, hi) for lo, hi in box)]
    first = next(iter(images.values()))
    labels["mask"] = first.with_array(mask.astype(np.float32))
    reference = subject.reference
    record = GridRecord(reference.shape, reference.affine.copy(), reference.header.copy(), transform, oriented_shape,
                        None if grid is None else grid.affine.copy(), None if grid is None else grid.shape, box,
                        first.affine.copy(), first.shape)
    sources = {"mask": mask_source}
    targets = {}
    if settings.targets:
        targets = harmonised(images, labels, mask, subject)
        sources["white_matter"] = "tissue.nii.gz" if "tissue" in labels else "intensity clustering"
    return PreparedVolumes(subject.name, images, labels, targets, record, sources)


def write_prepared(folder: Path, prepared: PreparedVolumes, settings: PrepareSettings,
                   originals: SubjectFiles) -> list[Path]:
    """The canonical layout of one prepared subject, then its prepared.json."""
    written = [write_volume(folder / f"{k}.nii.gz", v.array, v) for k, v in prepared.images.items()]
    written += [write_volume(folder / f"{k}.nii.gz", np.rint(v.array), v, dtype=np.uint8)
                for k, v in prepared.labels.items()]
    written += [write_volume(folder / TARGETS_FOLDER / f"{k}.nii.gz", v.array, v) for k, v in prepared.targets.items()]
    record = {"format": RECORD_FORMAT, "version": 1, "settings": asdict(settings), **prepared.sources,
              "inputs": {k: str(p) for k, p in originals.modalities.items()}, **prepared.record.to_json()}
    write_text_atomic(folder / PREPARED_RECORD, json.dumps(record, indent=1) + "\n")
    return [*written, folder / PREPARED_RECORD]


def read_grid_record(path: Path) -> GridRecord:
    """The GridRecord of a prepared subject's prepared.json."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the record of `mmhvae prepare` ({exc})", path) from None
    if not isinstance(values, dict) or values.get("format") != RECORD_FORMAT:
        raise InputError("not a record of `mmhvae prepare`", path)
    return GridRecord.from_json(values, Path(path))


def prepare_data(data: str | Path, out: str | Path, settings: PrepareSettings = PrepareSettings(),
                 overwrite: bool = False) -> list[Path]:
    """The `mmhvae prepare` job: every subject of `data` prepared into `out` (see the module docstring).

    Every subject is prepared in memory before anything is written (so each is prepared twice), and a subject
    folder of `out` that holds files is refused unless `overwrite`."""
    settings.check()
    subjects = discover_subjects(data)
    out = Path(out)
    for files in subjects:
        existing = out / files.name
        refuse_to_overwrite(existing, overwrite, exists=existing.is_dir() and any(existing.iterdir()),
                            problem=f"prepared subject '{files.name}' already exists")

    def prepared_subject(files: SubjectFiles) -> tuple[Subject, PreparedVolumes]:
        subject = load_subject(files, resample_to=settings.resample_to, nan_to_num=settings.nan_to_num)
        return subject, prepare_volumes(subject, settings)

    # Every subject is prepared once before the first is written (a white matter that cannot be found fails late).
    read_every_subject_first(subjects, prepared_subject)
    written = []
    for files in subjects:
        subject, prepared = prepared_subject(files)
        written += write_prepared(out / files.name, prepared, settings, files)
        grid = next(iter(prepared.images.values()))
        log.info(f"{files.name}: {'+'.join(in_data_order(prepared.images))} {subject.reference.shape} at "
                 f"{'x'.join(f'{z:.3g}' for z in subject.reference.zooms)} mm -> {grid.shape} at "
                 f"{'x'.join(f'{z:.3g}' for z in grid.zooms)} mm, {settings.slice_axis} slices; mask: "
                 f"{prepared.sources['mask']}"
                 + (f"; white matter: {prepared.sources['white_matter']}" if settings.targets else ""))
    return written

"""A subject in memory: its modalities, labels and harmonised targets read onto one grid.

Images on different grids are refused, or resampled onto one modality's grid (--resample-to); a subject too
large for the memory is refused from its headers before any voxel is read.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mmhvae.errors import InputError
from mmhvae.io.layouts import SubjectFiles
from mmhvae.io.volumes import WORKING_COPIES, Volume, check_fits_in_memory, header_voxels, read_volume, resample_onto
from mmhvae.modalities import ModalitySet, Subset


@dataclass
class Subject:
    """A subject's present modalities (arrays with geometry), optional labels, brain mask and harmonised targets."""

    name: str
    volumes: dict[str, Volume]
    files: SubjectFiles
    seg: Volume | None = None
    tissue: Volume | None = None
    targets: dict[str, Volume] = field(default_factory=dict)
    mask: Volume | None = None

    @property
    def reference(self) -> Volume:
        """The grid every array of this subject lives on."""
        return next(iter(self.volumes.values()))

    def present(self, modalities: ModalitySet) -> Subset:
        return modalities.ordered(k for k in self.volumes if k in modalities)

    def indicator(self, modalities: ModalitySet) -> tuple[int, ...]:
        """Missingness vector r (Section 3.2) in the order of `modalities`."""
        return modalities.indicator(self.present(modalities))


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
    if subject.mask is not None:
        subject.mask = fix(subject.mask, "nearest")
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
        mask=read_volume(files.mask) if files.mask else None,
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

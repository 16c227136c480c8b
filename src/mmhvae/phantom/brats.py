"""The BraTS recipe of the phantom (`mmhvae simulate --layout brats`): a cohort named, oriented and cropped as
BraTS stores its data, so that the BraTS path (prepare, train, predict, the BraSyn protocol) can be tried here.

Each subject has the anatomy and tumour of the phantom subject of the same seed and index (anatomy.py), imaged
on an axial grid around the brain as BraTS stores it: the array axes run towards the left, the back and the top
(LPS, an affine diag(-s, -s, s)) over 240 x 240 x 155 mm (BraTS: 240x240x155 voxels of 1 mm; `--size` sets the
in-plane matrix, 240 giving 1 mm). The four MR sequences carry site effects (mr_physics.py) and are skull-stripped
(0 outside the intracranial mask), as BraTS is; the tumour labels are BraTS 2023's (1 necrotic core, 2 oedema,
3 enhancing tumour). No ultrasound, no tissue map and no harmonised targets, which BraTS does not have.

Files: OUT/<subject>/<subject>-t1n|t1c|t2w|t2f|seg.nii.gz, subjects named BraTS-PHANTOM-<index>-000.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmhvae.errors import InputError
from mmhvae.io.volumes import new_volume, write_volume
from mmhvae.phantom.anatomy import draw_subject
from mmhvae.phantom.mr_physics import draw_site_effects, site_image
from mmhvae.phantom.subject import PhantomSubject, fractions_on_points, segmentation_labels, subject_rng
from mmhvae.phantom.template import load_template
from mmhvae.phantom.tissues import ALL_TISSUES, BRAIN_TISSUES

BRATS_FIELD_MM = (240.0, 240.0, 155.0)
# The BraTS 2023 file name of each modality key.
BRATS_NAMES: dict[str, str] = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f"}
BRATS_MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")


def brats_subject_name(index: int) -> str:
    return f"BraTS-PHANTOM-{index:05d}-000"


def brats_slices(size: int) -> int:
    """Axial slices over BraTS's 155 mm at the in-plane spacing of `size` (155 at 240)."""
    return max(1, int(round(size * BRATS_FIELD_MM[2] / BRATS_FIELD_MM[0])))


def check_brats_modalities(modalities: Sequence[str]) -> None:
    unknown = [k for k in modalities if k not in BRATS_NAMES]
    if unknown:
        raise InputError(f"--layout brats has the MR sequences {', '.join(BRATS_MODALITIES)}, not {', '.join(unknown)}")


def axial_affine(centre: np.ndarray, size: int, slices: int) -> np.ndarray:
    """The voxel-to-world affine of an LPS-stored axial grid of `size` x `size` x `slices` centred on `centre`."""
    spacing = BRATS_FIELD_MM[0] / size
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-spacing, -spacing, spacing])
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.array([size, size, slices]) - 1) / 2.0)
    return affine


def voxel_points(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(N, 3) world positions of every voxel, in C order."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    return index @ affine[:3, :3].T + affine[:3, 3]


def simulate_brats_subject(index: int, seed: int, modalities: Sequence[str], present: Sequence[str], size: int,
                           slices: int) -> PhantomSubject:
    """Subject `index` of the cohort of `seed` on BraTS's grid, skull-stripped (arrays in memory)."""
    anatomy = draw_subject(subject_rng(seed, index, "anatomy"), subject_rng(seed, index, "tumour"))
    shape = (size, size, slices)
    affine = axial_affine(anatomy.brain_centre_world(load_template()), size, slices)
    spacing = BRATS_FIELD_MM[0] / size
    fractions = fractions_on_points(anatomy, voxel_points(affine, shape), spacing).reshape((len(ALL_TISSUES),
                                                                                            *shape))
    brain = sum(fractions[ALL_TISSUES.index(t)] for t in (*BRAIN_TISSUES, "necrosis", "enhancing", "nonenhancing",
                                                          "oedema")) >= 0.5
    seg = np.where(brain, segmentation_labels(fractions), 0).astype(np.uint8)
    inputs, sites = {}, {}
    for key in modalities:
        if key not in present:
            continue
        rng = subject_rng(seed, index, key)
        site = draw_site_effects(key, rng)
        sites[key] = site.summary()
        inputs[key] = np.where(brain, site_image(fractions, site, spacing, rng), 0.0).astype(np.float32)
    name = brats_subject_name(index)
    summary = {"name": name, "index": index, "r": [int(k in present) for k in modalities],
               "present": [k for k in modalities if k in present], "tumour": anatomy.tumour.summary(),
               "geometry": {"layout": "brats", "affine": np.round(affine, 4).tolist()}, "site": sites,
               "tumour_voxels_in_brain": int(np.count_nonzero(seg))}
    return PhantomSubject(name, affine, tuple(k for k in modalities if k in present), inputs, {}, seg, None, brain,
                          summary)


def write_brats_subject(folder: Path, phantom: PhantomSubject) -> None:
    """<subject>-t1n|t1c|t2w|t2f.nii.gz and <subject>-seg.nii.gz in `folder`."""
    like = new_volume(np.zeros(phantom.seg.shape, np.float32), phantom.affine)
    for key, image in phantom.inputs.items():
        write_volume(folder / f"{phantom.name}-{BRATS_NAMES[key]}.nii.gz", image, like)
    write_volume(folder / f"{phantom.name}-seg.nii.gz", phantom.seg, like, dtype=np.uint8)

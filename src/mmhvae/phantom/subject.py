"""One subject of the phantom cohort in "ultrasound space", simulated in memory and written in the canonical layout.

A random anatomy (MNI152 template warped by a random affine and a smooth elastic field) with a tumour that pushes
its surroundings (anatomy.py); a probe placed on the cortical surface over the tumour and aimed at it; an output
grid in the probe's frame (the fan plane in-plane, the sweep along the third axis, 96 mm in-plane as in the
paper); tissue fractions sampled once on that grid; then ultrasound (us_sim.py) and MR images (mr_physics.py).
Inputs carry site effects; harmonised targets are the nominal-protocol images normalised as in Section 4.4.1; MR
is cropped to the ultrasound field of view.

Files (docs/data.md): <subject>/<modality>.nii.gz (inputs), <subject>/targets/<mr>.nii.gz, <subject>/seg.nii.gz
(0 bg, 1 necrosis, 2 oedema, 3 enhancing), <subject>/tissue.nii.gz (0 background, 1 CSF, 2 GM, 3 WM,
4 non-brain, 5 lesion).

Determinism: every random draw comes from a Generator seeded by (seed, subject index, purpose), so a subject is
the same whatever the cohort size, the first index, or the other modalities requested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from mmhvae.io.volumes import new_volume, write_volume
from mmhvae.modalities import CANONICAL_KEYS, ULTRASOUND
from mmhvae.phantom.anatomy import SubjectAnatomy, draw_subject
from mmhvae.phantom.geometry import PAPER_FIELD_MM, Grid, ProbePlacement, fan_mask, plan_grid
from mmhvae.phantom.mr_physics import draw_site_effects, nominal_image, site_image
from mmhvae.phantom.tissues import ALL_TISSUES
from mmhvae.phantom.us_sim import Probe, get_probe, scan_convert, simulate_echo, simulate_echo_simus
from mmhvae.preprocessing.intensity import harmonise_target
from mmhvae.preprocessing.masks import crop_to_fov

US_FLOOR = 1e-3  # B-mode inside the fan never reaches 0, so the FOV is the non-zero region
SEG_LABELS = {"necrosis": 1, "oedema": 2, "enhancing": 3}
TISSUE_LABELS = {"background": 0, "csf": 1, "gm": 2, "wm": 3, "non_brain": 4, "lesion": 5}
_STREAMS = {"anatomy": 0, "tumour": 1, "probe": 2, "missing": 3, "us": 4}


def subject_rng(seed: int, index: int, purpose: str) -> np.random.Generator:
    """The random stream of one subject for one purpose ('anatomy', ..., or a modality key)."""
    stream = _STREAMS[purpose] if purpose in _STREAMS else 10 + CANONICAL_KEYS.index(purpose)
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), stream]))



@dataclass
class PhantomSubject:
    name: str
    affine: np.ndarray
    present: tuple[str, ...]
    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    seg: np.ndarray
    tissue: np.ndarray | None
    fov: np.ndarray
    summary: dict = field(default_factory=dict)


def fractions_on_points(subject: SubjectAnatomy, points: np.ndarray, voxel_mm: float,
                         chunk: int = 400_000) -> np.ndarray:
    """Tissue fractions (len(ALL_TISSUES), N), in chunks so a 192^3 grid stays within memory."""
    out = np.empty((len(ALL_TISSUES), points.shape[0]), np.float32)
    for start in range(0, points.shape[0], chunk):
        out[:, start:start + chunk] = subject.tissue_fractions(points[start:start + chunk], voxel_mm)
    return out


def segmentation_labels(fractions: np.ndarray) -> np.ndarray:
    """0 bg, 1 necrosis, 2 oedema (and non-enhancing low-grade tumour), 3 enhancing, by majority."""
    index = {name: ALL_TISSUES.index(name) for name in ("necrosis", "enhancing", "nonenhancing", "oedema")}
    necrosis, enhancing = fractions[index["necrosis"]], fractions[index["enhancing"]]
    oedema = fractions[index["oedema"]] + fractions[index["nonenhancing"]]
    lesion = necrosis + enhancing + oedema >= 0.5
    label = np.argmax(np.stack([necrosis, oedema, enhancing]), axis=0) + 1
    return np.where(lesion, label, 0).astype(np.uint8)


def tissue_labels(fractions: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """0 background, 1 CSF, 2 GM, 3 WM (healthy white matter only), 4 non-brain, 5 lesion, by majority."""
    def total(names):
        return sum(fractions[ALL_TISSUES.index(n)] for n in names)

    classes = np.stack([
        1.0 - fractions.sum(axis=0),
        total(("csf_sulcal", "csf_ventricle", "choroid")),
        total(("gm",)),
        total(("wm",)),
        total(("bone", "scalp", "falx")),
    ])
    labels = np.argmax(classes, axis=0).astype(np.uint8)
    labels[seg > 0] = TISSUE_LABELS["lesion"]
    return labels


def simulate_subject(index: int, seed: int, modalities: Sequence[str], present: Sequence[str],
                     size: int, slices: int, us_engine: str = "fast", us_probe: str = "default",
                     field_mm: float = PAPER_FIELD_MM) -> PhantomSubject:
    """Simulate subject `index` of the cohort of `seed`, with the modalities `present` among `modalities` (arrays
    in memory; nothing written)."""
    probe = get_probe(us_probe)
    subject = draw_subject(subject_rng(seed, index, "anatomy"), subject_rng(seed, index, "tumour"))
    grid = plan_grid(subject, size, slices, subject_rng(seed, index, "probe"), probe=probe, field_mm=field_mm)
    spacing = grid.spacing_mm
    fractions = fractions_on_points(subject, grid.voxel_points_world(), spacing).reshape(
        (len(ALL_TISSUES), *grid.shape))

    seg = segmentation_labels(fractions)
    tissue = tissue_labels(fractions, seg)
    inputs: dict[str, np.ndarray] = {}
    if ULTRASOUND in modalities:
        fov = fan_mask(grid)
        if ULTRASOUND in present:
            inputs[ULTRASOUND] = simulate_ultrasound(fractions, grid, probe, us_engine, subject_rng(seed, index, "us"))
    else:
        fov = fractions.sum(axis=0) >= 0.5  # MR only: the head is the field of view

    targets: dict[str, np.ndarray] = {}
    sites: dict[str, dict] = {}
    wm = tissue == TISSUE_LABELS["wm"]
    for key in modalities:
        if key == ULTRASOUND or key not in present:
            continue
        rng = subject_rng(seed, index, key)
        site = draw_site_effects(key, rng)
        sites[key] = site.summary()
        inputs[key] = crop_to_fov(site_image(fractions, site, spacing, rng), fov)
        nominal = nominal_image(fractions, key, spacing, rng)
        targets[key] = harmonise_target(nominal, wm & fov, key, foreground=fov)
    summary = {
        "name": subject_name(index),
        "index": index,
        "r": [int(k in present) for k in modalities],
        "present": [k for k in modalities if k in present],
        "tumour": subject.tumour.summary(),
        "geometry": grid.summary,
        "site": sites,
        "tumour_voxels_in_fov": int(np.count_nonzero((seg > 0) & fov)),
    }
    return PhantomSubject(subject_name(index), grid.affine, tuple(k for k in modalities if k in present),
                          inputs, targets, crop_to_fov(seg, fov).astype(np.uint8),
                          crop_to_fov(tissue, fov).astype(np.uint8), fov, summary)


def simulate_ultrasound(fractions: np.ndarray, grid: Grid, probe: Probe, engine: str,
                        rng: np.random.Generator) -> np.ndarray:
    """B-mode on the grid: the grid's tissue fractions resampled onto the fan's polar grid (twice as fine
    in depth), the echo simulated there, then scan-converted back."""
    spacing = grid.spacing_mm
    fractions = open_craniotomy(fractions, grid)
    angles, radii = grid.fan.polar_axes(sample_mm=spacing / 2.0)
    points = grid.fan.polar_points(angles, radii, grid.sweep_mm)
    voxels = np.stack([
        (points[..., 0] - grid.lateral_mm[0]) / spacing,
        (points[..., 1] - grid.axial_mm[0]) / spacing,
        np.broadcast_to(np.arange(len(grid.sweep_mm), dtype=np.float64), points.shape[:3]),
    ])
    polar = np.stack([ndimage.map_coordinates(tissue, voxels, order=1, mode="nearest") for tissue in fractions])
    simulate = simulate_echo if engine == "fast" else simulate_echo_simus
    echo = simulate(polar, angles, radii, spacing, probe, rng)
    image, inside = scan_convert(echo.bmode, grid.fan, angles, radii, grid.lateral_mm, grid.axial_mm)
    image[inside] = np.maximum(image[inside], US_FLOOR)
    return image


def open_craniotomy(fractions: np.ndarray, grid: Grid, radius_mm: float = ProbePlacement.craniotomy_radius_mm
                    ) -> np.ndarray:
    """The intra-operative anatomy: skull and scalp removed in a cylinder around the probe axis (the
    craniotomy, filled with saline); the pre-operative MR keeps them."""
    lateral, sweep = np.meshgrid(grid.lateral_mm, grid.sweep_mm, indexing="ij")
    opened = (np.hypot(lateral, sweep) <= radius_mm)[:, None, :]
    out = fractions.copy()
    for name in ("bone", "scalp"):
        out[ALL_TISSUES.index(name)] *= ~opened
    return out


def subject_name(index: int) -> str:
    return f"sub-{index:03d}"


def write_subject(folder: Path, phantom: PhantomSubject) -> None:
    like = new_volume(np.zeros(phantom.seg.shape, np.float32), phantom.affine)
    for key, image in phantom.inputs.items():
        write_volume(folder / f"{key}.nii.gz", image, like)
    for key, image in phantom.targets.items():
        write_volume(folder / "targets" / f"{key}.nii.gz", image, like)
    write_volume(folder / "seg.nii.gz", phantom.seg, like, dtype=np.uint8)
    write_volume(folder / "tissue.nii.gz", phantom.tissue, like, dtype=np.uint8)

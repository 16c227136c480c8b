"""The embedded default data: a seeded multimodal brain-tumour phantom cohort in "ultrasound space".

For each subject: a random anatomy (MNI152 template warped by a random affine and a smooth elastic field)
with a tumour that pushes its surroundings (anatomy.py); a probe placed on the cortical surface over the
tumour and aimed at it; an output grid in the probe's frame (the fan plane in-plane, the sweep along the
third axis, 96 mm in-plane as in the paper); tissue fractions sampled once on that grid; then ultrasound
(us_sim.py) and MR images (mr_physics.py). Inputs carry site effects; harmonised targets are the
nominal-protocol images normalised as in Section 4.4.1; MR is cropped to the ultrasound field of view.

Layout written (docs/data.md): OUT/<subject>/<modality>.nii.gz (inputs), OUT/<subject>/targets/<mr>.nii.gz,
OUT/<subject>/seg.nii.gz (0 bg, 1 necrosis, 2 oedema, 3 enhancing), OUT/<subject>/tissue.nii.gz
(0 background, 1 CSF, 2 GM, 3 WM, 4 non-brain, 5 lesion), OUT/cohort.json.

Determinism: every random draw comes from a Generator seeded by (seed, subject index, purpose), so a
subject is the same whatever the cohort size, the first index, or the other modalities requested.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from mmhvae import __version__
from mmhvae.errors import InputError
from mmhvae.io.files import write_text_atomic
from mmhvae.io.volumes import new_volume, write_volume
from mmhvae.modalities import CANONICAL_KEYS, ULTRASOUND, parse_modality_list
from mmhvae.phantom.anatomy import AnatomyVariation, SubjectAnatomy, TumourVariation, draw_subject
from mmhvae.phantom.geometry import PAPER_FIELD_MM, Grid, ProbePlacement, fan_mask, plan_grid
from mmhvae.phantom.mr_physics import (
    NOMINAL_PROTOCOLS,
    TISSUE_RELAXATION,
    SiteVariation,
    draw_site_effects,
    nominal_image,
    site_image,
)
from mmhvae.phantom.preview import write_preview
from mmhvae.phantom.tissues import ALL_TISSUES
from mmhvae.phantom.us_sim import (
    ACOUSTIC_TISSUES,
    US_ENGINES,
    Probe,
    get_probe,
    scan_convert,
    simulate_echo,
    simulate_echo_simus,
)
from mmhvae.preprocessing.intensity import harmonise_target
from mmhvae.preprocessing.masks import crop_to_fov

DEFAULT_MODALITIES: tuple[str, ...] = ("us", "t2", "t1c", "flair")
REMIND_SUBJECTS = 104  # Section 4.1: 98 ceT1, 66 T2 and 21 FLAIR among 104 patients; iUS for all
REMIND_COUNTS: dict[str, int] = {"us": 104, "t1c": 98, "t2": 66, "flair": 21}
MISSING_PRESETS = ("remind", "complete")
US_FLOOR = 1e-3  # B-mode inside the fan never reaches 0, so the FOV is the non-zero region
SEG_LABELS = {"necrosis": 1, "oedema": 2, "enhancing": 3}
TISSUE_LABELS = {"background": 0, "csf": 1, "gm": 2, "wm": 3, "non_brain": 4, "lesion": 5}
_STREAMS = {"anatomy": 0, "tumour": 1, "probe": 2, "missing": 3, "us": 4}


def subject_rng(seed: int, index: int, purpose: str) -> np.random.Generator:
    """The random stream of one subject for one purpose ('anatomy', ..., or a modality key)."""
    stream = _STREAMS[purpose] if purpose in _STREAMS else 10 + CANONICAL_KEYS.index(purpose)
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), stream]))


def default_slices(size: int) -> int:
    """Sweep length: three quarters of the in-plane field (48 slices at size 64, 144 at 192)."""
    return max(1, int(round(0.75 * size)))


# ----------------------------------------------------------------------------------------------------
# Missingness
# ----------------------------------------------------------------------------------------------------


def parse_missing(text: str, modalities: Sequence[str]) -> dict[str, float]:
    """Presence probability per modality: 'remind', 'complete', or 'MOD=P,...' (unlisted modalities: 1).

    'remind' uses the ReMIND counts of Section 4.1 (us always; t1c 98/104, t2 66/104, flair 21/104); MR
    keys that ReMIND lacks (t1, pd) are always present.
    """
    modalities = parse_modality_list(modalities)
    spec = text.strip().lower()
    if spec == "complete":
        return {key: 1.0 for key in modalities}
    if spec == "remind":
        return {key: REMIND_COUNTS.get(key, REMIND_SUBJECTS) / REMIND_SUBJECTS for key in modalities}
    probabilities = {key: 1.0 for key in modalities}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--missing '{text}': expected remind, complete or MOD=P,... (e.g. t2=0.6,flair=0.2)")
        key = parse_modality_list([name])[0]
        if key not in probabilities:
            raise InputError(f"--missing '{text}': '{key}' is not among the simulated modalities {list(modalities)}")
        try:
            p = float(value)
        except ValueError:
            raise InputError(f"--missing '{text}': '{value}' is not a probability") from None
        if not 0.0 <= p <= 1.0:
            raise InputError(f"--missing '{text}': the probability of {key} must lie in [0, 1]")
        probabilities[key] = p
    if all(p == 0.0 for p in probabilities.values()):
        raise InputError(f"--missing '{text}': every modality would be missing")
    return probabilities


def draw_present(probabilities: dict[str, float], rng: np.random.Generator) -> tuple[str, ...]:
    """Which modalities a subject has: independent draws; never none (then the likeliest one is kept)."""
    keys = list(probabilities)
    draws = rng.random(len(keys))  # one draw per key, always, so the stream does not depend on outcomes
    present = tuple(k for k, u in zip(keys, draws) if u < probabilities[k])
    if not present:
        present = (max(keys, key=lambda k: probabilities[k]),)
    return present


# ----------------------------------------------------------------------------------------------------
# One subject
# ----------------------------------------------------------------------------------------------------


@dataclass
class PhantomSubject:
    name: str
    affine: np.ndarray
    present: tuple[str, ...]
    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    seg: np.ndarray
    tissue: np.ndarray
    fov: np.ndarray
    summary: dict = field(default_factory=dict)


def _fractions_on_points(subject: SubjectAnatomy, points: np.ndarray, voxel_mm: float,
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


def simulate_subject(index: int, seed: int, modalities: Sequence[str], probabilities: dict[str, float],
                     size: int, slices: int, us_engine: str = "fast", us_probe: str = "default",
                     field_mm: float = PAPER_FIELD_MM) -> PhantomSubject:
    """Simulate subject `index` of the cohort of `seed` (arrays in memory; nothing written)."""
    probe = get_probe(us_probe)
    subject = draw_subject(subject_rng(seed, index, "anatomy"), subject_rng(seed, index, "tumour"))
    grid = plan_grid(subject, size, slices, subject_rng(seed, index, "probe"), probe=probe, field_mm=field_mm)
    present = draw_present(probabilities, subject_rng(seed, index, "missing"))
    spacing = grid.spacing_mm
    fractions = _fractions_on_points(subject, grid.voxel_points_world(), spacing).reshape(
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


# ----------------------------------------------------------------------------------------------------
# The cohort
# ----------------------------------------------------------------------------------------------------


def _check_settings(subjects: int, size: int, slices: int, us_engine: str, us_probe: str, first_index: int) -> None:
    if subjects < 1:
        raise InputError(f"--subjects must be at least 1 (got {subjects})")
    if size < 16:
        raise InputError(f"--size must be at least 16 (got {size})")
    if slices < 1:
        raise InputError(f"--slices must be at least 1 (got {slices})")
    if first_index < 0:
        raise InputError(f"the first subject index must be >= 0 (got {first_index})")
    if us_engine not in US_ENGINES:
        raise InputError(f"unknown --us-engine '{us_engine}'; choose one of {', '.join(US_ENGINES)}")
    get_probe(us_probe)


def simulate_cohort(
    out: Path,
    subjects: int = 20,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    size: int = 64,
    slices: int | None = None,
    seed: int = 0,
    missing: str = "remind",
    us_engine: str = "fast",
    us_probe: str = "default",
    preview: Path | None = None,
    first_index: int = 0,
    field_mm: float = PAPER_FIELD_MM,
) -> dict:
    """Write a phantom cohort to `out` and return the content of its cohort.json."""
    out = Path(out)
    modalities = parse_modality_list(modalities)
    slices = default_slices(size) if slices is None else int(slices)
    _check_settings(subjects, size, slices, us_engine, us_probe, first_index)
    probabilities = parse_missing(missing, modalities)
    if us_engine == "simus" and ULTRASOUND in modalities:
        try:
            import pymust  # noqa: F401
        except ImportError:
            raise InputError(
                "--us-engine simus needs the optional package pymust (pip install pymust==0.1.9)") from None

    records = []
    for index in range(first_index, first_index + subjects):
        phantom = simulate_subject(index, seed, modalities, probabilities, size, slices, us_engine, us_probe, field_mm)
        write_subject(out / phantom.name, phantom)
        records.append(phantom.summary)
    cohort = {
        "generator": f"mmhvae {__version__} mmhvae.phantom.cohort",
        "seed": int(seed),
        "first_index": int(first_index),
        "subjects": int(subjects),
        "modalities": list(modalities),
        "missing": missing,
        "presence_probability": {k: round(v, 6) for k, v in probabilities.items()},
        "parameters": _parameters(size, slices, field_mm, us_engine, us_probe),
        "subject_records": records,
    }
    write_text_atomic(out / "cohort.json", json.dumps(cohort, indent=1) + "\n")
    if preview is not None:
        richest = max(records, key=lambda r: (len(r["present"]), -r["index"]))
        write_preview(out / richest["name"], Path(preview))
    return cohort


def _parameters(size: int, slices: int, field_mm: float, us_engine: str, us_probe: str) -> dict:
    def plain(value):
        return json.loads(json.dumps(asdict(value), default=float))

    return {
        "size": size,
        "slices": slices,
        "spacing_mm": round(field_mm / size, 6),
        "field_mm": field_mm,
        "axes": ["lateral (fan plane)", "axial depth (fan plane)", "sweep"],
        "us_engine": us_engine,
        "us_probe": plain(get_probe(us_probe)),
        "probe_placement": plain(ProbePlacement()),
        "anatomy": plain(AnatomyVariation()),
        "tumour": plain(TumourVariation()),
        "mr_site": plain(SiteVariation()),
        "mr_protocols": {k: asdict(p) for k, p in NOMINAL_PROTOCOLS.items()},
        "mr_tissues": {k: asdict(t) for k, t in TISSUE_RELAXATION.items()},
        "us_tissues": {k: asdict(t) for k, t in ACOUSTIC_TISSUES.items()},
        "seg_labels": SEG_LABELS,
        "tissue_labels": TISSUE_LABELS,
    }

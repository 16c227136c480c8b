"""Subject anatomy for the phantom cohort: the MNI152 template, per-subject warps, and a brain tumour.

Everything is sampled backwards: the caller gives world points (mm) of its output grid, and each point is
mapped to the template through

    world --(inverse random affine)--> u --(+ smooth elastic displacement)--> v --(inverse mass effect)--> MNI

The tumour is drawn in `v` (the subject's anatomy before the tumour pushed it aside); the template tissue
maps are read at the MNI points. The template is never warped as a whole, so a subject costs only as
many interpolations as its output grid has voxels.

Sources: the ICBM 2009a nonlinear symmetric template (Fonov et al., NeuroImage 2011) as shipped by nilearn,
T1 (skull-stripped) and GM/WM probability maps at 1 mm. CSF is brain minus GM minus WM. The skull and
scalp are not in the shipped T1 (it is skull-stripped): they are shells of fixed thickness grown outside
the brain mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mmhvae.phantom.template import Template, apply_affine, load_template, sample_template, template_maps_for_spacing
from mmhvae.phantom.tissues import BRAIN_TISSUES, HEALTHY_TISSUES

# ----------------------------------------------------------------------------------------------------
# Smooth random fields
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomField:
    """A smooth random field: Gaussian white noise on a coarse grid of nodes, cubic B-spline interpolated.

    It covers a cube of side `extent_mm` centred on `centre`. For speed the spline is evaluated once on a
    finer lattice (`lattice` nodes per axis) and points are then interpolated linearly from that lattice;
    outside the cube the field continues as its boundary value.
    """

    lattice_values: np.ndarray  # (channels, m, m, m)
    centre: np.ndarray
    extent_mm: float

    @classmethod
    def draw(cls, rng: np.random.Generator, channels: int, nodes: int, centre, extent_mm: float,
             lattice: int = 48) -> RandomField:
        values = rng.standard_normal((channels, nodes, nodes, nodes))
        fine = np.linspace(0.0, nodes - 1.0, lattice)
        coords = np.stack(np.meshgrid(fine, fine, fine, indexing="ij"))
        dense = np.stack([ndimage.map_coordinates(v, coords, order=3, mode="nearest") for v in values])
        return cls(dense.astype(np.float32), np.asarray(centre, np.float64), float(extent_mm))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """(channels, N) field values at (N, 3) points."""
        lattice = self.lattice_values.shape[1]
        coords = ((points - self.centre) / self.extent_mm + 0.5) * (lattice - 1)
        return np.stack([
            ndimage.map_coordinates(channel, coords.T, order=1, mode="nearest") for channel in self.lattice_values
        ])


# ----------------------------------------------------------------------------------------------------
# A subject: random affine, elastic warp, tumour with mass effect
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnatomyVariation:
    """Between-subject geometry: the ranges of docs/phantom.md; the elastic amplitude is our choice."""

    scale: float = 0.08  # +-8 % per axis
    rotation_deg: float = 6.0  # +-6 degrees about each axis
    elastic_mm: float = 3.0  # standard deviation of control-point displacements
    elastic_nodes: int = 7  # control points per axis over the head (about 35 mm apart)
    elastic_extent_mm: float = 220.0


@dataclass(frozen=True)
class TumourVariation:
    """Tumour draws. Ranges from docs/phantom.md; fractions and shape parameters are our choices."""

    radius_mm: tuple[float, float] = (8.0, 25.0)
    irregularity: tuple[float, float] = (0.10, 0.30)  # radius perturbation, relative
    rim_mm: tuple[float, float] = (2.0, 5.0)  # enhancing rim thickness
    oedema_mm: tuple[float, float] = (5.0, 20.0)  # oedema extent beyond the tumour, along white matter
    oedema_in_grey_matter: float = 0.25  # oedema spreads this much less far in grey matter
    low_grade_fraction: float = 0.25  # no enhancement, no necrosis, little oedema
    low_grade_oedema_factor: float = 0.3
    mass_effect: tuple[float, float] = (0.3, 0.8)  # fraction of tumour volume that displaces tissue
    mass_effect_reach_mm: float = 30.0  # displacement fades over this distance beyond the tumour


@dataclass(frozen=True)
class Tumour:
    centre_mni: np.ndarray
    radius_mm: float
    grade: str  # "high" or "low"
    irregularity: float
    rim_mm: float
    oedema_mm: float
    mass_effect: float
    shape_noise: RandomField  # 3 channels: boundary, rim, oedema perturbations

    def summary(self) -> dict:
        return {
            "grade": self.grade,
            "centre_mni_mm": [round(float(c), 2) for c in self.centre_mni],
            "radius_mm": round(self.radius_mm, 2),
            "rim_mm": round(self.rim_mm, 2) if self.grade == "high" else 0.0,
            "oedema_mm": round(self.oedema_mm, 2),
            "mass_effect": round(self.mass_effect, 3),
        }


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    c, s = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rz = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_tumour(rng: np.random.Generator, template: Template, variation: TumourVariation) -> Tumour:
    centre = template.tumour_sites_mni[rng.integers(len(template.tumour_sites_mni))]
    centre = centre + rng.uniform(-1.0, 1.0, 3)  # off the 2 mm candidate lattice
    radius = float(rng.uniform(*variation.radius_mm))
    grade = "low" if rng.random() < variation.low_grade_fraction else "high"
    oedema = float(rng.uniform(*variation.oedema_mm))
    if grade == "low":
        oedema *= variation.low_grade_oedema_factor
    extent = 2.0 * (radius * 1.5 + variation.oedema_mm[1] + 5.0)
    return Tumour(
        centre_mni=centre,
        radius_mm=radius,
        grade=grade,
        irregularity=float(rng.uniform(*variation.irregularity)),
        rim_mm=float(rng.uniform(*variation.rim_mm)),
        oedema_mm=oedema,
        mass_effect=float(rng.uniform(*variation.mass_effect)),
        shape_noise=RandomField.draw(rng, 3, 9, centre, extent),
    )


def _ramp(signed_mm: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction of a region whose boundary is `signed_mm` away (positive = inside)."""
    return np.clip(0.5 + signed_mm / voxel_mm, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class SubjectAnatomy:
    """One subject's geometry: world = affine(u), v = u + elastic(u), MNI = mass_effect^-1(v)."""

    affine: np.ndarray  # 4x4, u (template-aligned mm) -> world mm
    elastic: RandomField  # 3 channels, displacement in units of elastic_mm
    elastic_mm: float
    tumour: Tumour
    reach_mm: float

    def world_to_v(self, points_world: np.ndarray) -> np.ndarray:
        inverse = np.linalg.inv(self.affine)
        u = apply_affine(points_world, inverse[:3, :3], inverse[:3, 3])
        return u + self.elastic_mm * self.elastic(u).T

    def v_to_mni(self, v: np.ndarray) -> np.ndarray:
        """Undo the tumour's mass effect: a radial push that conserves volume near the tumour.

        A sphere of radius R that displaces a fraction k of its volume moves tissue from radius r to
        r' = (r^3 + k R^3)^(1/3); we invert that, fading the displacement over `reach_mm` beyond the tumour
        (the skull does not move), and compress the tumour's own source region by (1 - k)^(1/3).
        """
        tumour = self.tumour
        offset = v - tumour.centre_mni
        r_out = np.linalg.norm(offset, axis=1)
        big_r, k = tumour.radius_mm, tumour.mass_effect
        r_in_outside = np.cbrt(np.maximum(r_out**3 - k * big_r**3, 0.0))
        fade = np.exp(-(np.maximum(r_out - big_r, 0.0) / self.reach_mm) ** 2)
        r_in = np.where(r_out >= big_r, r_out - (r_out - r_in_outside) * fade, r_out * np.cbrt(1.0 - k))
        scale = np.divide(r_in, r_out, out=np.ones_like(r_out), where=r_out > 1e-9)
        return tumour.centre_mni + offset * scale[:, None]

    def world_to_mni(self, points_world: np.ndarray) -> np.ndarray:
        return self.v_to_mni(self.world_to_v(points_world))

    def tumour_centre_world(self) -> np.ndarray:
        """World position of the tumour centre (fixed point of the mass effect; elastic warp inverted)."""
        c = self.tumour.centre_mni
        u = c.copy()
        for _ in range(20):  # u = c - elastic(u): a contraction for displacements much smoother than 1
            u = c - self.elastic_mm * self.elastic(u[None])[:, 0]
        return self.affine[:3, :3] @ u + self.affine[:3, 3]

    def brain_centre_world(self, template: Template) -> np.ndarray:
        return self.affine[:3, :3] @ template.brain_centre_mni + self.affine[:3, 3]

    def tissue_fractions(self, points_world: np.ndarray, voxel_mm: float, maps: np.ndarray | None = None,
                         template: Template | None = None) -> np.ndarray:
        """Fractions of ALL_TISSUES, shape (len(ALL_TISSUES), N), at world points of a grid of `voxel_mm`."""
        template = template or load_template()
        maps = template_maps_for_spacing(round(voxel_mm, 3)) if maps is None else maps
        v = self.world_to_v(points_world)
        healthy = sample_template(maps, template, self.v_to_mni(v))
        tumour = tumour_fractions(self.tumour, v, healthy, voxel_mm)
        return np.concatenate([healthy * tumour["healthy_scale"], tumour["fractions"]], axis=0)

    def brain_fraction(self, points_world: np.ndarray, template: Template | None = None) -> np.ndarray:
        """Intracranial (brain + CSF) fraction at world points, from the unblurred template."""
        template = template or load_template()
        healthy = sample_template(template.maps, template, self.world_to_mni(points_world))
        return sum(healthy[HEALTHY_TISSUES.index(t)] for t in BRAIN_TISSUES)


def tumour_fractions(tumour: Tumour, v: np.ndarray, healthy: np.ndarray, voxel_mm: float) -> dict:
    """Fractions of necrosis, enhancing, non-enhancing tumour and oedema at points `v` (N, 3).

    The boundary is a sphere whose radius is perturbed by a smooth random field (irregular shape); the
    enhancing rim is a band of 2-5 mm inside it around a necrotic core (high grade); oedema extends beyond it,
    farther in white matter than in grey matter, and only in parenchyma. 'occupied' is the share of each
    voxel that the tumour itself takes from healthy tissue (oedema infiltrates, it does not replace).
    """
    noise = tumour.shape_noise(v)
    distance = np.linalg.norm(v - tumour.centre_mni, axis=1)
    radius = tumour.radius_mm * (1.0 + tumour.irregularity * noise[0])
    inside_mm = radius - distance  # positive inside the tumour
    index = {name: HEALTHY_TISSUES.index(name) for name in ("gm", "wm")}
    brain = sum(healthy[HEALTHY_TISSUES.index(t)] for t in BRAIN_TISSUES)
    tumour_part = _ramp(inside_mm, voxel_mm) * np.clip(brain, 0.0, 1.0)  # never outside the brain

    zeros = np.zeros_like(tumour_part)
    if tumour.grade == "high":
        rim = tumour.rim_mm * (1.0 + 0.3 * noise[1])
        necrosis = _ramp(inside_mm - rim, voxel_mm) * tumour_part
        enhancing, nonenhancing = tumour_part - necrosis, zeros
    else:
        necrosis, enhancing, nonenhancing = zeros, zeros, tumour_part

    gm, wm = healthy[index["gm"]], healthy[index["wm"]]
    parenchyma = gm + wm
    wm_share = np.divide(wm, parenchyma, out=np.zeros_like(wm), where=parenchyma > 1e-3)
    reach = tumour.oedema_mm * (0.25 + 0.75 * wm_share) * (1.0 + 0.3 * noise[2])
    oedema = _ramp(reach + inside_mm, voxel_mm) * (1.0 - tumour_part) * np.clip(parenchyma, 0, 1)
    fractions = np.stack([necrosis, enhancing, nonenhancing, oedema]).astype(np.float32)
    healthy_scale = np.repeat((1.0 - tumour_part)[None], len(HEALTHY_TISSUES), axis=0)
    remaining_parenchyma = (1.0 - tumour_part) * parenchyma
    oedema_share = np.divide(oedema, remaining_parenchyma, out=np.zeros_like(oedema),
                             where=remaining_parenchyma > 1e-6)
    for name in ("gm", "wm"):
        healthy_scale[index[name]] *= 1.0 - np.clip(oedema_share, 0.0, 1.0)
    return {"fractions": fractions, "healthy_scale": healthy_scale}


def draw_subject(rng_anatomy: np.random.Generator, rng_tumour: np.random.Generator,
                 variation: AnatomyVariation = AnatomyVariation(),
                 tumour_variation: TumourVariation = TumourVariation()) -> SubjectAnatomy:
    template = load_template()
    scale = np.diag(1.0 + rng_anatomy.uniform(-variation.scale, variation.scale, 3))
    rotation = random_rotation(rng_anatomy, variation.rotation_deg)
    linear = rotation @ scale
    centre = template.brain_centre_mni
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = centre - linear @ centre  # about the brain centre: world and MNI roughly overlap
    elastic = RandomField.draw(rng_anatomy, 3, variation.elastic_nodes, centre, variation.elastic_extent_mm)
    tumour = draw_tumour(rng_tumour, template, tumour_variation)
    return SubjectAnatomy(affine, elastic, variation.elastic_mm, tumour, tumour_variation.mass_effect_reach_mm)

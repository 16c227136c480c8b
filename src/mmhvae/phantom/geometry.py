"""Where the virtual probe goes and the output grid it defines: the probe placed on the cortical surface over the
tumour and aimed at it, an output grid in the probe's frame (fan plane in-plane, sweep along the third axis),
and the fan that is the ultrasound field of view (docs/phantom.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mmhvae.phantom.anatomy import SubjectAnatomy
from mmhvae.phantom.template import apply_affine, load_template
from mmhvae.phantom.us_sim import PROBES, FanGeometry, Probe

PAPER_FIELD_MM = 96.0  # in-plane field of view: 192 x 0.5 mm (Section 4.1)


@dataclass(frozen=True)
class ProbePlacement:
    """Where the probe goes and what it sees. Opening and depth as in docs/phantom.md; the rest our choices."""

    opening_deg: tuple[float, float] = (60.0, 90.0)
    depth_mm: tuple[float, float] = (50.0, 80.0)
    site_jitter_deg: float = 20.0  # the craniotomy is over the tumour, not exactly radial to it
    aim_jitter_deg: float = 5.0  # the probe is aimed at the tumour, roughly
    top_margin_mm: float = 4.0  # grid rows above the probe face (coupling saline)
    max_contact_drop_mm: float = 20.0  # how far the probe face may follow the surface down along the sweep
    depth_margin_mm: float = 10.0  # the fan reaches at least this far beyond the tumour when possible
    craniotomy_radius_mm: float = 30.0  # bone and scalp removed around the probe for the ultrasound only


@dataclass
class Grid:
    """The output grid: voxel -> world affine, its mm axes in the probe frame, and the fan."""

    affine: np.ndarray
    lateral_mm: np.ndarray
    axial_mm: np.ndarray
    sweep_mm: np.ndarray
    fan: FanGeometry
    summary: dict

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.lateral_mm), len(self.axial_mm), len(self.sweep_mm))

    @property
    def spacing_mm(self) -> float:
        return float(self.lateral_mm[1] - self.lateral_mm[0])

    def to_world(self, probe_mm: np.ndarray) -> np.ndarray:
        """(..., 3) probe-frame mm (lateral, axial, sweep) -> (..., 3) world mm."""
        frame = self.affine[:3, :3] / self.spacing_mm
        origin = self.affine[:3, 3] - frame @ np.array([self.lateral_mm[0], self.axial_mm[0], self.sweep_mm[0]])
        return apply_affine(probe_mm, frame, origin)

    def voxel_points_world(self, slices: slice = slice(None)) -> np.ndarray:
        lateral, axial, sweep = np.meshgrid(self.lateral_mm, self.axial_mm, self.sweep_mm[slices], indexing="ij")
        return self.to_world(np.stack([lateral, axial, sweep], axis=-1).reshape(-1, 3))


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _tilt(direction: np.ndarray, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    """`direction` rotated by up to `max_deg` towards a random perpendicular."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(direction[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    first = _unit(np.cross(direction, helper))
    second = np.cross(direction, first)
    phase, angle = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(0, max_deg))
    across = np.cos(phase) * first + np.sin(phase) * second
    return _unit(np.cos(angle) * direction + np.sin(angle) * across)


def _surface_along(subject: SubjectAnatomy, start: np.ndarray, direction: np.ndarray, distances: np.ndarray
                   ) -> float | None:
    """First distance along the ray where the intracranial fraction reaches 0.5 (None if never)."""
    inside = subject.brain_fraction(start + distances[:, None] * direction) >= 0.5
    return float(distances[np.argmax(inside)]) if inside.any() else None


def plan_grid(subject: SubjectAnatomy, size: int, slices: int, rng: np.random.Generator,
              placement: ProbePlacement = ProbePlacement(), probe: Probe = PROBES["default"],
              field_mm: float = PAPER_FIELD_MM) -> Grid:
    """Place the probe on the cortical surface over the tumour, aimed at it, and lay the grid in its frame."""
    template = load_template()
    tumour = subject.tumour_centre_world()
    outward = _tilt(_unit(tumour - subject.brain_centre_world(template)), placement.site_jitter_deg, rng)
    steps = np.arange(0.0, 130.0, 0.5)
    inside = subject.brain_fraction(tumour + steps[:, None] * outward) >= 0.5
    leave = int(np.nonzero(inside)[0].max()) if inside.any() else 0
    contact = tumour + steps[leave] * outward
    axial = _tilt(_unit(tumour - contact), placement.aim_jitter_deg, rng) if leave > 0 else -outward
    roll = rng.uniform(0.0, 2.0 * np.pi)
    helper = np.array([0.0, 0.0, 1.0]) if abs(axial[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    first = _unit(np.cross(axial, helper))
    lateral = np.cos(roll) * first + np.sin(roll) * np.cross(axial, first)
    sweep = np.cross(lateral, axial)

    spacing = field_mm / size
    lateral_mm = (np.arange(size) - (size - 1) / 2.0) * spacing
    axial_mm = np.arange(size) * spacing + spacing / 2.0 - placement.top_margin_mm
    sweep_mm = (np.arange(slices) - (slices - 1) / 2.0) * spacing

    # The freehand sweep follows the brain surface: each slice's probe face sits where its axis enters the brain.
    probe_face = np.zeros(slices)
    search = np.arange(-placement.top_margin_mm - 10.0, placement.max_contact_drop_mm + 0.25, 0.5)
    for k, offset in enumerate(sweep_mm):
        start = contact + offset * sweep
        found = _surface_along(subject, start, axial, search)
        probe_face[k] = placement.max_contact_drop_mm if found is None else found
    if slices > 2:
        probe_face = ndimage.gaussian_filter1d(probe_face, 2.0, mode="nearest")
    probe_face = np.clip(probe_face, -placement.top_margin_mm + spacing, placement.max_contact_drop_mm)

    tumour_depth = float(np.dot(tumour - contact, axial))
    depth = rng.uniform(*placement.depth_mm)
    depth = float(min(max(depth, tumour_depth + subject.tumour.radius_mm + placement.depth_margin_mm),
                      placement.depth_mm[1]))
    fan = FanGeometry(
        opening_deg=float(rng.uniform(*placement.opening_deg)),
        depth_mm=depth,
        convex_radius_mm=probe.convex_radius_mm,
        apex_axial_mm=probe_face - probe.convex_radius_mm,
    )
    affine = np.eye(4)
    affine[:3, :3] = np.stack([lateral, axial, sweep], axis=1) * spacing
    affine[:3, 3] = contact + lateral_mm[0] * lateral + axial_mm[0] * axial + sweep_mm[0] * sweep
    summary = {
        "probe_contact_world_mm": [round(float(v), 2) for v in contact],
        "beam_axis": [round(float(v), 4) for v in axial],
        "opening_deg": round(fan.opening_deg, 2),
        "depth_mm": round(fan.depth_mm, 2),
        "tumour_depth_mm": round(tumour_depth, 2),
        "probe": probe.name,
    }
    return Grid(affine, lateral_mm, axial_mm, sweep_mm, fan, summary)


def fan_mask(grid: Grid) -> np.ndarray:
    lateral, axial, index = np.meshgrid(grid.lateral_mm, grid.axial_mm, np.arange(len(grid.sweep_mm)), indexing="ij")
    return grid.fan.to_polar(lateral, axial, index)[2]

"""The healthy anatomy of the phantom: tissue fraction maps built from the MNI ICBM 2009a template that ships
with nilearn (GM, WM and CSF split into sulci, ventricles, choroid plexus and falx; meninges, skull and scalp
grown around the brain), and the candidate tumour sites in it (docs/phantom.md)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from mmhvae.phantom.tissues import HEALTHY_TISSUES

# MNI (mm) landmarks of the ICBM 2009a template, read off the template itself.
LATERAL_VENTRICLE_SEEDS_MNI = ((6.0, 0.0, 18.0), (-6.0, 0.0, 18.0), (22.0, -35.0, 15.0), (-22.0, -35.0, 15.0))
CHOROID_GLOMUS_MNI = ((23.0, -37.0, 14.0), (-23.0, -37.0, 14.0))  # choroid plexus in the ventricular atria
CHOROID_RADII_MM = (5.0, 8.0, 4.0)
FALX_HALF_WIDTH_MM = 1.2
FALX_LOWEST_Z_MM = 12.0  # below this the midline CSF is the third ventricle, not the interhemispheric fissure


@dataclass(frozen=True)
class HeadLayers:
    """Shells outside the brain mask, in mm from its surface (typical adult values, rounded)."""

    meninges_csf_mm: float = 1.5  # subarachnoid CSF left outside the skull-stripping mask
    skull_mm: float = 6.5  # adult calvarium 5-8 mm
    scalp_mm: float = 5.0  # skin, fat and galea


@dataclass(frozen=True)
class TumourSites:
    """Where a tumour centre may be drawn: intra-axial, cerebral, reachable by a craniotomy probe."""

    min_parenchyma: float = 0.7  # GM + WM fraction at the centre
    min_abs_x_mm: float = 12.0  # one hemisphere, off the midline
    depth_mm: tuple[float, float] = (12.0, 45.0)  # from the brain's outer surface
    z_mm: tuple[float, float] = (-25.0, 60.0)
    no_cerebellum_below_z_mm: float = -5.0  # posterior fossa excluded (y < -45 mm and z below this)


@dataclass
class Template:
    """Tissue fraction maps of the MNI template (uint8, 0-255) with their voxel-to-MNI affine."""

    maps: np.ndarray  # (len(HEALTHY_TISSUES), X, Y, Z) uint8
    affine: np.ndarray
    tumour_sites_mni: np.ndarray  # (N, 3) candidate tumour centres in MNI mm
    brain_centre_mni: np.ndarray

    def to_voxels(self, points_mni: np.ndarray) -> np.ndarray:
        """(N, 3) MNI mm -> (3, N) voxel coordinates for map_coordinates."""
        inverse = np.linalg.inv(self.affine)
        return apply_affine(points_mni, inverse[:3, :3], inverse[:3, 3]).T


def apply_affine(points: np.ndarray, linear: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """(N, 3) points -> linear @ p + offset, column by column (much faster than a (N, 3) @ (3, 3) matmul)."""
    return (points[:, 0:1] * linear[:, 0] + points[:, 1:2] * linear[:, 1] + points[:, 2:3] * linear[:, 2]
            + offset)


TEMPLATE_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def _template_images():
    """T1, GM and WM maps (0-1) from the files inside the installed nilearn wheel, and their affine.

    The files are read directly (not through nilearn.datasets, whose import pulls in scikit-learn and takes
    seconds); nothing is downloaded.
    """
    import importlib.util

    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("nilearn is required for the phantom anatomy (pip install nilearn)")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    images = [nib.load(str(folder / TEMPLATE_FILE.format(name))) for name in ("t1", "gm", "wm")]
    t1, gm, wm = (np.asarray(image.dataobj, dtype=np.float32) / 255.0 for image in images)
    return t1, gm, wm, np.asarray(images[0].affine, dtype=np.float64)


def _mni_axes(shape: tuple[int, ...], affine: np.ndarray) -> list[np.ndarray]:
    """MNI x, y, z of the voxels as three broadcastable 1D arrays (the template grid is axis-aligned)."""
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError("the MNI template is expected on an axis-aligned grid")
    axes = [(np.arange(n) * affine[k, k] + affine[k, 3]).astype(np.float32) for k, n in enumerate(shape)]
    return [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]


def _upsample(coarse: np.ndarray, shape: tuple[int, ...], smooth: bool) -> np.ndarray:
    """A 2x coarser array back on the 1 mm grid: linear (smooth) or nearest (blocky but fast)."""
    if smooth:
        fine = ndimage.zoom(coarse, 2, order=1, grid_mode=False)
    else:
        fine = coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    out = np.zeros(shape, coarse.dtype)
    n = [min(a, b) for a, b in zip(shape, fine.shape)]
    out[: n[0], : n[1], : n[2]] = fine[: n[0], : n[1], : n[2]]
    return out


def _distance_on_coarse_grid(mask: np.ndarray, smooth: bool) -> np.ndarray:
    """Euclidean distance (mm, 1 mm voxels) to the nearest False voxel, computed at 2 mm for speed."""
    distance = ndimage.distance_transform_edt(mask[::2, ::2, ::2]).astype(np.float32) * 2.0
    return _upsample(distance, mask.shape, smooth)


def _seed_components(mask: np.ndarray, seeds_vox: list[tuple[int, int, int]]) -> np.ndarray:
    labels, _ = ndimage.label(mask)
    wanted = {int(labels[s]) for s in seeds_vox} - {0}
    return np.isin(labels, sorted(wanted))


def _ellipsoids(grid: list[np.ndarray], centres, radii) -> np.ndarray:
    inside = np.zeros(np.broadcast_shapes(*(g.shape for g in grid)), bool)
    for centre in centres:
        inside |= sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
    return inside


def _depth_below_surface(brain: np.ndarray) -> np.ndarray:
    """Depth (mm) below the brain's outer surface: sulci closed first, so a sulcus is not "surface"."""
    hull = ndimage.binary_fill_holes(ndimage.binary_closing(brain[::2, ::2, ::2], iterations=2))
    return _upsample(ndimage.distance_transform_edt(hull).astype(np.float32) * 2.0, brain.shape, smooth=False)


def _csf_compartments(csf: np.ndarray, depth: np.ndarray, grid: list[np.ndarray],
                      affine: np.ndarray) -> dict[str, np.ndarray]:
    """The template's CSF split into ventricles (grown from seeds), the choroid plexus inside them, the falx on
    the midline, and the rest (sulcal CSF)."""
    to_vox = np.linalg.inv(affine)

    def voxel(point):
        return tuple(int(round(v)) for v in to_vox[:3, :3] @ np.asarray(point) + to_vox[:3, 3])

    ventricles = _seed_components((csf > 0.5) & (depth > 10.0),
                                  [voxel(p) for p in LATERAL_VENTRICLE_SEEDS_MNI])
    ventricles = ndimage.binary_dilation(ventricles, iterations=1) & (csf > 0.05)
    csf_ventricle = np.where(ventricles, csf, 0.0).astype(np.float32)
    csf_sulcal = csf - csf_ventricle

    choroid = np.where(_ellipsoids(grid, CHOROID_GLOMUS_MNI, CHOROID_RADII_MM), csf_ventricle, 0.0)
    choroid = ndimage.gaussian_filter(choroid.astype(np.float32), 0.7) * (csf_ventricle > 0)
    choroid = np.minimum(choroid, csf_ventricle)
    csf_ventricle = csf_ventricle - choroid

    falx_region = (np.abs(grid[0]) <= FALX_HALF_WIDTH_MM) & (grid[2] > FALX_LOWEST_Z_MM)
    falx = np.where(falx_region & ~ventricles, csf_sulcal * 0.8, 0.0).astype(np.float32)
    csf_sulcal = csf_sulcal - falx
    return {"csf_sulcal": csf_sulcal, "csf_ventricle": csf_ventricle, "choroid": choroid, "falx": falx}


def _head_shells(brain: np.ndarray, layers: HeadLayers) -> dict[str, np.ndarray]:
    """CSF left outside the skull-stripping mask ("meninges"), skull and scalp as shells around the brain."""
    outside = _distance_on_coarse_grid(~brain, smooth=True)
    outside[brain] = 0.0

    def shell(inner: float, outer: float) -> np.ndarray:
        # A soft (1 mm ramp) shell gives the skull and scalp partial volume like the template maps have.
        return np.interp(outside, [inner - 0.5, inner + 0.5, outer - 0.5, outer + 0.5], [0, 1, 1, 0]).astype(
            np.float32)

    skull_top = layers.meninges_csf_mm + layers.skull_mm
    return {"meninges": shell(0.0, layers.meninges_csf_mm) * ~brain,
            "bone": shell(layers.meninges_csf_mm, skull_top),
            "scalp": shell(skull_top, skull_top + layers.scalp_mm)}


def _tumour_sites(parenchyma: np.ndarray, depth: np.ndarray, grid: list[np.ndarray], affine: np.ndarray,
                  sites: TumourSites) -> np.ndarray:
    """(N, 3) candidate tumour centres in MNI mm, on a 2 mm lattice: plenty, and 8 times cheaper."""
    x, y, z = (g[tuple(slice(None, None, 2) if g.shape[k] > 1 else slice(None) for k in range(3))]
               for g in grid)
    lattice = (slice(None, None, 2),) * 3
    site_depth = depth[lattice]
    candidates = (
        (parenchyma[lattice] >= sites.min_parenchyma)
        & (np.abs(x) >= sites.min_abs_x_mm)
        & (site_depth >= sites.depth_mm[0]) & (site_depth <= sites.depth_mm[1])
        & (z >= sites.z_mm[0]) & (z <= sites.z_mm[1])
        & ~((y < -45.0) & (z < sites.no_cerebellum_below_z_mm))
    )
    index = np.argwhere(candidates).astype(np.float64) * 2.0
    return index @ affine[:3, :3].T + affine[:3, 3]


@functools.lru_cache(maxsize=1)
def load_template(layers: HeadLayers = HeadLayers(), sites: TumourSites = TumourSites()) -> Template:
    """The template tissue maps (computed once per process, about 3 s)."""
    t1, gm, wm, affine = _template_images()
    brain = t1 > 0.05  # the shipped T1 is skull-stripped: its support is the intracranial brain + CSF
    parenchyma = gm + wm
    too_much = parenchyma > 1.0
    gm[too_much] /= parenchyma[too_much]
    wm[too_much] /= parenchyma[too_much]
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)

    grid = _mni_axes(t1.shape, affine)
    depth = _depth_below_surface(brain)
    fractions = _csf_compartments(csf, depth, grid, affine)
    shells = _head_shells(brain, layers)
    fractions |= {"gm": gm, "wm": wm, "bone": shells["bone"], "scalp": shells["scalp"],
                  "csf_sulcal": fractions["csf_sulcal"] + shells["meninges"]}
    maps = np.stack([np.rint(np.clip(fractions[name], 0, 1) * 255).astype(np.uint8) for name in HEALTHY_TISSUES])
    centre = np.argwhere(brain).mean(axis=0) @ affine[:3, :3].T + affine[:3, 3]
    return Template(maps, affine, _tumour_sites(parenchyma, depth, grid, affine, sites), centre)


@functools.lru_cache(maxsize=4)
def template_maps_for_spacing(spacing_mm: float) -> np.ndarray:
    """Template maps low-pass filtered for an output grid of `spacing_mm` (anti-aliasing, partial volume).

    A Gaussian of sigma 0.4 x spacing (FWHM about one output voxel) is applied only where the output is
    coarser than the 1 mm template.
    """
    template = load_template()
    sigma_mm = 0.4 * np.sqrt(max(spacing_mm**2 - 1.0, 0.0))
    if sigma_mm < 0.25:
        return template.maps
    blurred = np.empty_like(template.maps)
    for k in range(template.maps.shape[0]):
        smooth = ndimage.gaussian_filter(template.maps[k].astype(np.float32), sigma_mm, truncate=3.0)
        blurred[k] = np.rint(np.clip(smooth, 0, 255)).astype(np.uint8)
    return blurred


def sample_template(maps: np.ndarray, template: Template, points_mni: np.ndarray) -> np.ndarray:
    """Healthy tissue fractions (len(HEALTHY_TISSUES), N) at MNI points, trilinear, 0 outside the box."""
    coordinates = template.to_voxels(points_mni)
    out = np.empty((maps.shape[0], points_mni.shape[0]), np.float32)
    for k in range(maps.shape[0]):
        ndimage.map_coordinates(maps[k], coordinates, output=out[k], order=1, mode="constant", cval=0.0)
    return out / 255.0

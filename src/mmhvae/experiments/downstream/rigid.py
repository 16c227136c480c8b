"""Rigid (6 degrees of freedom) MR-ultrasound registration with SimpleITK (Section 4.4.4), the target
registration error between two transforms, random rigid displacements of a given median size (Table III's
ranges), and the single-pair `mmhvae register` command."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.optimize import brentq
from scipy.spatial.transform import Rotation

from mmhvae.errors import InputError, refuse_to_overwrite
from mmhvae.io.files import atomic_path
from mmhvae.io.volumes import Volume, read_volume, sitk_from_volume, write_volume
from mmhvae.preprocessing.masks import ultrasound_fov_mask

METRICS = ("mattes", "correlation")
SOLVE_POINTS = 100_000  # points used to solve for a displacement's size (the median is checked on all)
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])  # NIfTI affines are RAS, SimpleITK physical space is LPS

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# Rigid registration with SimpleITK
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistrationSettings:
    """Multi-resolution rigid registration; the defaults suit 0.5-1.5 mm grids of ~100 mm fields of view."""

    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)  # in voxels of the full-resolution grid
    iterations: int = 100  # per level
    learning_rate: float = 1.0  # largest first step, in mm of physical shift (scales from physical shift)
    minimum_step: float = 1e-3
    sampling_percentage: float = 0.2  # of the fixed-mask voxels, drawn at random with `seed`
    histogram_bins: int = 32  # Mattes mutual information
    seed: int = 1  # sampling seed: the same inputs give the same transform (SimpleITK reads 0 as 'wall clock')
    threads: int = 1  # 1: bit-identical repeats; more threads are faster but differ in the last digits

    def __post_init__(self) -> None:
        if self.seed < 1:
            raise InputError(f"the registration sampling seed must be a positive integer (got {self.seed}): "
                             "SimpleITK would seed 0 from the clock, and results would not repeat")
        if len(self.shrink_factors) != len(self.smoothing_sigmas):
            raise InputError("give one smoothing sigma per shrink factor (one per resolution level)")


@dataclass
class RegistrationResult:
    """The estimated transform (fixed -> moving physical points) and how the optimisation ended."""

    transform: sitk.Euler3DTransform
    metric_value: float
    iterations: int
    stop_condition: str
    failed: bool  # SimpleITK raised (e.g. no overlap): `transform` holds the last estimate reached


def image_from_array(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A float32 SimpleITK image (LPS geometry) from a voxel array and its RAS affine."""
    return sitk.Cast(sitk_from_volume(np.asarray(array, np.float32), affine), sitk.sitkFloat32)


def mask_from_array(mask: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A uint8 SimpleITK mask (the type the registration metric expects) from a boolean array."""
    return sitk.Cast(sitk_from_volume(np.asarray(mask, np.uint8), affine), sitk.sitkUInt8)


def voxel_points_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """LPS coordinates (mm) [N, 3] of the voxels of `mask`: where the TRE is measured."""
    voxels = np.argwhere(mask).astype(np.float64)
    ras = voxels @ affine[:3, :3].T + affine[:3, 3]
    return ras * RAS_TO_LPS


def centred_rigid_transform(centre_mm: Sequence[float]) -> sitk.Euler3DTransform:
    """Identity Euler3DTransform rotating about `centre_mm`, so rotations and translations stay decoupled."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter(tuple(float(c) for c in centre_mm))
    return transform


@contextlib.contextmanager
def itk_threads(threads: int) -> Iterator[None]:
    """Run with ITK's global default thread count set to `threads`, then restore it.

    The registration's own thread setting does not reach every filter and metric inside it: with more than one
    thread, partial sums meet in a varying order and repeated runs differ in the last digits (measured).
    """
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def register_rigid(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image | None = None,
                   moving_mask: sitk.Image | None = None, metric: str = "mattes",
                   initial: sitk.Transform | None = None,
                   settings: RegistrationSettings = RegistrationSettings()) -> RegistrationResult:
    """Rigid (6 DOF) registration of `moving` onto `fixed` (Section 4.4.4).

    `fixed_mask` restricts the metric to the ultrasound field of view; `moving_mask` to where the moving image
    is defined (the phantom's MR is cropped to the fan: without it, the crop edge itself would drive the
    alignment, a cue a whole-brain pre-operative MR does not offer). `initial` is an Euler3DTransform to start
    from (its centre is kept); by default the identity centred on the fixed mask (or on the fixed image).
    """
    if metric not in METRICS:
        raise InputError(f"unknown registration metric '{metric}' (choose {' or '.join(METRICS)})")
    if initial is not None:
        transform = sitk.Euler3DTransform(initial)
    elif fixed_mask is not None:
        shape = sitk.LabelShapeStatisticsImageFilter()
        shape.Execute(fixed_mask)
        if 1 not in shape.GetLabels():
            raise InputError("the fixed mask (field of view) is empty")
        transform = centred_rigid_transform(shape.GetCentroid(1))
    else:
        middle = [(n - 1) / 2.0 for n in fixed.GetSize()]
        transform = centred_rigid_transform(fixed.TransformContinuousIndexToPhysicalPoint(middle))

    method = sitk.ImageRegistrationMethod()
    if metric == "mattes":  # any intensity relation: MR vs ultrasound
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    else:
        # Synthetic and acquired MR of one sequence differ by scanner gain, bias field and harmonisation,
        # close to a linear map inside the small field of view: correlation is invariant to it and smoother
        # than a joint histogram. On the phantom (2 subjects, 3 displacements per range, demo model) it gave a
        # far wider capture range than Mattes against the synthetic T1c: 1.4/2.2/5.7 mm vs 3.3/8.4/13.9 mm
        # TRE at 4-8/8-12/12-16 mm.
        method.SetMetricAsCorrelation()
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(settings.sampling_percentage, settings.seed)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=settings.learning_rate,
                                                    minStep=settings.minimum_step,
                                                    numberOfIterations=settings.iterations,
                                                    relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()  # one step moves any voxel by about the same distance in mm
    method.SetShrinkFactorsPerLevel(list(settings.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(settings.smoothing_sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetNumberOfThreads(settings.threads)
    method.SetInitialTransform(transform, inPlace=True)  # in place: the last estimate survives a failure
    try:
        with itk_threads(settings.threads):
            method.Execute(fixed, moving)
    except RuntimeError:
        return RegistrationResult(transform, float("nan"), method.GetOptimizerIteration(), "failed", True)
    return RegistrationResult(transform, method.GetMetricValue(), method.GetOptimizerIteration(),
                              method.GetOptimizerStopConditionDescription(), False)


# ----------------------------------------------------------------------------------------------------
# Target registration error and simulated displacements
# ----------------------------------------------------------------------------------------------------


def linear_part(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) with transform(x) = A x + b, read from the images of four points (any rigid or affine transform)."""
    basis = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64)
    images = np.array([transform.TransformPoint(tuple(p)) for p in basis])
    return (images[1:] - images[0]).T, images[0]


def target_registration_error(true: sitk.Transform, estimated: sitk.Transform, points_mm: np.ndarray) -> np.ndarray:
    """Per-point TRE (mm): |true(x) - estimated(x)| for every point x [N, 3] of the fixed space (Section 4.4.4)."""
    points = np.asarray(points_mm, np.float64).reshape(-1, 3)
    a_true, b_true = linear_part(true)
    a_est, b_est = linear_part(estimated)
    return np.linalg.norm(points @ (a_true - a_est).T + (b_true - b_est), axis=1)


def displacement_mm(transform: sitk.Transform, points_mm: np.ndarray) -> np.ndarray:
    """How far each point moves under `transform` (its TRE against the identity)."""
    return target_registration_error(sitk.Euler3DTransform(), transform, points_mm)


def _scaled_rigid(axis: np.ndarray, direction: np.ndarray, rotation_share: float, radius_mm: float,
                  size_mm: float, centre_mm: np.ndarray) -> sitk.Euler3DTransform:
    """A rigid motion of `size_mm`: a rotation moving points at `radius_mm` by rotation_share x size_mm, plus
    a translation of (1 - rotation_share) x size_mm."""
    transform = centred_rigid_transform(centre_mm)
    rotation = Rotation.from_rotvec(axis * rotation_share * size_mm / radius_mm).as_matrix()
    transform.SetMatrix(tuple(rotation.ravel()))
    transform.SetTranslation(tuple(direction * (1.0 - rotation_share) * size_mm))
    return transform


def random_rigid_displacement(points_mm: np.ndarray, centre_mm: Sequence[float], low_mm: float, high_mm: float,
                              rng: np.random.Generator) -> sitk.Euler3DTransform:
    """A random rigid displacement whose median displacement over `points_mm` lies in [low_mm, high_mm).

    Table III's ranges are ranges of the median voxel displacement. A random rotation axis, translation
    direction and rotation/translation share are drawn, a target median uniformly in the range, and the size
    of the motion is solved for (brentq) so that the median over the points equals the target.
    """
    if not 0 <= low_mm < high_mm:
        raise InputError(f"a displacement range needs 0 <= low < high (got {low_mm}-{high_mm} mm)")
    points = np.asarray(points_mm, np.float64).reshape(-1, 3)
    centre = np.asarray(centre_mm, np.float64)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    rotation_share = rng.uniform(0.0, 1.0)
    target = rng.uniform(low_mm, high_mm)
    radius = max(float(np.median(np.linalg.norm(points - centre, axis=1))), 1e-3)
    if target <= 0.0:
        return centred_rigid_transform(centre)

    def motion(size: float) -> sitk.Euler3DTransform:
        return _scaled_rigid(axis, direction, rotation_share, radius, size, centre)

    def solve(subset: np.ndarray) -> float:
        def median_minus_target(size: float) -> float:
            return float(np.median(displacement_mm(motion(size), subset))) - target

        upper = target
        while median_minus_target(upper) < 0.0:  # rotation and translation may partly cancel: widen the bracket
            upper *= 2.0
        return brentq(median_minus_target, 0.0, upper, xtol=1e-6)

    # Solve on evenly spaced points (a 0.5 mm field of view has millions), then check the median on all of them.
    size = solve(points[:: max(1, len(points) // SOLVE_POINTS)])
    if not low_mm <= np.median(displacement_mm(motion(size), points)) < high_mm:
        size = solve(points)
    return motion(size)


# ----------------------------------------------------------------------------------------------------
# Single pair: `mmhvae register --fixed --moving --out`
# ----------------------------------------------------------------------------------------------------


def transform_path_for(out: Path) -> Path:
    """OUT.nii.gz -> OUT.tfm (the transform is written beside the resampled image)."""
    name = out.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return out.with_name(name[: -len(suffix)] + ".tfm")
    raise InputError("the output must be a NIfTI file name (.nii.gz or .nii)", out)


def resample_onto_fixed(moving: sitk.Image, fixed: sitk.Image, transform: sitk.Transform,
                        fill: float) -> np.ndarray:
    """The moving image on the fixed grid through `transform`, as a [x, y, z] array like `mmhvae.io` arrays."""
    resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, float(fill), sitk.sitkFloat32)
    return np.transpose(sitk.GetArrayFromImage(resampled), (2, 1, 0))


def _read_mask(path: str | Path, like: Volume) -> np.ndarray:
    mask = read_volume(path)
    if not mask.same_grid(like):
        raise InputError(f"the mask's grid {mask.shape} does not match the fixed image's grid {like.shape} "
                         f"(shape and affine must agree)", path)
    if not np.any(mask.array > 0):
        raise InputError("the mask is empty", path)
    return mask.array > 0


def run_register(fixed: str | Path, moving: str | Path, out: str | Path, metric: str = "mattes",
                 fixed_mask: str | Path | None = None, overwrite: bool = False,
                 settings: RegistrationSettings = RegistrationSettings()) -> tuple[Path, Path]:
    """Register `moving` rigidly onto `fixed`; write the resampled moving image (OUT.nii.gz, fixed grid and
    header) and the transform (OUT.tfm, fixed -> moving points, for sitk.ReadTransform / 3D Slicer).

    The fixed mask is `fixed_mask` if given, else the non-background region of the fixed image (for an
    ultrasound, its field of view); the moving mask is the non-background region of the moving image.
    """
    out = Path(out)
    transform_path = transform_path_for(out)
    if metric not in METRICS:
        raise InputError(f"unknown --metric '{metric}' (choose {' or '.join(METRICS)})")
    refuse_to_overwrite(out if out.exists() else transform_path, overwrite, problem="the output already exists")
    fixed_volume, moving_volume = read_volume(fixed), read_volume(moving)
    for volume in (fixed_volume, moving_volume):
        if volume.array.max() <= volume.array.min():
            raise InputError("the image is constant: nothing to register", volume.path)
    fov = _read_mask(fixed_mask, fixed_volume) if fixed_mask is not None else ultrasound_fov_mask(fixed_volume.array)
    # Same rule for the moving image: its non-background voxels, holes filled slice by slice.
    defined = ultrasound_fov_mask(moving_volume.array)
    fixed_image = image_from_array(fixed_volume.array, fixed_volume.affine)
    moving_image = image_from_array(moving_volume.array, moving_volume.affine)
    result = register_rigid(fixed_image, moving_image, mask_from_array(fov, fixed_volume.affine),
                            mask_from_array(defined, moving_volume.affine), metric, settings=settings)
    if result.failed:
        raise InputError("the registration failed (do the images overlap in physical space?)", moving)
    array = resample_onto_fixed(moving_image, fixed_image, result.transform, float(moving_volume.array.min()))
    write_volume(out, array, fixed_volume)
    with atomic_path(transform_path) as tmp:
        sitk.WriteTransform(result.transform, str(tmp))
    moved = displacement_mm(result.transform, voxel_points_mm(fov, fixed_volume.affine))
    log.info(f"registered {Path(moving).name} to {Path(fixed).name} ({metric}): {result.iterations} iterations at "
             f"the last level, field-of-view voxels moved by {np.median(moved):.2f} mm (median); wrote {out} and "
             f"{transform_path.name}")
    return out, transform_path

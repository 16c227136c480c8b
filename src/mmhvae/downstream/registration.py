"""MR-ultrasound rigid registration, the downstream task of Sections 4.4.4 and 5.4 (Table III).

A pre-operative MR volume (moving) is registered rigidly (6 degrees of freedom) to a fixed volume in the
ultrasound field of view: either the acquired ultrasound itself ("direct") or an MR sequence synthesised
from that ultrasound by a cross-modal model. On paired data (MR already aligned with the ultrasound) a
known rigid displacement is applied to the MR (as the registration's starting transform, so the MR is never
resampled), the registration tries to undo it, and the Target Registration Error (TRE) between the true and
the estimated transforms is measured at every voxel of the field of view.

Conventions: transforms are SimpleITK transforms from fixed physical points to moving physical points
(LPS, mm), as SimpleITK registration estimates them; points are LPS coordinates in mm.

Difference from the paper: the paper optimises a multi-scale local normalised cross-correlation [53] by
gradient descent; this module uses SimpleITK's multi-resolution registration with Mattes mutual
information (MR vs ultrasound) or global correlation (MR vs synthetic MR of the same sequence).
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.optimize import brentq
from scipy.spatial.transform import Rotation
from scipy.stats import wilcoxon

from mmhvae import predict
from mmhvae.data.dataset import field_of_view
from mmhvae.data.harmonize import ultrasound_fov_mask
from mmhvae.errors import InputError
from mmhvae.evaluate import method_names
from mmhvae.files import atomic_path, write_csv_atomic, write_text_atomic
from mmhvae.io import Subject, Volume, discover_subjects, load_subject, read_volume, sitk_from_volume, write_volume
from mmhvae.modalities import ULTRASOUND, ModalitySet, parse_modality_list
from mmhvae.model_file import LoadedModel, load_model_file

METRICS = ("mattes", "correlation")
DEFAULT_RANGES_MM: tuple[tuple[float, float], ...] = ((0, 4), (4, 8), (8, 12), (12, 16))  # Table III columns
DEFAULT_SEQUENCES: tuple[str, ...] = ("t2", "t1c", "flair")  # Table III (a), (b), (c)
DEFAULT_DISPLACEMENTS_PER_RANGE = 10
DIRECT_METHOD = "acquired US"  # Table III's first row: the MR registered to the ultrasound itself
INITIAL_METHOD = "initial"  # the displacement before registration
SOLVE_POINTS = 100_000  # points used to solve for a displacement's size (the median is checked on all)
SIGNIFICANCE_LEVEL = 0.05  # Table III: paired Wilcoxon signed-rank test, p < 0.05
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])  # NIfTI affines are RAS, SimpleITK physical space is LPS
CSV_FIELDS = ("subject", "sequence", "range_mm", "displacement", "method", "metric", "initial_median_mm",
              "tre_mean_mm", "tre_median_mm", "tre_max_mm", "failed", "seconds")


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
    if not overwrite and (out.exists() or transform_path.exists()):
        raise InputError("the output already exists (use --overwrite)", out if out.exists() else transform_path)
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
    print(f"registered {Path(moving).name} to {Path(fixed).name} ({metric}): {result.iterations} iterations at the "
          f"last level, field-of-view voxels moved by {np.median(moved):.2f} mm (median); wrote {out} and "
          f"{transform_path.name}")
    return out, transform_path


# ----------------------------------------------------------------------------------------------------
# Table III experiment
# ----------------------------------------------------------------------------------------------------


def parse_ranges(text: str) -> tuple[tuple[float, float], ...]:
    """'0-4,4-8' -> ((0.0, 4.0), (4.0, 8.0)); an InputError for anything else."""
    ranges = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)\s*", item)
        if not match or float(match.group(1)) >= float(match.group(2)):
            raise InputError(f"--ranges: '{item.strip()}' is not a range LOW-HIGH in mm with LOW < HIGH "
                             "(e.g. 0-4,4-8,8-12,12-16)")
        ranges.append((float(match.group(1)), float(match.group(2))))
    return tuple(ranges)


def range_label(low: float, high: float) -> str:
    return f"{low:g}-{high:g} mm"


def synthesise_from_ultrasound(loaded: LoadedModel, subject: Subject, sequences: Sequence[str],
                               temperature: float = predict.DEFAULT_TEMPERATURE) -> dict[str, np.ndarray]:
    """Each MR sequence synthesised from the subject's ultrasound alone, on the subject's grid (harmonised
    intensities, 0 outside the field of view)."""
    modalities = ModalitySet(loaded.modalities)
    prepared = predict.prepare_for_model(subject, loaded, inputs=(ULTRASOUND,))
    (result,) = predict.synthesise(loaded.model, prepared, [(ULTRASOUND,)], temperature=temperature)
    grid_shape = subject.reference.shape
    fov = predict.back_to_grid(prepared.fov, grid_shape, fill=False)
    images = {}
    for key in sequences:
        image = predict.to_intensities(result.mean[modalities.index(key)], prepared.fov)
        images[key] = np.where(fov, predict.back_to_grid(image, grid_shape, fill=0.0), 0.0).astype(np.float32)
    return images


def _trial_rng(seed: int, subject: str, sequence: str, range_index: int) -> np.random.Generator:
    """The displacements of one (subject, sequence, range): the same whatever the cohort or the models."""
    return np.random.default_rng(np.random.SeedSequence(
        [int(seed), zlib.crc32(subject.encode()), zlib.crc32(sequence.encode()), int(range_index)]))


def _check_models(paths: Sequence[Path], models: Sequence[LoadedModel], sequences: Sequence[str]) -> None:
    for path, loaded in zip(paths, models):
        lacking = [k for k in (ULTRASOUND, *sequences) if k not in loaded.modalities]
        if lacking:
            raise InputError(f"the model does not handle {lacking} (it has {','.join(loaded.modalities)})", path)


def _trial_row(subject: str, sequence: str, low: float, high: float, index: int, method: str, metric: str,
               initial_median: float, errors: np.ndarray, failed: bool, seconds: float) -> dict:
    return {"subject": subject, "sequence": sequence, "range_mm": range_label(low, high), "displacement": index,
            "method": method, "metric": metric, "initial_median_mm": round(initial_median, 4),
            "tre_mean_mm": float(errors.mean()), "tre_median_mm": float(np.median(errors)),
            "tre_max_mm": float(errors.max()), "failed": int(failed), "seconds": round(seconds, 3)}


def register_subject(subject: Subject, synthetic: dict[str, dict[str, np.ndarray]], sequences: Sequence[str],
                     ranges: Sequence[tuple[float, float]], displacements_per_range: int, seed: int,
                     synthetic_metric: str = "correlation",
                     settings: RegistrationSettings = RegistrationSettings()) -> list[dict]:
    """Rows for one subject: every sequence x range x displacement, initial + direct + each synthesis method.

    The MR is aligned with the ultrasound (paired data), so the true transform is the identity; displacing
    the MR by D^-1 is the same as starting the registration at D, which avoids resampling the MR (and losing
    what would move out of its grid). `synthetic` maps method name -> sequence -> synthetic image.
    """
    grid = subject.reference
    fov = field_of_view(subject)
    points = voxel_points_mm(fov, grid.affine)
    centre = points.mean(axis=0)
    fixed_mask = mask_from_array(fov, grid.affine)
    ultrasound = image_from_array(subject.volumes[ULTRASOUND].array, grid.affine)
    truth = centred_rigid_transform(centre)
    rows = []
    for sequence in sequences:
        if sequence not in subject.volumes:
            continue
        mr = subject.volumes[sequence].array
        moving = image_from_array(mr, grid.affine)
        moving_mask = mask_from_array(ultrasound_fov_mask(mr), grid.affine)  # where the (cropped) MR is defined
        fixed_images = [(DIRECT_METHOD, ultrasound, "mattes")]
        fixed_images += [(name, image_from_array(images[sequence], grid.affine), synthetic_metric)
                         for name, images in synthetic.items()]
        for r, (low, high) in enumerate(ranges):
            rng = _trial_rng(seed, subject.name, sequence, r)
            for index in range(displacements_per_range):
                start = random_rigid_displacement(points, centre, low, high, rng)
                initial_errors = target_registration_error(truth, start, points)
                initial_median = float(np.median(initial_errors))
                rows.append(_trial_row(subject.name, sequence, low, high, index, INITIAL_METHOD, "", initial_median,
                                       initial_errors, False, 0.0))
                for method, fixed, metric in fixed_images:
                    tic = time.perf_counter()
                    result = register_rigid(fixed, moving, fixed_mask, moving_mask, metric, start, settings)
                    errors = target_registration_error(truth, result.transform, points)
                    rows.append(_trial_row(subject.name, sequence, low, high, index, method, metric, initial_median,
                                           errors, result.failed, time.perf_counter() - tic))
    return rows


def paired_p_value(first: Sequence[float], second: Sequence[float]) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value; 1 when the pairs do not differ at all."""
    differences = np.asarray(first, float) - np.asarray(second, float)
    if len(differences) == 0 or np.all(differences == 0):
        return 1.0
    return float(wilcoxon(first, second, zero_method="wilcox").pvalue)


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Per (sequence, range, method): mean and sd over trials of the per-trial mean TRE, failures, and the paired
    Wilcoxon p-value against direct registration to the acquired ultrasound (same trials)."""
    trials: dict[tuple, dict[tuple, float]] = defaultdict(dict)
    failures: dict[tuple, int] = defaultdict(int)
    for row in rows:
        key = (row["sequence"], row["range_mm"], row["method"])
        trials[key][(row["subject"], row["displacement"])] = float(row["tre_mean_mm"])
        failures[key] += int(row["failed"])
    summary = []
    for (sequence, range_mm, method), values in trials.items():
        direct = trials.get((sequence, range_mm, DIRECT_METHOD), {})
        units = sorted(values)
        p_value = float("nan")
        if method not in (DIRECT_METHOD, INITIAL_METHOD) and direct:
            p_value = paired_p_value([values[u] for u in units], [direct[u] for u in units])
        tre = np.array([values[u] for u in units])
        summary.append({"sequence": sequence, "range_mm": range_mm, "method": method, "trials": len(units),
                        "tre_mean_mm": float(tre.mean()), "tre_sd_mm": float(tre.std()),
                        "failed": failures[(sequence, range_mm, method)], "p_vs_direct": p_value})
    return summary


def significantly_best(rows: Sequence[dict], sequence: str, range_mm: str, methods: Sequence[str],
                       alpha: float = SIGNIFICANCE_LEVEL) -> str | None:
    """The registration method with the lowest mean TRE if a paired Wilcoxon test puts it below every other
    method at p < alpha (Table III's bold), else None."""
    trials: dict[str, dict[tuple, float]] = defaultdict(dict)
    for row in rows:
        if row["sequence"] == sequence and row["range_mm"] == range_mm and row["method"] in methods:
            trials[row["method"]][(row["subject"], row["displacement"])] = float(row["tre_mean_mm"])
    if len(trials) < 2:
        return None
    best = min(trials, key=lambda m: np.mean(list(trials[m].values())))
    units = sorted(trials[best])
    for other in trials:
        if other == best:
            continue
        p_value = paired_p_value([trials[best][u] for u in units], [trials[other][u] for u in units])
        if p_value >= alpha:
            return None
    return best


def markdown_table(rows: Sequence[dict], methods: Sequence[str], sequences: Sequence[str],
                   ranges: Sequence[tuple[float, float]], how: str = "") -> str:
    """Table III: per MR sequence, mean (sd) TRE in mm per displacement range; bold = significantly best;
    then the Wilcoxon p-value of each synthesis method against the acquired ultrasound."""
    summary = {(s["sequence"], s["range_mm"], s["method"]): s for s in summarise(rows)}
    labels = [range_label(low, high) for low, high in ranges]
    subjects = len({r["subject"] for r in rows})
    lines = ["# MR-ultrasound rigid registration (Table III)", "",
             f"Target registration error (mm) over the ultrasound field-of-view voxels: mean (sd) over {subjects} "
             "subject(s) x displacements of each trial's mean TRE; columns are ranges of the median initial "
             f"displacement. Bold: lower than every other method, paired Wilcoxon signed-rank p < "
             f"{SIGNIFICANCE_LEVEL:g}. `{INITIAL_METHOD}`: before registration; `{DIRECT_METHOD}`: the MR registered "
             "to the acquired ultrasound; other rows: to the sequence synthesised from the ultrasound by that model.",
             ""] + ([how, ""] if how else [])
    registration_methods = [DIRECT_METHOD, *methods]
    for sequence in sequences:
        if not any((sequence, label, INITIAL_METHOD) in summary for label in labels):
            continue
        best = {label: significantly_best(rows, sequence, label, registration_methods) for label in labels}
        lines += [f"## {sequence}", "", "| method | " + " | ".join(labels) + " |",
                  "|---|" + "---|" * len(labels)]
        for method in [INITIAL_METHOD, *registration_methods]:
            cells = []
            for label in labels:
                entry = summary.get((sequence, label, method))
                text = "-" if entry is None else f"{entry['tre_mean_mm']:.1f} ({entry['tre_sd_mm']:.1f})"
                if entry is not None and entry["failed"]:
                    text += f" [{entry['failed']} failed]"
                cells.append(f"**{text}**" if best[label] == method else text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        if methods:
            lines += ["", f"Wilcoxon p vs {DIRECT_METHOD} ({sequence}):", "",
                      "| method | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
            for method in methods:
                cells = [f"{summary[(sequence, label, method)]['p_vs_direct']:.2g}"
                         if (sequence, label, method) in summary else "-" for label in labels]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)




def registration_experiment(models: Sequence[str | Path], data: str | Path, out: str | Path,
                            ranges: Sequence[tuple[float, float]] = DEFAULT_RANGES_MM,
                            displacements_per_range: int = DEFAULT_DISPLACEMENTS_PER_RANGE,
                            sequences: Sequence[str] = DEFAULT_SEQUENCES, seed: int = 0,
                            temperature: float = predict.DEFAULT_TEMPERATURE,
                            synthetic_metric: str = "correlation", overwrite: bool = False, device: str = "cpu",
                            settings: RegistrationSettings = RegistrationSettings()) -> list[dict]:
    """Table III (Sections 4.4.4 and 5.4): registration of displaced MR to the acquired ultrasound vs to MR
    synthesised from it by each model; writes OUT/registration.csv (one row per trial and method),
    OUT/registration-summary.csv and OUT/registration.md. Returns the trial rows.

    Every test subject with an ultrasound and a sequence of `sequences` contributes `displacements_per_range`
    random rigid displacements per range of median displacement (seeded by `seed`, subject, sequence and
    range, so every method sees the same displacements: paired tests).
    """
    out = Path(out)
    if (out / "registration.csv").exists() and not overwrite:
        raise InputError("the output folder already has results (use --overwrite)", out)
    if displacements_per_range < 1:
        raise InputError(f"--displacements must be at least 1, got {displacements_per_range}")
    if synthetic_metric not in METRICS:
        raise InputError(f"unknown registration metric '{synthetic_metric}' (choose {' or '.join(METRICS)})")
    ranges = tuple((float(low), float(high)) for low, high in ranges)
    for low, high in ranges:
        if not 0 <= low < high:
            raise InputError(f"a displacement range needs 0 <= low < high (got {low:g}-{high:g} mm)")
    sequences = parse_modality_list(sequences)
    if ULTRASOUND in sequences:
        raise InputError("--sequences lists the MR sequences to register; the ultrasound is the fixed image")
    paths = [Path(m) for m in models]
    loaded = [load_model_file(p, predict.resolve_device(device)) for p in paths]
    _check_models(paths, loaded, sequences)
    names = method_names(paths, loaded) if loaded else []
    if DIRECT_METHOD in names or INITIAL_METHOD in names:
        raise InputError(f"a model's method name clashes with the row '{DIRECT_METHOD}' or '{INITIAL_METHOD}'")
    rows = []
    for files in discover_subjects(data):
        wanted = [k for k in (ULTRASOUND, *sequences) if k in files.modalities]
        if ULTRASOUND not in wanted or len(wanted) < 2:
            print(f"{files.name}: skipped (needs an ultrasound and one of {','.join(sequences)})")
            continue
        tic = time.perf_counter()
        with warnings.catch_warnings():  # leaving out the subject's other modalities is intended here
            warnings.filterwarnings("ignore", message=".*ignoring modalities")
            subject = load_subject(files, wanted)
        present = [k for k in sequences if k in subject.volumes]
        synthetic = {name: synthesise_from_ultrasound(each, subject, present, temperature)
                     for name, each in zip(names, loaded)}
        subject_rows = register_subject(subject, synthetic, present, ranges, displacements_per_range, seed,
                                        synthetic_metric, settings)
        rows += subject_rows
        registrations = sum(row["method"] != INITIAL_METHOD for row in subject_rows)
        print(f"{files.name}: {registrations} registrations of {','.join(present)} in "
              f"{time.perf_counter() - tic:.1f} s")
    if not rows:
        raise InputError(f"no subject has both an ultrasound and one of {','.join(sequences)}", data)
    write_csv_atomic(out / "registration.csv", rows, CSV_FIELDS)
    write_csv_atomic(out / "registration-summary.csv", summarise(rows),
                   ("sequence", "range_mm", "method", "trials", "tre_mean_mm", "tre_sd_mm", "failed", "p_vs_direct"))
    how = (f"Settings: SimpleITK rigid Euler3D about the field-of-view centre; Mattes mutual information "
           f"({settings.histogram_bins} bins) to the ultrasound, {synthetic_metric} to synthetic MR; shrink factors "
           f"{','.join(map(str, settings.shrink_factors))}, smoothing sigmas "
           f"{','.join(f'{v:g}' for v in settings.smoothing_sigmas)} voxels; regular-step gradient descent, "
           f"{settings.iterations} iterations per level; {settings.sampling_percentage:.0%} of the voxels sampled "
           f"(seed {settings.seed}); {displacements_per_range} displacements per range (seed {seed}); synthesis at "
           f"temperature {temperature:g} from the ultrasound alone.")
    write_text_atomic(out / "registration.md", markdown_table(rows, names, sequences, ranges, how))
    return rows

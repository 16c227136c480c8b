"""MR-ultrasound rigid registration (Sections 4.4.4 and 5.4, Table III) on a small phantom."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mmhvae.errors import InputError
from mmhvae.experiments.downstream.registration import (
    DIRECT_METHOD,
    INITIAL_METHOD,
    parse_ranges,
    registration_experiment,
)
from mmhvae.experiments.downstream.rigid import (
    RegistrationSettings,
    displacement_mm,
    image_from_array,
    linear_part,
    random_rigid_displacement,
    register_rigid,
    run_register,
    target_registration_error,
    voxel_points_mm,
)
from mmhvae.io.volumes import read_volume
from mmhvae.phantom.cohort import simulate_cohort

DEMO_MODEL = Path(__file__).resolve().parents[3] / "models" / "phantom-tiny.pt"
# Fewer levels and iterations than the defaults: enough on a 48 x 48 x 36 grid of 2 mm voxels, and quick.
QUICK = RegistrationSettings(shrink_factors=(2, 1), smoothing_sigmas=(1.0, 0.0), iterations=40)
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """One phantom subject with every modality on a 48 x 48 x 36 grid (2 mm voxels), MR cropped to the fan."""
    root = tmp_path_factory.mktemp("registration") / "data"
    simulate_cohort(root, subjects=1, size=48, seed=11, missing="complete")
    return root


def fov_points(volume) -> np.ndarray:
    return voxel_points_mm(volume.array > volume.array.min(), volume.affine)


def moved_copy(path: Path, transform: sitk.Transform, out: Path) -> Path:
    """The same voxels with the grid moved in space by `transform` (LPS), so `transform` maps every point of the
    original image to the point of the copy that shows the same anatomy: the exact fixed -> moving transform."""
    image = nib.load(str(path))
    matrix, offset = linear_part(transform)
    motion_lps = np.eye(4)
    motion_lps[:3, :3], motion_lps[:3, 3] = matrix, offset
    affine = RAS_TO_LPS @ motion_lps @ RAS_TO_LPS @ image.affine
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj, np.float32), affine), str(out))
    return out


def euler(angles_rad=(0.0, 0.0, 0.0), translation_mm=(0.0, 0.0, 0.0), centre_mm=(0.0, 0.0, 0.0)):
    transform = sitk.Euler3DTransform()
    transform.SetCenter(tuple(float(c) for c in centre_mm))
    transform.SetRotation(*(float(a) for a in angles_rad))
    transform.SetTranslation(tuple(float(t) for t in translation_mm))
    return transform


# ----------------------------------------------------------------------------------------------------
# TRE and displacements
# ----------------------------------------------------------------------------------------------------


def test_tre_of_a_translation_is_its_length_everywhere():
    points = np.random.default_rng(0).uniform(-50, 50, (200, 3))
    shift = euler(translation_mm=(3.0, -4.0, 12.0))
    np.testing.assert_allclose(target_registration_error(euler(), shift, points), 13.0, rtol=1e-9)
    np.testing.assert_allclose(target_registration_error(shift, shift, points), 0.0, atol=1e-9)


def test_tre_of_a_rotation_about_the_centre_is_the_chord():
    centre = np.array([10.0, -20.0, 5.0])
    angle = np.deg2rad(7.0)
    radii = np.array([5.0, 20.0, 40.0])
    # points in the plane through the centre perpendicular to z, at several radii and heights along z
    points = centre + np.stack([radii * np.cos(1.0), radii * np.sin(1.0), [0.0, 3.0, -8.0]], axis=1)
    rotation = euler(angles_rad=(0.0, 0.0, angle), centre_mm=centre)
    np.testing.assert_allclose(target_registration_error(euler(centre_mm=centre), rotation, points),
                               2 * radii * math.sin(angle / 2), rtol=1e-9)


def test_random_displacements_hit_the_requested_median_range():
    rng = np.random.default_rng(0)
    points = rng.uniform(-40, 40, (3000, 3))
    centre = points.mean(axis=0)
    for low, high in ((0, 4), (4, 8), (12, 16)):
        for _ in range(5):
            motion = random_rigid_displacement(points, centre, low, high, rng)
            assert low <= np.median(displacement_mm(motion, points)) < high
            assert np.allclose(motion.GetCenter(), centre)
    first = random_rigid_displacement(points, centre, 4, 8, np.random.default_rng(3))
    again = random_rigid_displacement(points, centre, 4, 8, np.random.default_rng(3))
    assert first.GetParameters() == again.GetParameters()  # seeded


# ----------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------


def test_run_register_recovers_a_known_rigid_motion(cohort, tmp_path):
    """Same modality, the MR moved by 4 degrees and 5 mm: TRE under 1 mm over the field of view."""
    fixed = read_volume(cohort / "sub-000" / "t2.nii.gz")
    points = fov_points(fixed)
    truth = euler(angles_rad=np.deg2rad((2.0, -3.0, 1.5)), translation_mm=(3.0, -2.0, 3.5),
                  centre_mm=points.mean(axis=0))
    assert np.median(displacement_mm(truth, points)) > 4.0
    moving = moved_copy(fixed.path, truth, tmp_path / "moved-t2.nii.gz")
    image, transform_file = run_register(fixed.path, moving, tmp_path / "out" / "registered.nii.gz",
                                         metric="correlation", settings=QUICK)
    assert transform_file == tmp_path / "out" / "registered.tfm"
    estimated = sitk.ReadTransform(str(transform_file))
    assert target_registration_error(truth, estimated, points).max() < 1.0
    registered = read_volume(image)
    assert registered.same_grid(fixed)
    inside = fixed.array > fixed.array.min()
    assert np.corrcoef(registered.array[inside], fixed.array[inside])[0, 1] > 0.95


def test_registration_is_deterministic(cohort):
    t2 = read_volume(cohort / "sub-000" / "t2.nii.gz")
    us = read_volume(cohort / "sub-000" / "us.nii.gz")
    fixed, moving = image_from_array(us.array, us.affine), image_from_array(t2.array, t2.affine)
    start = euler(translation_mm=(2.0, 1.0, -2.0), centre_mm=fov_points(us).mean(axis=0))
    first = register_rigid(fixed, moving, metric="mattes", initial=start, settings=QUICK)
    second = register_rigid(fixed, moving, metric="mattes", initial=start, settings=QUICK)
    assert not first.failed
    assert first.transform.GetParameters() == second.transform.GetParameters()
    assert start.GetParameters() == (0.0, 0.0, 0.0, 2.0, 1.0, -2.0)  # the caller's transform is left alone


# ----------------------------------------------------------------------------------------------------
# Table III experiment
# ----------------------------------------------------------------------------------------------------


def test_experiment_end_to_end(cohort, tmp_path):
    out = tmp_path / "table3"
    rows = registration_experiment([DEMO_MODEL], cohort, out, ranges=((0, 4), (8, 12)), displacements_per_range=2,
                                   sequences=("t2", "flair"), seed=1, settings=QUICK)
    methods = {row["method"] for row in rows}
    assert methods == {INITIAL_METHOD, DIRECT_METHOD, "mmhvae"}
    assert len(rows) == 2 * 2 * 2 * 3  # sequences x ranges x displacements x (initial, direct, model)
    with open(out / "registration.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == len(rows)
    assert all(math.isfinite(float(row["tre_mean_mm"])) for row in written)
    for row in written:  # the initial displacement lies in its range; every method starts from the same one
        low, high = (float(v) for v in row["range_mm"].removesuffix(" mm").split("-"))
        assert low <= float(row["initial_median_mm"]) < high
    table = (out / "registration.md").read_text()
    assert "nan" not in table.lower()
    assert "## t2" in table and "## flair" in table and "| mmhvae |" in table and f"| {DIRECT_METHOD} |" in table
    assert (out / "registration-summary.csv").is_file()
    with pytest.raises(InputError, match="already has results"):
        registration_experiment([DEMO_MODEL], cohort, out, displacements_per_range=1)


# ----------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------


def test_bad_input_is_an_input_error(cohort, tmp_path):
    subject = cohort / "sub-000"
    with pytest.raises(InputError, match="does not exist") as missing:
        run_register(subject / "us.nii.gz", subject / "nope.nii.gz", tmp_path / "r.nii.gz")
    assert missing.value.path == subject / "nope.nii.gz"
    with pytest.raises(InputError, match="NIfTI file name"):
        run_register(subject / "us.nii.gz", subject / "t2.nii.gz", tmp_path / "r.png")
    with pytest.raises(InputError, match="metric"):
        run_register(subject / "us.nii.gz", subject / "t2.nii.gz", tmp_path / "r.nii.gz", metric="ssd")
    small = tmp_path / "small-mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(small))
    with pytest.raises(InputError, match="does not match") as mismatched:
        run_register(subject / "us.nii.gz", subject / "t2.nii.gz", tmp_path / "r.nii.gz", fixed_mask=small)
    assert mismatched.value.path == small
    with pytest.raises(InputError, match="seed"):
        RegistrationSettings(seed=0)  # SimpleITK's "seed from the clock"
    with pytest.raises(InputError, match="LOW-HIGH"):
        parse_ranges("0-4,8-6")
    assert parse_ranges("0-4, 4-8") == ((0.0, 4.0), (4.0, 8.0))
    with pytest.raises(InputError, match="at least 1"):
        registration_experiment([DEMO_MODEL], cohort, tmp_path / "x", displacements_per_range=0)
    only_mr = tmp_path / "only-mr" / "sub-000"
    only_mr.mkdir(parents=True)
    (only_mr / "t2.nii.gz").write_bytes((subject / "t2.nii.gz").read_bytes())
    with pytest.raises(InputError, match="no subject has both an ultrasound"):
        registration_experiment([DEMO_MODEL], only_mr.parent, tmp_path / "y", displacements_per_range=1)


def test_table_iii_tests_over_subjects_not_trials():
    from mmhvae.experiments.downstream.registration import significantly_best, summarise

    def rows(subjects: int, trials: int) -> list[dict]:
        out = []
        for s in range(subjects):
            for t in range(trials):
                for method, tre in (("acquired US", 5.0 + s + 0.01 * t), ("synthetic", 4.0 + s + 0.01 * t)):
                    out.append({"subject": f"s{s}", "sequence": "t2", "range_mm": "0-4", "displacement": t,
                                "method": method, "tre_mean_mm": tre, "failed": 0})
        return out

    # 3 subjects x 20 trials: 60 one-sided pairs, but the smallest p over 3 subjects is 0.25
    assert significantly_best(rows(3, 20), "t2", "0-4", ["acquired US", "synthetic"]) is None
    assert significantly_best(rows(10, 2), "t2", "0-4", ["acquired US", "synthetic"]) == "synthetic"
    (direct,) = [s for s in summarise(rows(3, 20)) if s["method"] == "acquired US"]
    assert (direct["trials"], direct["subjects"]) == (60, 3)

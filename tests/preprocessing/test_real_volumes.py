"""`mmhvae prepare`: canonical axes with the slice axis third, the model's voxel size, the crop, the brain mask, the
harmonised targets, and the way back to the original grid and header."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mmhvae.errors import InputError
from mmhvae.io.layouts import discover_subjects
from mmhvae.io.subjects import load_subject
from mmhvae.io.volumes import new_volume, read_volume
from mmhvae.preprocessing.real_volumes import PrepareSettings, prepare_data, read_grid_record
from mmhvae.preprocessing.reorient import (
    SLICE_AXES,
    GridRecord,
    grid_at_spacing,
    inverse_orientation,
    orientation_to,
    reoriented,
)

from conftest import phantom_subject, write_nifti

HEADER_FIELDS = ("srow_x", "srow_y", "srow_z", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                 "qoffset_z", "pixdim", "qform_code", "sform_code", "xyzt_units", "dim")


def world(volume_affine, index):
    return volume_affine[:3, :3] @ np.asarray(index, float) + volume_affine[:3, 3]


@pytest.mark.parametrize("slice_axis", list(SLICE_AXES))
def test_reorientation_permutes_voxels_in_place_and_is_undone_exactly(non_canonical_subject, slice_axis):
    original = read_volume(non_canonical_subject() / "t2.nii.gz")
    transform = orientation_to(original.affine, slice_axis)
    turned = reoriented(original, transform)
    codes = SLICE_AXES[slice_axis] or nib.aff2axcodes(original.affine)
    assert nib.aff2axcodes(turned.affine) == tuple(codes)
    # every voxel keeps its position in the world
    index = np.array([4, 7, 3])
    here = world(original.affine, index)
    there = np.rint(np.linalg.solve(turned.affine[:3, :3], here - turned.affine[:3, 3])).astype(int)
    assert turned.array[tuple(there)] == original.array[tuple(index)]
    back = nib.orientations.apply_orientation(turned.array, inverse_orientation(transform))
    np.testing.assert_array_equal(back, original.array)


def test_axial_is_nibabels_closest_canonical(non_canonical_subject):
    original = read_volume(non_canonical_subject() / "t1.nii.gz")
    turned = reoriented(original, orientation_to(original.affine, "axial"))
    canonical = nib.as_closest_canonical(nib.load(str(non_canonical_subject("again") / "t1.nii.gz")))
    np.testing.assert_allclose(turned.affine, canonical.affine, atol=1e-5)
    np.testing.assert_array_equal(turned.array, np.asarray(canonical.dataobj, np.float32))


def test_a_grid_at_another_spacing_keeps_the_field_centre_and_directions():
    volume = new_volume(np.zeros((10, 20, 5), np.float32), np.diag([2.0, 1.0, 3.0, 1.0]))
    grid = grid_at_spacing(volume, 0.5)
    assert grid.shape == (40, 40, 30)
    centre = world(volume.affine, (np.array(volume.shape) - 1) / 2)
    np.testing.assert_allclose(world(grid.affine, (np.array(grid.shape) - 1) / 2), centre)
    assert grid_at_spacing(new_volume(np.zeros((4, 4, 4)), np.eye(4)), 1.0) is None  # already 1 mm


def prepared_back(folder, key, record_path):
    """The prepared image of `key`, taken back to the original grid by its record."""
    record = read_grid_record(record_path)
    return record.back_to_original(read_volume(folder / f"{key}.nii.gz").array), record


def test_prepare_keeps_the_original_grid_and_header_on_the_way_back(non_canonical_subject, tmp_path):
    source = non_canonical_subject()
    written = prepare_data(source.parent, tmp_path / "prepared", PrepareSettings(spacing_mm=None))
    folder = tmp_path / "prepared" / "case"
    assert folder / "prepared.json" in written
    assert nib.aff2axcodes(read_volume(folder / "t1.nii.gz").affine) == ("R", "A", "S")
    for key in ("t1", "t1c", "t2", "flair"):
        back, record = prepared_back(folder, key, folder / "prepared.json")
        original = read_volume(source / f"{key}.nii.gz")
        inside = original.array > 0
        np.testing.assert_array_equal(back[inside], original.array[inside])  # exact: no resampling
        assert not back[~inside].any()
        grid = record.original_grid()
        assert grid.shape == original.shape
        for field in HEADER_FIELDS:
            np.testing.assert_array_equal(grid.header[field], original.header[field], err_msg=field)
    assert read_volume(folder / "t1.nii.gz").shape != original.shape  # cropped to the brain


def test_prepare_resamples_to_the_model_spacing_and_comes_back_close(non_canonical_subject, tmp_path):
    source = non_canonical_subject()
    prepare_data(source.parent, tmp_path / "prepared", PrepareSettings(spacing_mm=0.7, margin_mm=3.0))
    folder = tmp_path / "prepared" / "case"
    image = read_volume(folder / "t2.nii.gz")
    np.testing.assert_allclose(image.zooms, (0.7, 0.7, 0.7), atol=1e-5)
    back, record = prepared_back(folder, "t2", folder / "prepared.json")
    original = read_volume(source / "t2.nii.gz").array
    assert back.shape == original.shape and record.resampled_shape is not None
    inner = original > 0
    # linear interpolation there and back: close to the original inside the brain, off at its edge only
    assert np.median(np.abs(back[inner] - original[inner]) / original[inner]) < 0.1


def test_prepare_writes_mask_labels_targets_and_a_record(non_canonical_subject, tmp_path):
    source = non_canonical_subject()
    prepare_data(source.parent, tmp_path / "prepared", PrepareSettings(spacing_mm=None))
    (files,) = discover_subjects(tmp_path / "prepared")
    assert files.layout == "canonical" and files.mask is not None and files.seg is not None
    assert set(files.targets) == {"t1", "t1c", "t2", "flair"} and files.record is not None
    subject = load_subject(files)
    mask = subject.mask.array > 0
    assert mask.any() and not (subject.volumes["t2"].array[~mask]).any()
    assert all(not target.array[~mask].any() for target in subject.targets.values())
    record = json.loads(files.record.read_text())
    assert record["mask"] == "foreground of the images" and record["white_matter"] == "intensity clustering"
    assert GridRecord.from_json(record, files.record).describes(subject.reference)


def test_a_given_mask_and_tissue_map_are_used(non_canonical_subject, tmp_path):
    source = non_canonical_subject()
    affine = nib.load(str(source / "t1.nii.gz")).affine
    t1 = read_volume(source / "t1.nii.gz").array
    mask = np.zeros(t1.shape)
    mask[4:19, 5:26, 4:15] = 1
    tissue = np.where(t1 > 0, 3, 0)
    write_nifti(source / "mask.nii.gz", mask, affine, qform_code=1, sform_code=4, dtype=np.uint8)
    write_nifti(source / "tissue.nii.gz", tissue, affine, qform_code=1, sform_code=4, dtype=np.uint8)
    prepare_data(source.parent, tmp_path / "prepared", PrepareSettings(spacing_mm=None, margin_mm=0.0))
    folder = tmp_path / "prepared" / "case"
    record = json.loads((folder / "prepared.json").read_text())
    assert record["mask"] == "mask.nii.gz" and record["white_matter"] == "tissue.nii.gz"
    assert read_volume(folder / "mask.nii.gz").array.all()  # cropped to the given mask's box, which it fills


def test_prepare_refuses_earlier_outputs_and_writes_nothing_when_a_subject_fails(non_canonical_subject, tmp_path):
    non_canonical_subject("a")
    bad = non_canonical_subject("b")
    affine = nib.load(str(bad / "t2.nii.gz")).affine
    write_nifti(bad / "t2.nii.gz", np.zeros((23, 31, 19)), affine, sform_code=4)  # constant: no white matter
    with pytest.raises(InputError, match="t2"):
        prepare_data(bad.parent, tmp_path / "out", PrepareSettings(spacing_mm=None))
    assert not (tmp_path / "out").exists()  # subject a was not written either
    prepare_data(bad.parent, tmp_path / "out2", PrepareSettings(spacing_mm=None, targets=False))
    with pytest.raises(InputError, match="already exists"):
        prepare_data(bad.parent, tmp_path / "out2", PrepareSettings(spacing_mm=None, targets=False))
    with pytest.raises(InputError, match="slice axis"):
        prepare_data(bad.parent, tmp_path / "out3", PrepareSettings(slice_axis="oblique"))


def test_an_ultrasound_sweep_keeps_its_stored_axes_and_is_cropped_to_its_field_of_view(tmp_path):
    source = phantom_subject(tmp_path / "data" / "s", ("us", "t2"))
    prepare_data(source.parent, tmp_path / "prepared", PrepareSettings(spacing_mm=None, slice_axis="stored",
                                                                      margin_mm=0.0, targets=False))
    original, prepared = read_volume(source / "us.nii.gz"), read_volume(tmp_path / "prepared" / "s" / "us.nii.gz")
    np.testing.assert_allclose(prepared.affine[:3, :3], original.affine[:3, :3], atol=1e-6)  # the same axes
    assert prepared.shape == (20, 16, 5)  # conftest's fan: voxels 2..21 x 2..17 x 2..6
    np.testing.assert_array_equal(prepared.array, original.array[2:22, 2:18, 2:7])

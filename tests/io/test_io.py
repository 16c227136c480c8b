from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from mmhvae.errors import InputError
from mmhvae.io.layouts import discover_subjects, modalities_found, require_modalities_present
from mmhvae.io.subjects import load_subject
from mmhvae.io.volumes import read_volume, write_volume
from mmhvae.modalities import ModalitySet

from conftest import brain_like, huge_header_file, make_subject, oblique_affine, write_nifti

PAPER = ModalitySet(("us", "t2", "t1c", "flair"))


def header_geometry(path):
    header = nib.load(str(path)).header
    return {
        "srow": np.stack([header["srow_x"], header["srow_y"], header["srow_z"]]),
        "quatern": np.array([header[k] for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                                                 "qoffset_z")]),
        "pixdim": header["pixdim"].copy(),
        "codes": (int(header["qform_code"]), int(header["sform_code"])),
        "units": header.get_xyzt_units(),
        "shape": header.get_data_shape(),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_nifti_round_trip_keeps_the_header_geometry_bit_exact(tmp_path, dtype):
    source = write_nifti(tmp_path / "in.nii.gz", brain_like((17, 13, 5)), oblique_affine(), qform_code=1,
                         sform_code=4, dtype=dtype)
    volume = read_volume(source)
    out = write_volume(tmp_path / "out" / "pred.nii.gz", volume.array * 0.5, volume)
    before, after = header_geometry(source), header_geometry(out)
    for key in before:
        np.testing.assert_array_equal(np.asarray(before[key], dtype=object), np.asarray(after[key], dtype=object))
    again = read_volume(out)
    np.testing.assert_array_equal(again.affine, volume.affine)
    np.testing.assert_array_equal(again.array, (volume.array * 0.5).astype(np.float32))
    assert not list((tmp_path / "out").glob(".*tmp*")), "temporary file left behind"


def test_write_resets_integer_scaling_of_the_source(tmp_path):
    image = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(5, 4, 3), oblique_affine())
    image.header.set_slope_inter(2.0, 10.0)
    nib.save(image, str(tmp_path / "scaled.nii.gz"))
    volume = read_volume(tmp_path / "scaled.nii.gz")
    assert volume.array[1, 0, 0] == 2 * 12 + 10
    write_volume(tmp_path / "out.nii.gz", volume.array, volume)
    np.testing.assert_array_equal(read_volume(tmp_path / "out.nii.gz").array, volume.array)


def test_canonical_layout_is_discovered_with_the_right_r(tmp_path):
    make_subject(tmp_path / "a", ("us", "t2", "t1c", "flair"))
    make_subject(tmp_path / "b", ("us", "t1c"), names={"t1c": "CET1"})
    write_nifti(tmp_path / "b" / "seg.nii.gz", np.zeros((20, 18, 6)))
    make_subject(tmp_path / "b" / "targets", ("t1c",))
    (tmp_path / "b" / "notes.txt").write_text("ignored")
    subjects = discover_subjects(tmp_path)
    assert [s.name for s in subjects] == ["a", "b"]
    assert subjects[0].indicator(PAPER) == (1, 1, 1, 1)
    assert subjects[1].indicator(PAPER) == (1, 0, 1, 0)
    assert subjects[1].seg is not None and set(subjects[1].targets) == {"t1c"}
    assert {s.layout for s in subjects} == {"canonical"}
    loaded = load_subject(subjects[1], PAPER)
    assert loaded.indicator(PAPER) == (1, 0, 1, 0) and loaded.seg.shape == (20, 18, 6)


def test_one_subject_folder_is_a_cohort_of_one(tmp_path):
    make_subject(tmp_path / "only", ("t2", "flair"))
    (subject,) = discover_subjects(tmp_path / "only")
    assert subject.name == "only" and subject.indicator(PAPER) == (0, 1, 0, 1)


def test_flat_authors_layout(tmp_path):
    for name, mods in {"case-01": ("us", "t2"), "case-02": ("us", "cet1", "flair")}.items():
        for i, mod in enumerate(mods):
            write_nifti(tmp_path / f"{name}-{mod}.nii.gz", brain_like(seed=i))
    subjects = discover_subjects(tmp_path)
    assert [(s.name, s.layout, s.indicator(PAPER)) for s in subjects] == [
        ("case-01", "flat", (1, 1, 0, 0)), ("case-02", "flat", (1, 0, 1, 1))]


def test_brats_layout(tmp_path):
    name = "BraTS-GLI-00002-000"
    for i, suffix in enumerate(("t1n", "t1c", "t2w", "t2f", "seg")):
        write_nifti(tmp_path / name / f"{name}-{suffix}.nii.gz", brain_like(seed=i))
    (subject,) = discover_subjects(tmp_path)
    assert subject.layout == "brats" and subject.seg is not None
    assert sorted(subject.modalities) == ["flair", "t1", "t1c", "t2"]
    assert subject.indicator(ModalitySet(("us", "t1", "t1c", "t2", "flair"))) == (0, 1, 1, 1, 1)


def test_resample_to_puts_every_image_on_one_grid(tmp_path):
    folder = tmp_path / "s"
    write_nifti(folder / "us.nii.gz", brain_like((20, 18, 6)), oblique_affine())
    shifted = oblique_affine(origin=(-39.3, 25.1, -7.7))  # 1 mm off
    write_nifti(folder / "t2.nii.gz", brain_like((22, 18, 6)), shifted)
    (files,) = discover_subjects(folder)
    with pytest.raises(InputError, match="differs from us.nii.gz.*--resample-to"):
        load_subject(files, PAPER)
    subject = load_subject(files, PAPER, resample_to="us")
    assert subject.volumes["t2"].same_grid(subject.volumes["us"])
    assert subject.volumes["t2"].path.name == "t2.nii.gz"


def test_resampling_an_identical_grid_changes_nothing(tmp_path):
    folder = make_subject(tmp_path / "s", ("us", "t2"))
    (files,) = discover_subjects(folder)
    from mmhvae.io.volumes import resample_onto

    subject = load_subject(files, PAPER)
    same = resample_onto(subject.volumes["t2"], subject.volumes["us"])
    np.testing.assert_allclose(same.array, subject.volumes["t2"].array, atol=1e-3)


def test_modalities_outside_the_set_are_ignored_with_a_warning(tmp_path):
    folder = make_subject(tmp_path / "s", ("us", "pd"))
    (files,) = discover_subjects(folder)
    with pytest.warns(UserWarning, match="ignoring modalities \\['pd'\\]"):
        subject = load_subject(files, PAPER)
    assert list(subject.volumes) == ["us"]


# --- bad input: each case is an InputError naming the file and the problem -------------------------


def assert_input_error(call, path_part, problem):
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert path_part in message and problem in message, message
    assert "\n" not in message


def test_missing_folder(tmp_path):
    assert_input_error(lambda: discover_subjects(tmp_path / "nope"), "nope", "does not exist")


def test_empty_folder(tmp_path):
    assert_input_error(lambda: discover_subjects(tmp_path), str(tmp_path), "no subjects found")


def test_truncated_gzip(tmp_path):
    path = write_nifti(tmp_path / "s" / "t2.nii.gz", brain_like((30, 30, 10)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_input_error(lambda: read_volume(path), "t2.nii.gz", "cannot read as NIfTI")


def test_text_file_named_nifti(tmp_path):
    path = tmp_path / "t2.nii.gz"
    path.write_text("this is not an image\n")
    assert_input_error(lambda: read_volume(path), "t2.nii.gz", "cannot read as NIfTI")


def test_non_gzip_nii_gz(tmp_path):
    path = write_nifti(tmp_path / "x.nii", brain_like())
    renamed = tmp_path / "t2.nii.gz"
    path.rename(renamed)  # an uncompressed file with a .gz name
    try:
        read_volume(renamed)
    except InputError as exc:
        assert "t2.nii.gz" in str(exc)


def test_gzip_of_garbage(tmp_path):
    path = tmp_path / "t2.nii.gz"
    path.write_bytes(gzip.compress(b"\x00" * 500))
    assert_input_error(lambda: read_volume(path), "t2.nii.gz", "cannot read as NIfTI")


@pytest.mark.parametrize("shape, problem", [((10, 12), "2D"), ((6, 6, 4, 2), "4D"), ((0, 5, 5), "empty")])
def test_wrong_dimensionality(tmp_path, shape, problem):
    path = tmp_path / "t2.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(path))
    assert_input_error(lambda: read_volume(path), "t2.nii.gz", problem)


def test_trailing_singleton_fourth_axis_is_accepted(tmp_path):
    path = tmp_path / "t2.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 6, 4, 1), np.float32), np.eye(4)), str(path))
    assert read_volume(path).shape == (6, 6, 4)


def test_nan_voxels_refused_or_cleaned(tmp_path):
    array = brain_like()
    array[3, 4, 2] = np.nan
    array[5, 5, 1] = np.inf
    path = write_nifti(tmp_path / "flair.nii.gz", array)
    assert_input_error(lambda: read_volume(path), "flair.nii.gz", "2 voxels are NaN or infinite")
    cleaned = read_volume(path, nan_to_num=True)
    assert np.all(np.isfinite(cleaned.array)) and cleaned.array[3, 4, 2] == 0


def test_unknown_modality_name(tmp_path):
    make_subject(tmp_path / "s", ("us",))
    write_nifti(tmp_path / "s" / "dwi.nii.gz", brain_like())
    assert_input_error(lambda: discover_subjects(tmp_path), "dwi.nii.gz", "unknown modality name")


def test_duplicated_modality_through_an_alias(tmp_path):
    make_subject(tmp_path / "s", ("us", "t1c"))
    write_nifti(tmp_path / "s" / "cet1.nii.gz", brain_like())
    assert_input_error(lambda: discover_subjects(tmp_path), "s", "has modality 't1c' twice")


def test_subject_with_labels_but_no_modality(tmp_path):
    make_subject(tmp_path / "a", ("us",))
    write_nifti(tmp_path / "b" / "seg.nii.gz", brain_like())
    assert_input_error(lambda: discover_subjects(tmp_path), "seg.nii.gz", "has no modality image")


def test_mismatched_shapes(tmp_path):
    folder = tmp_path / "s"
    write_nifti(folder / "us.nii.gz", brain_like((20, 18, 6)))
    write_nifti(folder / "t2.nii.gz", brain_like((20, 18, 7)))
    (files,) = discover_subjects(folder)
    assert_input_error(lambda: load_subject(files, PAPER), "t2.nii.gz", "subject 's': shape")


def test_mismatched_affines_beyond_tolerance(tmp_path):
    folder = tmp_path / "s"
    write_nifti(folder / "us.nii.gz", brain_like(), oblique_affine())
    write_nifti(folder / "t2.nii.gz", brain_like(), oblique_affine(angle_deg=12.5))
    (files,) = discover_subjects(folder)
    assert_input_error(lambda: load_subject(files, PAPER), "t2.nii.gz", "affine")


def test_affines_within_tolerance_are_one_grid(tmp_path):
    folder = tmp_path / "s"
    write_nifti(folder / "us.nii.gz", brain_like(), oblique_affine())
    write_nifti(folder / "t2.nii.gz", brain_like(), oblique_affine(origin=(-40.3 + 5e-4, 25.1, -7.7)))
    (files,) = discover_subjects(folder)
    assert len(load_subject(files, PAPER).volumes) == 2


def test_a_grid_too_large_for_memory_is_refused_before_reading(tmp_path):
    path = huge_header_file(tmp_path / "s1" / "us.nii")
    with pytest.raises(InputError, match="GiB of memory") as error:
        read_volume(path)  # without the estimate, this would fail later as a truncated file
    assert error.value.path == path
    with pytest.raises(InputError, match=r"subject 's1' \(1 images of shape \(20000, 20000, 400\)\)"):
        load_subject(discover_subjects(tmp_path)[0])


def test_memory_estimate_counts_every_modality_and_honours_the_limit(tmp_path, monkeypatch):
    make_subject(tmp_path / "s1", ("us", "t2", "t1c"), shape=(20, 18, 6))
    files = discover_subjects(tmp_path)[0]
    needed = 20 * 18 * 6 * 3 * 4 * 4  # voxels x modalities x float32 bytes x working copies
    monkeypatch.setenv("MMHVAE_MEMORY_LIMIT_GB", str(needed / 2**30 * 1.01))
    assert load_subject(files).volumes.keys() == {"us", "t2", "t1c"}
    monkeypatch.setenv("MMHVAE_MEMORY_LIMIT_GB", str(needed / 2**30 * 0.99))
    with pytest.raises(InputError, match="3 images of shape"):
        load_subject(files)


def test_unknown_name_says_what_was_found_and_what_is_accepted(tmp_path):
    name = "BraTS-GLI-00009-000"
    for suffix in ("t1n", "adc"):
        write_nifti(tmp_path / name / f"{name}-{suffix}.nii.gz", brain_like())
    with pytest.raises(InputError) as raised:
        discover_subjects(tmp_path)
    assert raised.value.path.name == f"{name}-adc.nii.gz"
    assert raised.value.problem.startswith("unknown modality name 'adc' in the file name; expected")
    assert "us, t1, t1c, t2, flair, pd" in raised.value.problem and "t2w" in raised.value.problem


def test_the_modalities_a_folder_holds_and_the_error_when_it_holds_none_of_a_runs(tmp_path):
    make_subject(tmp_path / "a", ("pd", "t1w"))
    make_subject(tmp_path / "b", ("t2f",))
    subjects = discover_subjects(tmp_path)
    assert modalities_found(subjects) == ("t1", "flair", "pd")  # DATA_ORDER, aliases resolved
    require_modalities_present(subjects, ("flair", "us"), tmp_path, "x", "y")  # one is enough
    with pytest.raises(InputError) as raised:
        require_modalities_present(subjects, ("us", "t2"), tmp_path, "from --modalities",
                                   "train on theirs with --modalities {found}")
    assert str(raised.value) == (f"{tmp_path}: its subjects have t1, flair, pd and none of us, t2 (from --modalities);"
                                 " train on theirs with --modalities t1,flair,pd")


def test_a_brain_mask_and_the_record_of_prepare_are_part_of_a_subject(tmp_path):
    folder = make_subject(tmp_path / "s", ("t1",))
    write_nifti(folder / "mask.nii.gz", brain_like() > 0, dtype=np.uint8)
    (folder / "prepared.json").write_text("{}")
    (files,) = discover_subjects(tmp_path)
    assert files.mask == folder / "mask.nii.gz" and files.record == folder / "prepared.json"
    assert "mask" not in files.modalities
    subject = load_subject(files)
    assert subject.mask is not None and subject.mask.shape == subject.reference.shape

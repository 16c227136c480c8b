"""The phantom cohort: layout, determinism, MR physics orderings, speckle statistics, FOV crop, missingness,
harmonised targets. Small cohorts (size 32-48, few slices) built once per session."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mmhvae.errors import InputError
from mmhvae.io.layouts import discover_subjects
from mmhvae.io.subjects import load_subject
from mmhvae.phantom.cohort import TISSUE_LABELS, draw_present, parse_missing, simulate_cohort, subject_rng
from mmhvae.phantom.mr_physics import (
    NOMINAL_PROTOCOLS,
    TISSUE_RELAXATION,
    SiteVariation,
    draw_site_effects,
    tissue_signal,
)
from mmhvae.phantom.tissues import ALL_TISSUES
from mmhvae.phantom.us_sim import ACOUSTIC_TISSUES, get_probe, simulate_echo, simulate_echo_simus
from mmhvae.preprocessing.intensity import WM_MEDIAN_TARGETS
from mmhvae.preprocessing.masks import ultrasound_fov_mask

SMALL = {"size": 40, "slices": 6}


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "cohort"
    simulate_cohort(out, subjects=3, seed=0, missing="complete", preview=out.parent / "preview.png",
                            **SMALL)
    return out


@pytest.fixture(scope="session")
def cohort_again(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom_again") / "cohort"
    simulate_cohort(out, subjects=3, seed=0, missing="complete", **SMALL)
    return out


def array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------- layout


def test_layout_is_canonical_and_readable(cohort):
    subjects = discover_subjects(cohort)
    assert [s.name for s in subjects] == ["sub-000", "sub-001", "sub-002"]
    for files in subjects:
        assert sorted(files.modalities) == ["flair", "t1c", "t2", "us"]
        assert sorted(files.targets) == ["flair", "t1c", "t2"]  # no harmonised target for ultrasound
        subject = load_subject(files)
        assert subject.reference.shape == (40, 40, 6)
        assert np.allclose(subject.reference.zooms, 96.0 / 40)
        assert subject.seg is not None and subject.tissue is not None
    record = json.loads((cohort / "cohort.json").read_text())
    assert record["seed"] == 0 and record["subjects"] == 3
    assert [r["r"] for r in record["subject_records"]] == [[1, 1, 1, 1]] * 3
    assert record["modalities"] == ["us", "t2", "t1c", "flair"]


def test_affine_is_an_oblique_probe_pose(cohort):
    affine = nib.load(str(cohort / "sub-000" / "us.nii.gz")).affine
    linear = affine[:3, :3] / (96.0 / 40)
    assert np.allclose(linear.T @ linear, np.eye(3), atol=1e-4)  # orthonormal axes, isotropic voxels
    assert np.count_nonzero(np.abs(linear) > 0.05) > 3  # not aligned with the world axes


def test_preview_is_written(cohort):
    png = cohort.parent / "preview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < 300_000


# ---------------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(cohort, cohort_again):
    first, second = files_of(cohort), files_of(cohort_again)
    assert sorted(first) == sorted(second)
    assert all(first[name] == second[name] for name in first)


def test_subject_does_not_depend_on_cohort_size(cohort, tmp_path):
    simulate_cohort(tmp_path, subjects=1, seed=0, missing="complete", first_index=2, **SMALL)
    assert files_of(tmp_path / "sub-002") == files_of(cohort / "sub-002")


def test_other_seed_gives_other_anatomy_and_tumour(cohort, tmp_path):
    record = simulate_cohort(tmp_path, subjects=1, seed=1, missing="complete", **SMALL)
    ours = json.loads((cohort / "cohort.json").read_text())["subject_records"][0]
    theirs = record["subject_records"][0]
    assert ours["tumour"]["centre_mni_mm"] != theirs["tumour"]["centre_mni_mm"]
    assert not np.allclose(nib.load(str(cohort / "sub-000" / "us.nii.gz")).affine,
                           nib.load(str(tmp_path / "sub-000" / "us.nii.gz")).affine)
    assert not np.array_equal(array(cohort / "sub-000" / "tissue.nii.gz"),
                              array(tmp_path / "sub-000" / "tissue.nii.gz"))


def test_subjects_of_one_cohort_differ(cohort):
    records = json.loads((cohort / "cohort.json").read_text())["subject_records"]
    assert len({tuple(r["tumour"]["centre_mni_mm"]) for r in records}) == 3
    assert len({tuple(r["geometry"]["probe_contact_world_mm"]) for r in records}) == 3


# ---------------------------------------------------------------------------------------------------- MR physics


def signal(protocol_key: str, tissue: str) -> float:
    return tissue_signal(TISSUE_RELAXATION[tissue], NOMINAL_PROTOCOLS[protocol_key])


def test_tissue_contrast_orderings_of_the_signal_equations():
    assert signal("t2", "csf_ventricle") > signal("t2", "gm") > signal("t2", "wm")
    assert signal("t1", "wm") > signal("t1", "gm") > signal("t1", "csf_ventricle")
    assert signal("flair", "csf_ventricle") < 0.1 * signal("flair", "wm")  # CSF nulled
    assert signal("flair", "gm") > signal("flair", "wm")
    assert signal("flair", "oedema") > 1.5 * signal("flair", "wm")
    assert signal("t2", "oedema") > signal("t2", "gm")
    assert signal("t1c", "enhancing") > 1.5 * signal("t1", "enhancing")
    assert signal("t1c", "choroid") > signal("t1", "choroid")
    assert signal("t1c", "wm") == signal("t1", "wm")  # intact blood-brain barrier
    assert signal("pd", "gm") > signal("pd", "wm")


def test_flair_nominal_inversion_time_nulls_csf():
    csf = TISSUE_RELAXATION["csf_ventricle"]
    tr = NOMINAL_PROTOCOLS["flair"].tr_ms
    null = csf.t1_ms * np.log(2.0 / (1.0 + np.exp(-tr / csf.t1_ms)))
    assert NOMINAL_PROTOCOLS["flair"].ti_ms == pytest.approx(null, rel=0.01)


def test_site_flair_protocols_keep_csf_nulled_within_the_issue_jitter():
    # Each site jitters TR and TE, but picks the TI that nulls CSF at its TR (imperfectly): a FLAIR input
    # whose CSF is as bright as white matter would not be a FLAIR.
    rng = np.random.default_rng(0)
    nominal = NOMINAL_PROTOCOLS["flair"]
    variation = SiteVariation()
    csf, wm = TISSUE_RELAXATION["csf_ventricle"], TISSUE_RELAXATION["wm"]
    ratios, trs = [], []
    for _ in range(100):
        protocol = draw_site_effects("flair", rng).protocol
        assert abs(protocol.ti_ms / nominal.ti_ms - 1.0) <= variation.protocol_jitter
        ratios.append(tissue_signal(csf, protocol) / tissue_signal(wm, protocol))
        trs.append(protocol.tr_ms)
    assert max(ratios) < 0.2
    assert np.ptp(trs) > 0.2 * nominal.tr_ms  # TR still varies by site


def median_by_label(image, labels, value):
    return float(np.median(image[labels == value]))


def test_tissue_orderings_in_the_generated_targets(cohort):
    csf, wm = TISSUE_LABELS["csf"], TISSUE_LABELS["wm"]
    for name in ("sub-000", "sub-001", "sub-002"):
        folder = cohort / name
        tissue, seg = array(folder / "tissue.nii.gz"), array(folder / "seg.nii.gz")
        t2, flair, t1c = (array(folder / "targets" / f"{k}.nii.gz") for k in ("t2", "flair", "t1c"))
        if np.count_nonzero(tissue == csf) >= 20:
            assert median_by_label(t2, tissue, csf) > median_by_label(t2, tissue, wm)
            assert median_by_label(flair, tissue, csf) < median_by_label(flair, tissue, wm)
            assert median_by_label(t1c, tissue, csf) < median_by_label(t1c, tissue, wm)
        if np.count_nonzero(seg == 2) >= 20:
            assert median_by_label(flair, seg, 2) > median_by_label(flair, tissue, wm)


def test_enhancing_rim_brighter_in_cet1_than_in_t1(tmp_path):
    simulate_cohort(tmp_path, subjects=1, seed=0, modalities=("t1", "t1c"), missing="complete",
                            first_index=1, **SMALL)
    folder = tmp_path / "sub-001"
    seg = array(folder / "seg.nii.gz")
    assert np.count_nonzero(seg == 3) > 20, "subject 1 of seed 0 is a high-grade tumour"
    t1, t1c = array(folder / "targets" / "t1.nii.gz"), array(folder / "targets" / "t1c.nii.gz")
    assert median_by_label(t1c, seg, 3) > 1.5 * median_by_label(t1, seg, 3)


def test_harmonised_targets_have_the_white_matter_median_at_the_target(cohort):
    for name in ("sub-000", "sub-001", "sub-002"):
        folder = cohort / name
        wm = array(folder / "tissue.nii.gz") == TISSUE_LABELS["wm"]
        for key in ("t2", "t1c", "flair"):
            target = array(folder / "targets" / f"{key}.nii.gz")
            assert np.median(target[wm]) == pytest.approx(WM_MEDIAN_TARGETS[key], rel=1e-4)


def test_inputs_are_not_harmonised(cohort):
    """Site effects: the input/target white-matter ratio varies across subjects and modalities."""
    ratios = []
    for name in ("sub-000", "sub-001", "sub-002"):
        folder = cohort / name
        wm = array(folder / "tissue.nii.gz") == TISSUE_LABELS["wm"]
        for key in ("t2", "t1c", "flair"):
            image, target = array(folder / f"{key}.nii.gz"), array(folder / "targets" / f"{key}.nii.gz")
            ratios.append(float(np.median(image[wm]) / np.median(target[wm])))
    assert max(ratios) / min(ratios) > 1.5
    record = json.loads((cohort / "cohort.json").read_text())["subject_records"][0]
    assert set(record["site"]) == {"t2", "t1c", "flair"}


# ---------------------------------------------------------------------------------------------------- FOV


def test_mr_images_and_labels_are_cropped_to_the_ultrasound_fov(cohort):
    for name in ("sub-000", "sub-001", "sub-002"):
        folder = cohort / name
        us = array(folder / "us.nii.gz")
        fov = ultrasound_fov_mask(us)
        assert np.array_equal(fov, us > 0)  # B-mode never reaches 0 inside the fan
        assert 0.2 < fov.mean() < 0.9
        for key in ("t2", "t1c", "flair"):
            image = array(folder / f"{key}.nii.gz")
            assert np.all(image[~fov] == 0) and np.all(image[fov] > 0)
            assert np.all(array(folder / "targets" / f"{key}.nii.gz")[~fov] == 0)
        assert np.all(array(folder / "seg.nii.gz")[~fov] == 0)
        assert np.all(array(folder / "tissue.nii.gz")[~fov] == 0)


def test_the_tumour_is_in_the_field_of_view(cohort):
    records = json.loads((cohort / "cohort.json").read_text())["subject_records"]
    assert all(r["tumour_voxels_in_fov"] > 0 for r in records)


def test_mr_only_cohort_uses_the_head_as_field_of_view(tmp_path):
    simulate_cohort(tmp_path, subjects=1, seed=0, modalities=("t2", "flair"), missing="complete", **SMALL)
    folder = tmp_path / "sub-000"
    assert not (folder / "us.nii.gz").exists()
    tissue, t2 = array(folder / "tissue.nii.gz"), array(folder / "t2.nii.gz")
    assert np.array_equal(t2 > 0, tissue > 0)


# ---------------------------------------------------------------------------------------------------- ultrasound


def homogeneous_echo(shape=(160, 240, 3), probe="default", seed=0):
    fractions = np.zeros((len(ALL_TISSUES), *shape), np.float32)
    fractions[ALL_TISSUES.index("wm")] = 1.0
    angles = np.linspace(-0.6, 0.6, shape[0])
    radii = np.linspace(10.0, 70.0, shape[1])
    return simulate_echo(fractions, angles, radii, 1.0, get_probe(probe), np.random.default_rng(seed))


@pytest.mark.parametrize("probe", ["default", "alt"])
def test_speckle_envelope_is_rayleigh_in_a_homogeneous_region(probe):
    echo = homogeneous_echo(probe=probe)
    # Deterministic gains vary with depth only: normalise each depth row, then pool a mid-depth band.
    band = echo.envelope[10:-10, 80:160, :]
    band = band / np.sqrt(np.mean(band**2, axis=(0, 2), keepdims=True))
    values = band.ravel()
    assert np.mean(values) / np.std(values) == pytest.approx(np.sqrt(np.pi / (4 - np.pi)), rel=0.08)  # 1.913
    intensity = values**2
    assert np.mean(intensity**2) / np.mean(intensity) ** 2 == pytest.approx(2.0, rel=0.12)  # exponential intensity
    assert np.mean(values) == pytest.approx(np.sqrt(np.pi) / 2, rel=0.05)  # Rayleigh mean for unit power


def test_bmode_is_log_compressed_into_unit_range():
    bmode = homogeneous_echo().bmode
    assert bmode.min() >= 0.0 and bmode.max() <= 1.0
    assert 0.4 < float(np.median(bmode)) < 0.95


def test_ultrasound_echogenicity_orderings():
    echo = {name: tissue.echogenicity for name, tissue in ACOUSTIC_TISSUES.items()}
    assert echo["csf_ventricle"] < 0.1 * echo["wm"]  # anechoic CSF
    assert echo["necrosis"] < echo["wm"] < echo["oedema"] < echo["enhancing"]
    assert min(echo["csf_sulcal"], echo["falx"], echo["choroid"]) > 3 * echo["wm"]


def test_enhancing_tumour_is_hyperechoic_in_the_cohort(cohort):
    wm, enhancing = [], []
    for name in ("sub-000", "sub-001", "sub-002"):
        folder = cohort / name
        us, tissue, seg = (array(folder / f"{k}.nii.gz") for k in ("us", "tissue", "seg"))
        wm.append(us[tissue == TISSUE_LABELS["wm"]])
        enhancing.append(us[seg == 3])
    enhancing = np.concatenate(enhancing)
    assert enhancing.size > 20
    assert np.median(enhancing) > np.median(np.concatenate(wm))


def test_alternative_probe_changes_only_the_ultrasound(tmp_path):
    simulate_cohort(tmp_path / "a", subjects=1, seed=3, missing="complete", **SMALL)
    simulate_cohort(tmp_path / "b", subjects=1, seed=3, missing="complete", us_probe="alt", **SMALL)
    a, b = tmp_path / "a" / "sub-000", tmp_path / "b" / "sub-000"
    assert np.array_equal(nib.load(str(a / "t2.nii.gz")).affine, nib.load(str(b / "t2.nii.gz")).affine)
    us_a, us_b = array(a / "us.nii.gz"), array(b / "us.nii.gz")
    both = (us_a > 0) & (us_b > 0)  # the probes' fans differ (convex radius); MR agrees where both see
    assert both.mean() > 0.2
    assert np.array_equal(array(a / "t2.nii.gz")[both], array(b / "t2.nii.gz")[both])
    assert not np.allclose(us_a[both], us_b[both], atol=0.05)


@pytest.mark.slow
def test_simus_engine_on_a_small_fan():
    pytest.importorskip("pymust")
    shape = (12, 16, 1)
    fractions = np.zeros((len(ALL_TISSUES), *shape), np.float32)
    fractions[ALL_TISSUES.index("wm")] = 1.0
    fractions[ALL_TISSUES.index("wm"), :, 8:] = 0.0
    fractions[ALL_TISSUES.index("enhancing"), :, 8:] = 1.0
    echo = simulate_echo_simus(fractions, np.linspace(-0.5, 0.5, shape[0]), np.linspace(10.0, 30.0, shape[1]),
                                      1.0, get_probe("default"), np.random.default_rng(0),
                                      scatterers_per_slice=600)
    assert echo.bmode.shape == shape and np.isfinite(echo.envelope).all()
    assert 0.0 <= echo.bmode.min() and echo.bmode.max() <= 1.0 and echo.bmode.max() > 0.5


# ---------------------------------------------------------------------------------------------------- missingness


def test_remind_missingness_frequencies_over_500_draws():
    probabilities = parse_missing("remind", ("us", "t2", "t1c", "flair"))
    assert probabilities == pytest.approx({"us": 1.0, "t2": 66 / 104, "t1c": 98 / 104, "flair": 21 / 104})
    draws = [draw_present(probabilities, subject_rng(0, i, "missing")) for i in range(500)]
    for key, p in probabilities.items():
        frequency = np.mean([key in d for d in draws])
        assert abs(frequency - p) <= 4.5 * np.sqrt(p * (1 - p) / 500) + 1e-9, key
    complete = np.mean([len(d) == 4 for d in draws])
    assert complete == pytest.approx(98 / 104 * 66 / 104 * 21 / 104, abs=0.05)  # about 12 % (ReMIND: 13/104)


def test_missing_specifications():
    assert parse_missing("complete", ("us", "t2")) == {"us": 1.0, "t2": 1.0}
    assert parse_missing("T2W=0.5, flair=0", ("us", "t2", "flair")) == {"us": 1.0, "t2": 0.5, "flair": 0.0}
    for bad in ("t2=1.5", "t2", "t2=x", "dwi=0.5", "flair=0.3", "us=0,t2=0"):
        with pytest.raises(InputError):
            parse_missing(bad, ("us", "t2"))


def test_a_subject_always_has_one_modality():
    rng = np.random.default_rng(0)
    assert all(draw_present({"t2": 0.01, "flair": 0.02}, rng) for _ in range(200))


def test_missing_modalities_are_not_written(tmp_path):
    record = simulate_cohort(tmp_path, subjects=4, seed=0, missing="t2=0,flair=0.5", size=40, slices=2)
    for subject in record["subject_records"]:
        folder = tmp_path / subject["name"]
        assert not (folder / "t2.nii.gz").exists() and not (folder / "targets" / "t2.nii.gz").exists()
        assert (folder / "flair.nii.gz").exists() == ("flair" in subject["present"])
        assert subject["r"] == [1, 0, 1, int("flair" in subject["present"])]


def test_bad_settings_are_input_errors(tmp_path):
    for kwargs in ({"modalities": ("us", "dwi")}, {"us_probe": "nope"}, {"us_engine": "nope"}, {"subjects": 0},
                   {"size": 8}, {"missing": "most"}):
        with pytest.raises(InputError):
            simulate_cohort(tmp_path, **kwargs)


# ---------------------------------------------------------------------------------------------------- BraTS layout


@pytest.fixture(scope="session")
def brats_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("brats") / "cohort"
    simulate_cohort(out, subjects=2, seed=0, size=32, layout="brats", preview=out.parent / "brats.png")
    return out


def test_brats_layout_is_named_oriented_and_skull_stripped_as_brats(brats_cohort):
    subjects = discover_subjects(brats_cohort)
    assert [s.name for s in subjects] == ["BraTS-PHANTOM-00000-000", "BraTS-PHANTOM-00001-000"]
    name = subjects[0].name
    assert sorted(p.name for p in (brats_cohort / name).iterdir()) == [
        f"{name}-{suffix}.nii.gz" for suffix in ("seg", "t1c", "t1n", "t2f", "t2w")]
    for files in subjects:
        assert files.layout == "brats" and sorted(files.modalities) == ["flair", "t1", "t1c", "t2"]
        subject = load_subject(files)
        assert subject.reference.shape == (32, 32, 21)  # 240 x 240 x 155 mm at 7.5 mm
        assert nib.aff2axcodes(subject.reference.affine) == ("L", "P", "S")
        np.testing.assert_allclose(subject.reference.zooms, 7.5)
        brain = np.logical_or.reduce([v.array > 0 for v in subject.volumes.values()])
        assert 0.05 < brain.mean() < 0.6  # skull-stripped: zero outside the brain, which fills part of the field
        assert subject.seg.array.max() > 0 and not subject.seg.array[~brain].any()
    record = json.loads((brats_cohort / "cohort.json").read_text())
    assert record["layout"] == "brats" and record["missing"] == "complete"
    assert record["modalities"] == ["t1", "t1c", "t2", "flair"]
    assert (brats_cohort.parent / "brats.png").stat().st_size > 0


def test_a_brats_subject_has_the_anatomy_and_tumour_of_its_canonical_twin(brats_cohort, tmp_path):
    twin = simulate_cohort(tmp_path, subjects=1, seed=0, size=32, slices=4, modalities=["t2"], missing="complete")
    brats = json.loads((brats_cohort / "cohort.json").read_text())
    assert brats["subject_records"][0]["tumour"] == twin["subject_records"][0]["tumour"]


def test_the_canonical_cohort_record_has_no_layout_key(cohort):
    assert "layout" not in json.loads((cohort / "cohort.json").read_text())

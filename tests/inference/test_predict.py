"""Inference: header and grid kept, subsets, samples and std maps, input restriction, refusals."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from mmhvae.errors import InputError
from mmhvae.inference.predict import predict, prepare_for_model
from mmhvae.inference.synthesis import synthesise
from mmhvae.io.layouts import discover_subjects
from mmhvae.io.subjects import load_subject
from mmhvae.model.mmhvae import MMHVAE
from mmhvae.model.mmhvae_config import MMHVAEConfig
from mmhvae.model_file import load_model_file, save_model_file
from mmhvae.preprocessing.prepare import PreprocessConfig

from conftest import odd_oblique_subject, phantom_subject

SMALL = MMHVAEConfig(image_size=32, num_pool=3, latent_channels=(2, 4, 4), global_latent=8, base_features=4,
                     max_features=8, decoder_blocks=1)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = MMHVAE.from_config(SMALL).eval()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return save_model_file(path, model, PreprocessConfig(modalities=SMALL.modalities, image_size=32))


def test_outputs_keep_the_header_and_grid_of_an_odd_oblique_input(model_file, tmp_path):
    subject = odd_oblique_subject(tmp_path / "in" / "case7")
    predict(model_file, subject, tmp_path / "out")
    source = nib.load(str(subject / "us.nii.gz")).header
    for key in SMALL.modalities:
        header = nib.load(str(tmp_path / "out" / "case7" / f"{key}.nii.gz")).header
        assert header.get_data_shape() == (37, 29, 5)
        for field in ("srow_x", "srow_y", "srow_z", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                      "qoffset_y", "qoffset_z", "pixdim", "qform_code", "sform_code", "xyzt_units"):
            np.testing.assert_array_equal(header[field], source[field], err_msg=field)


def test_existing_outputs_are_refused_without_overwrite(model_file, tmp_path):
    subject = odd_oblique_subject(tmp_path / "in" / "case7")
    predict(model_file, subject, tmp_path / "out")
    with pytest.raises(InputError, match="already exists"):
        predict(model_file, subject, tmp_path / "out")
    predict(model_file, subject, tmp_path / "out", overwrite=True)


def test_samples_write_std_maps_and_inputs_restrict_the_subset(model_file, tmp_path):
    subject = odd_oblique_subject(tmp_path / "in" / "case7")
    written = predict(model_file, subject, tmp_path / "out", samples=3, inputs="us")
    names = sorted(p.name for p in written)
    assert names == sorted([f"{k}.nii.gz" for k in SMALL.modalities] + [f"{k}_std.nii.gz" for k in SMALL.modalities])
    std = nib.load(str(tmp_path / "out" / "case7" / "t2_std.nii.gz")).get_fdata()
    assert std.max() > 0 and std.min() >= 0
    with pytest.raises(InputError, match="has no"):
        predict(model_file, subject, tmp_path / "out2", inputs="t1c")


def test_an_excluded_modality_does_not_change_the_outputs(model_file, tmp_path):
    loaded = load_model_file(model_file)
    folder = phantom_subject(tmp_path / "s", ("us", "t2", "t1c", "flair"))
    (files,) = discover_subjects(folder)
    prepared = prepare_for_model(load_subject(files, loaded.modalities), loaded)
    altered = prepared.inputs.copy()
    altered[1] = np.random.default_rng(1).uniform(-1, 1, altered[1].shape)  # scramble t2
    subsets = [("us",), ("us", "t1c", "flair")]
    first = synthesise(loaded.model, prepared, subsets, temperature=0.5)
    prepared.inputs = altered
    second = synthesise(loaded.model, prepared, subsets, temperature=0.5)
    for a, b in zip(first, second):
        np.testing.assert_allclose(a.mean, b.mean, atol=1e-5)


def test_batched_subsets_equal_separate_runs_sample_for_sample(model_file, tmp_path):
    loaded = load_model_file(model_file)
    folder = phantom_subject(tmp_path / "s", ("us", "t2", "t1c"))
    (files,) = discover_subjects(folder)
    prepared = prepare_for_model(load_subject(files, loaded.modalities), loaded)
    subsets = [("us",), ("t2",), ("us", "t2", "t1c")]
    for temperature in (0.0, 0.5):  # a slice's noise is its own: not that of its batch, chunking or subsets
        together = synthesise(loaded.model, prepared, subsets, temperature, samples=2, max_rows=5)
        for subset, joint in zip(subsets, together):
            (alone,) = synthesise(loaded.model, prepared, [subset], temperature, samples=2, slice_batch=3)
            # channels-last CPU kernels round differently at other batch sizes; other noise would differ by ~0.1
            np.testing.assert_allclose(joint.mean, alone.mean, atol=2e-4)
            np.testing.assert_allclose(joint.std, alone.std, atol=2e-4)
    other_seed = synthesise(loaded.model, prepared, subsets[:1], 0.5, samples=2, generator_seed=1)[0]
    assert np.abs(other_seed.mean - together[0].mean).max() > 1e-3


def test_all_subsets_writes_one_folder_per_subset_equal_to_its_own_run(model_file, tmp_path):
    folder = phantom_subject(tmp_path / "s", ("us", "t2", "t1c"))
    written = predict(model_file, folder, tmp_path / "all", temperature=0.5, all_subsets=True)
    labels = sorted(p.name for p in (tmp_path / "all" / folder.name).iterdir())
    assert labels == sorted(["us", "t2", "t1c", "us+t2", "us+t1c", "t2+t1c", "us+t2+t1c"])
    assert len(written) == 7 * len(SMALL.modalities)
    for inputs in ("us", "us+t2+t1c"):  # with the ultrasound in, the FOV is the same as in the joint run
        predict(model_file, folder, tmp_path / inputs, temperature=0.5, inputs=inputs.replace("+", ","))
        for key in SMALL.modalities:
            alone = nib.load(str(tmp_path / inputs / folder.name / f"{key}.nii.gz")).get_fdata()
            joint = nib.load(str(tmp_path / "all" / folder.name / inputs / f"{key}.nii.gz")).get_fdata()
            np.testing.assert_allclose(joint, alone, atol=1e-4, err_msg=f"{inputs} -> {key}")


def test_bf16_autocast_stays_close_to_float32(model_file, tmp_path):
    loaded = load_model_file(model_file)
    folder = phantom_subject(tmp_path / "s", ("us", "t2", "t1c"))
    (files,) = discover_subjects(folder)
    prepared = prepare_for_model(load_subject(files, loaded.modalities), loaded)
    subsets = [("us",), ("us", "t2", "t1c")]
    exact = synthesise(loaded.model, prepared, subsets, temperature=0.5)
    fast = synthesise(loaded.model, prepared, subsets, temperature=0.5, precision="bf16")
    for a, b in zip(exact, fast):
        difference = np.abs(a.mean - b.mean)
        assert difference.max() > 0  # the networks did run in bf16
        assert difference.mean() < 0.01 and difference.max() < 0.1  # on the [-1, 1] scale


def test_precision_auto_is_float32_on_cpu_and_unknown_names_are_refused():
    from mmhvae.inference.device import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(InputError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))


def test_model_file_refusals(model_file, tmp_path):
    payload = torch.load(model_file, weights_only=True)
    payload["state_dict"][next(iter(payload["state_dict"]))] += 1
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(InputError, match="checksum"):
        load_model_file(tmp_path / "edited.pt")
    payload = torch.load(model_file, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(InputError, match="format version 99"):
        load_model_file(tmp_path / "future.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a loadable model file"):
        load_model_file(tmp_path / "junk.pt")


def test_untrained_modality_is_ignored_or_refused_with_strict(model_file, tmp_path):
    subject = odd_oblique_subject(tmp_path / "in" / "case7", modalities=("us", "t2", "pd"))
    with pytest.raises(InputError, match="not trained on"):
        predict(model_file, subject, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()
    with pytest.warns(UserWarning, match="ignoring modalities \\['pd'\\]"):
        written = predict(model_file, subject, tmp_path / "lenient")
    assert len(written) == 4


def test_every_bad_input_exits_2_with_one_line_and_writes_nothing(model_file, tmp_path, capsys):
    from cli.test_cli import bad_inputs  # tests/cli/test_cli.py, whichever folders this run collects
    from mmhvae.cli.main import main

    (tmp_path / "cases").mkdir()
    cases = bad_inputs(tmp_path / "cases")
    good = odd_oblique_subject(tmp_path / "mixed" / "a-good-subject")
    bad = tmp_path / "mixed" / "b-bad-subject"
    bad.mkdir()
    (bad / "t2.nii.gz").write_text("not an image")
    cases["a bad subject after a good one"] = (["--data", good.parent], "t2.nii.gz: cannot read as NIfTI")
    for name, (argv, expected) in cases.items():
        if "--modalities" in argv:
            continue  # a flag of `check` only
        out = tmp_path / "out" / name.replace(" ", "-")
        code = main(["predict", "--model", str(model_file), "--input", str(argv[1]), "--out", str(out)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], (name, lines)
        assert not out.exists(), f"{name}: something was written"


def test_inference_does_not_import_lightning():
    # Lightning costs seconds of start-up in every `mmhvae predict` process and inference never needs it.
    code = ("import sys, mmhvae.inference.predict, mmhvae.evaluation.evaluate; "
            "print(any(m.startswith('lightning') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


def test_bad_options_unusable_out_paths_and_warnings_are_one_line_each(model_file, tmp_path, capsys):
    from mmhvae.cli.main import main

    subject = odd_oblique_subject(tmp_path / "in" / "case7")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cases = {"nan temperature": (["--temperature", "nan"], "finite number"),
             "infinite temperature": (["--temperature", "inf"], "finite number"),
             "empty --inputs": (["--inputs", ""], "the modality list is empty"),
             "--out inside a file": (["--out", str(blocker / "out")], str(blocker))}
    for name, (extra, expected) in cases.items():
        out = tmp_path / "out" / name.replace(" ", "-")
        argv = ["predict", "--model", str(model_file), "--input", str(subject), "--out", str(out), *extra]
        code = main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], (name, lines)
        assert not out.exists() and blocker.read_text() == "not a folder", name
    extra = odd_oblique_subject(tmp_path / "pd" / "case8", modalities=("us", "pd"))
    assert main(["predict", "--model", str(model_file), "--input", str(extra), "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        "mmhvae: warning: subject 'case8': ignoring modalities ['pd'] (not in ['us', 't2', 't1c', 'flair'])"]


def test_overwrite_leaves_one_runs_predictions_and_nothing_of_the_user(model_file, tmp_path):
    subject = odd_oblique_subject(tmp_path / "in" / "case7")
    out = tmp_path / "out" / "case7"
    predict(model_file, subject, tmp_path / "out", samples=2)
    (out / "notes.txt").write_text("mine")
    assert len(list(out.glob("*_std.nii.gz"))) == len(SMALL.modalities)
    predict(model_file, subject, tmp_path / "out", overwrite=True)  # one sample: no std maps now
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{k}.nii.gz" for k in SMALL.modalities] + ["notes.txt"])
    predict(model_file, subject, tmp_path / "out", overwrite=True, all_subsets=True, inputs="us,t2")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "t2", "us", "us+t2"]
    predict(model_file, subject, tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{k}.nii.gz" for k in SMALL.modalities] + ["notes.txt"])


MR_ONLY = MMHVAEConfig(modalities=("t1", "t2", "t1c", "flair"), image_size=32, num_pool=3, latent_channels=(2, 4, 4),
                       global_latent=8, base_features=4, max_features=8, decoder_blocks=1)


@pytest.mark.parametrize("spacing", [None, 0.8])
def test_predictions_on_prepared_data_go_back_to_the_original_grid_and_header(non_canonical_subject, tmp_path,
                                                                              spacing):
    """An oblique, non-canonical, odd-sized subject of four MR sequences, prepared (reoriented, cropped, with or
    without resampling), then predicted: every output lies on the original grid with the original header, and
    only where the original images have brain."""
    from mmhvae.preprocessing.real_volumes import PrepareSettings, prepare_data

    torch.manual_seed(0)
    model = save_model_file(tmp_path / "mr.pt", MMHVAE.from_config(MR_ONLY).eval(),
                            PreprocessConfig(modalities=MR_ONLY.modalities, image_size=32))
    source = non_canonical_subject()
    prepare_data(source.parent, tmp_path / "prepared", PrepareSettings(spacing_mm=spacing))
    written = predict(model, tmp_path / "prepared" / "case", tmp_path / "out", inputs="t1,t2", samples=2)
    assert len(written) == 8
    original = nib.load(str(source / "t1.nii.gz"))
    brain = np.asarray(original.dataobj) > 0
    for key in MR_ONLY.modalities:
        for name in (f"{key}.nii.gz", f"{key}_std.nii.gz"):
            output = nib.load(str(tmp_path / "out" / "case" / name))
            assert output.shape == original.shape
            for field in ("srow_x", "srow_y", "srow_z", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                          "qoffset_y", "qoffset_z", "pixdim", "qform_code", "sform_code", "xyzt_units"):
                np.testing.assert_array_equal(output.header[field], original.header[field], err_msg=field)
            values = np.asarray(output.dataobj)
            assert values.any()
            outside = (values != 0) & ~brain
            if spacing is None:  # the way back is exact: the predictions are where the brain is
                assert not outside.any()
            else:  # resampled there and back: at most a rim of one voxel (its 26 neighbours) around the brain
                assert not (outside & ~ndimage.binary_dilation(brain, np.ones((3, 3, 3)))).any()


def test_a_record_that_does_not_describe_the_grid_is_refused(non_canonical_subject, tmp_path):
    from mmhvae.preprocessing.real_volumes import PrepareSettings, prepare_data

    model = save_model_file(tmp_path / "mr.pt", MMHVAE.from_config(MR_ONLY).eval(),
                            PreprocessConfig(modalities=MR_ONLY.modalities, image_size=32))
    prepare_data(non_canonical_subject().parent, tmp_path / "prepared", PrepareSettings(spacing_mm=None))
    record = tmp_path / "prepared" / "case" / "prepared.json"
    other = non_canonical_subject("other")
    record.rename(other / "prepared.json")
    with pytest.raises(InputError, match="not on the grid this record describes"):
        predict(model, other, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_folder_with_none_of_the_models_modalities_is_one_clear_error(model_file, non_canonical_subject, tmp_path):
    folder = non_canonical_subject()
    for key in ("t2", "t1c", "flair"):
        (folder / f"{key}.nii.gz").unlink()
    with pytest.raises(InputError, match=r"have t1 and none of us, t2, t1c, flair \(the modalities of the model\)"):
        predict(model_file, folder.parent, tmp_path / "out")

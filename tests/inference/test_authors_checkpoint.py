"""`mmhvae import-authors`: conversion of the authors' checkpoint, refusals, and predict with the result."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mmhvae.inference.authors_checkpoint import import_authors
from mmhvae.inference.predict import predict, prepare_for_model
from mmhvae.io.layouts import discover_subjects
from mmhvae.io.subjects import load_subject
from mmhvae.model.authors import AuthorsConfig, AuthorsMMHVAE
from mmhvae.model_file import load_model_file
from mmhvae.preprocessing.authors import normalise_input_authors
from mmhvae.preprocessing.intensity import INPUT_PERCENTILE, normalise_input

from conftest import odd_oblique_subject

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "authors-parity"


def run(*args):
    """Run the real console entry point in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "mmhvae.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def paper_shapes() -> dict[str, list[int]]:
    return json.loads((FIXTURE / "fixture.json").read_text())["paper_config_state_dict_shapes"]


@pytest.fixture(scope="module")
def small_config() -> AuthorsConfig:
    return AuthorsConfig.from_authors_arguments(json.loads((FIXTURE / "fixture.json").read_text())["small_config"])


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


def test_import_round_trips_a_paper_state_dict_through_the_cli(paper_shapes, tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=generator) for k, shape in paper_shapes.items()}
    torch.save(state, tmp_path / "CP_main_1000.pth")
    result = run("import-authors", tmp_path / "CP_main_1000.pth", "--out", tmp_path / "authors.pt")
    assert result.returncode == 0, result.stderr
    loaded = load_model_file(tmp_path / "authors.pt")
    assert isinstance(loaded.model, AuthorsMMHVAE) and loaded.variant == "authors"
    assert loaded.modalities == ("us", "t2", "t1c", "flair")
    assert loaded.preprocess.image_size == 192
    assert loaded.recorded_temperature == 0.7
    assert loaded.meta["modality_mapping"] == {"us": "us", "t2": "t2", "cet1": "t1c", "flair": "flair"}
    back = loaded.model.state_dict()
    assert list(back) == list(state)
    for key, tensor in state.items():
        assert torch.equal(back[key], tensor), key
    refused = run("import-authors", tmp_path / "CP_main_1000.pth", "--out", tmp_path / "authors.pt")
    assert refused.returncode == 2 and "already exists" in refused.stderr


def test_bad_checkpoints_exit_2_with_one_line_and_write_nothing(paper_shapes, tmp_path):
    good = {k: torch.zeros(shape) for k, shape in paper_shapes.items()}
    cases = {}
    missing = dict(good)
    del missing["qz.3.se.se.0.bias"]
    cases["missing.pth"] = (missing, "1 missing keys: qz.3.se.se.0.bias")
    cases["extra.pth"] = (good | {"discriminator.weight": torch.zeros(3)}, "1 unexpected keys: discriminator.weight")
    misshaped = dict(good)
    misshaped["td.flair.2.weight"] = torch.zeros(64, 64, 3, 3)
    cases["misshaped.pth"] = (misshaped, "td.flair.2.weight expected (128, 64, 3, 3) found (64, 64, 3, 3)")
    for name, (state, _) in cases.items():
        torch.save(state, tmp_path / name)
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    cases["notes.pth"] = (None, "not a loadable PyTorch checkpoint")
    for name, (_, expected) in cases.items():
        out = tmp_path / "out" / f"{name}.pt"
        result = run("import-authors", tmp_path / name, "--out", out)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and expected in lines[0], (name, result.stderr)
        assert "Traceback" not in result.stderr
        assert not out.exists()
        if out.parent.exists():
            assert leftovers(out.parent) == []


def test_their_input_normalisation():
    volume = np.zeros((10, 10, 4), np.float32)
    volume[2:8, 2:8] = np.linspace(5.0, 100.0, 6 * 6 * 4).reshape(6, 6, 4)
    out = normalise_input_authors(volume)
    foreground = volume > 0
    assert np.all(out[~foreground] == -1.0)
    assert out[foreground].min() == pytest.approx(-255 / 256)
    assert out.max() == pytest.approx(1.0)
    high = np.percentile(volume[foreground], INPUT_PERCENTILE)
    assert np.all(out[volume >= high] == pytest.approx(1.0))
    # their data preparation shifts each volume's minimum to 0 first
    np.testing.assert_allclose(normalise_input_authors(volume - 50.0), out, atol=1e-5)
    # ours maps the foreground minimum to -1 exactly: the two agree within one 8-bit step
    ours = normalise_input(volume)
    assert 0 < np.abs(out - ours).max() <= 1 / 256 + 1e-6


def test_predict_with_an_imported_small_model_keeps_grid_and_header(small_config, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mmhvae")
    model = import_authors(FIXTURE / "small_state_dict.pt", tmp_path / "small.pt", config=small_config)
    subject = odd_oblique_subject(tmp_path / "in" / "case3", shape=(37, 53, 5))
    written = predict(model, subject, tmp_path / "out")
    assert "temperature 0.7" in caplog.text
    assert sorted(p.name for p in written) == sorted(f"{k}.nii.gz" for k in small_config.modalities)
    source = nib.load(str(subject / "us.nii.gz")).header
    for key in small_config.modalities:
        image = nib.load(str(tmp_path / "out" / "case3" / f"{key}.nii.gz"))
        header = image.header
        assert header.get_data_shape() == (37, 53, 5)
        for field in ("srow_x", "srow_y", "srow_z", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                      "qoffset_y", "qoffset_z", "pixdim", "qform_code", "sform_code", "xyzt_units"):
            np.testing.assert_array_equal(header[field], source[field], err_msg=field)
        data = image.get_fdata()
        assert np.isfinite(data).all() and data[:, :, 0].max() == 0 and data.max() > 0


def test_an_authors_model_file_that_does_not_name_its_input_normalisation_still_gets_theirs(small_config, tmp_path):
    """Files written by `import-authors` of earlier versions lack preprocess.input_normalisation."""
    model = import_authors(FIXTURE / "small_state_dict.pt", tmp_path / "small.pt", config=small_config)
    payload = torch.load(model, weights_only=True)
    assert payload["preprocess"]["input_normalisation"] == "authors"  # new imports record it
    del payload["preprocess"]["input_normalisation"]
    torch.save(payload, tmp_path / "earlier.pt")
    earlier = load_model_file(tmp_path / "earlier.pt")
    assert earlier.preprocess.input_normalisation == "authors"
    assert earlier.preprocess == load_model_file(model).preprocess

    subject = odd_oblique_subject(tmp_path / "in" / "case3", shape=(37, 53, 5))
    (files,) = discover_subjects(subject)
    prepared = prepare_for_model(load_subject(files, earlier.modalities), earlier)
    for channel in np.flatnonzero(prepared.present):  # theirs: the foreground minimum one 8-bit step above -1
        values = prepared.inputs[channel]
        assert values[values > -1].min() == pytest.approx(-255 / 256)
    predict(model, subject, tmp_path / "now")
    predict(tmp_path / "earlier.pt", subject, tmp_path / "before")
    for key in small_config.modalities:
        now, before = (nib.load(str(tmp_path / run / "case3" / f"{key}.nii.gz")).get_fdata()
                       for run in ("now", "before"))
        np.testing.assert_array_equal(now, before, err_msg=key)

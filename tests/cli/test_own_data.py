"""Training on your own data from the command line only: any modality set, the BraTS layout and recipe, the clear
error when the data holds none of the modalities a run expects."""

from __future__ import annotations

import nibabel as nib
import pytest
import yaml

from mmhvae.cli.main import main
from mmhvae.config import load_config, names_modalities, with_method
from mmhvae.errors import InputError
from mmhvae.io.layouts import discover_subjects
from mmhvae.model_file import load_model_file
from mmhvae.training.trainer import modalities_to_train

from conftest import make_subject


@pytest.fixture(scope="module")
def t1_pd_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("t1pd") / "data"
    assert main(["simulate", "--out", str(out), "--modalities", "t1,pd", "--missing", "complete", "--subjects", "3",
                 "--size", "32", "--slices", "8"]) == 0
    return out


def test_train_on_a_t1_pd_cohort_from_the_command_line_only(t1_pd_cohort, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(t1_pd_cohort), "--out", str(run), "--config", "tiny", "--max-steps", "2",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"modalities: t1,pd (found in {t1_pd_cohort}; choose others with --modalities)" in out
    assert "mixture: default (the paper's p_alpha anchors one branch on an ultrasound" in out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["modalities"] == ["t1", "pd"] and saved["data"]["modalities"] == ["t1", "pd"]
    assert saved["train"]["mixture"] == "default"
    assert load_model_file(run / "model.pt").modalities == ("t1", "pd")
    assert main(["check", "--data", str(t1_pd_cohort)]) == 0
    assert "r=11 t1+pd" in capsys.readouterr().out


def test_the_flag_chooses_the_modalities_over_the_data(t1_pd_cohort, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(t1_pd_cohort), "--out", str(run), "--config", "tiny", "--max-steps", "1",
                 "--no-progress", "--modalities", "T1W"]) == 0
    assert "modalities: " not in capsys.readouterr().out  # chosen, not found
    assert load_model_file(run / "model.pt").modalities == ("t1",)


def test_no_modality_the_run_knows_is_one_clear_line(t1_pd_cohort, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(t1_pd_cohort), "--out", str(run), "--modalities", "us,t2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mmhvae: error: {t1_pd_cohort}: its subjects have t1, pd and none of us, t2 (from --modalities); "
                   "train on theirs with --modalities t1,pd"]
    config = tmp_path / "mine.yaml"
    config.write_text("base: tiny\nmodel:\n  modalities: [us, t2, t1c, flair]\n")
    assert main(["train", "--data", str(t1_pd_cohort), "--out", str(run), "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of us, t2, t1c, flair (named by the config" in err[0]
    assert "--modalities t1,pd" in err[0] and not (run / "config.yaml").exists()
    assert main(["train", "--data", str(t1_pd_cohort), "--out", str(run), "--modalities", "t1,adc"]) == 2
    assert "unknown modality 'adc'" in capsys.readouterr().err


def test_presets_leave_the_modalities_to_the_data_but_brats_names_its_own():
    for name in ("tiny", "paper", "paper-cpu", "paper-cpu-fp32"):
        assert not names_modalities(name), name
    for name in ("brats", "brats-cpu"):
        brats = load_config(name)
        assert names_modalities(name)
        assert brats.model.modalities == ("t1", "t2", "t1c", "flair") and brats.train.mixture == "default"
        assert brats.model.image_size == 224 and brats.data.image_size == 224  # holds a brain cropped from 240 x 240
    assert load_config("brats-cpu").train.activation_checkpointing == 6


def test_the_brats_path_end_to_end_from_the_command_line(tmp_path, capsys):
    """simulate --layout brats, prepare, train, predict back on the BraTS grid, evaluate --protocol brasyn."""
    brats, prepared, run = tmp_path / "brats", tmp_path / "prepared", tmp_path / "run"
    assert main(["simulate", "--layout", "brats", "--out", str(brats), "--subjects", "3", "--size", "32"]) == 0
    subjects = discover_subjects(brats)
    assert {s.layout for s in subjects} == {"brats"} and set(subjects[0].modalities) == {"t1", "t1c", "t2", "flair"}
    assert main(["prepare", "--data", str(brats), "--out", str(prepared), "--spacing", "keep"]) == 0
    assert main(["train", "--data", str(prepared), "--out", str(run), "--config", "tiny", "--max-steps", "2",
                 "--no-progress"]) == 0
    assert load_model_file(run / "model.pt").modalities == ("t1", "t2", "t1c", "flair")
    name = subjects[0].name
    assert main(["predict", "--model", str(run), "--input", str(prepared / name), "--out", str(tmp_path / "pred"),
                 "--inputs", "t1,t1c,flair"]) == 0
    acquired = nib.load(str(brats / name / f"{name}-t2w.nii.gz"))
    synthesised = nib.load(str(tmp_path / "pred" / name / "t2.nii.gz"))
    assert synthesised.shape == acquired.shape and (synthesised.affine == acquired.affine).all()
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run), "--data", str(prepared), "--out", str(tmp_path / "eval"),
                 "--protocol", "brasyn"]) == 0
    table = (tmp_path / "eval" / "brasyn.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| mmhvae |")]
    assert [r.split("|")[2].strip() for r in rows] == ["t1", "t2", "t1c", "flair", "any"]
    assert all(r.split("|")[4].strip() == "3" for r in rows)  # three subjects in every case
    assert not (tmp_path / "eval" / "metrics.csv").exists()  # the all-subsets table only when asked for


def test_simulate_brats_refuses_an_ultrasound(tmp_path, capsys):
    assert main(["simulate", "--layout", "brats", "--out", str(tmp_path / "b"), "--modalities", "us,t2"]) == 2
    assert "--layout brats has the MR sequences t1, t1c, t2, flair, not us" in capsys.readouterr().err


def test_a_method_with_its_own_modalities_keeps_them(tmp_path):
    """MHVAE is the ultrasound-and-T2 model whatever the data holds; asking it for others is refused."""
    make_subject(tmp_path / "a", ("us", "t2", "flair"))
    run = with_method(load_config("tiny"), "mhvae")
    assert modalities_to_train(run, tmp_path, "tiny", None, resume=False).model.modalities == ("us", "t2")
    assert modalities_to_train(load_config("tiny"), tmp_path, "tiny", None, resume=False).model.modalities == (
        "us", "t2", "flair")
    with pytest.raises(InputError, match="--method mhvae trains us,t2 only"):
        modalities_to_train(run, tmp_path, "tiny", "us,flair", resume=False)

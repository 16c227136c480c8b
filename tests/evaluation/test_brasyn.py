"""The BraSyn protocol: its normalisation, its scores inside the brain, and its table over subjects."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from mmhvae.errors import InputError
from mmhvae.evaluation.brasyn import brasyn_normalise, brasyn_table, evaluate_brasyn, score_case
from mmhvae.model.mmhvae import MMHVAE
from mmhvae.model.mmhvae_config import MMHVAEConfig
from mmhvae.model_file import save_model_file
from mmhvae.preprocessing.prepare import PreprocessConfig

MR = MMHVAEConfig(modalities=("t1", "t2", "t1c", "flair"), image_size=32, num_pool=3, latent_channels=(2, 4, 4),
                  global_latent=8, base_features=4, max_features=8, decoder_blocks=1)


def test_normalisation_clips_to_the_volumes_own_percentiles_and_scales_to_unit_range():
    rng = np.random.default_rng(0)
    volume = np.zeros((20, 20, 20), np.float32)
    volume[5:15, 5:15, 5:15] = rng.uniform(100, 200, (10, 10, 10))
    volume[7, 7, 7] = 10_000  # a hot voxel: clipped, not the scale
    out = brasyn_normalise(volume)
    high = np.percentile(volume, 99.5)
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out[6, 6, 6], min(volume[6, 6, 6], high) / high, rtol=1e-6)  # 0.5th percentile is 0
    np.testing.assert_allclose(brasyn_normalise(volume * 7.3 + 0.0), out, atol=1e-6)  # scale-free
    negative = volume - 50.0
    assert brasyn_normalise(negative).min() == 0.0  # the lower bound is raised to 0
    assert not brasyn_normalise(np.full((4, 4, 4), 3.0)).any()


def test_scores_are_perfect_for_the_truth_and_worse_for_a_distorted_synthesis():
    rng = np.random.default_rng(1)
    shape = (34, 34, 6)
    truth = np.zeros(shape, np.float32)
    truth[2:32, 2:32] = 50 + 50 * rng.random((30, 30, 6))
    brain = truth > 0
    tumour = np.zeros(shape, bool)
    tumour[12:22, 12:22] = True  # 10 voxels across, and 10 of healthy brain around it: room for 7 x 7 windows
    perfect = score_case(truth * 3.0, truth, brain, tumour)  # the same image on another scale
    assert perfect["psnr"] > 100 and perfect["ssim"] == pytest.approx(1.0)  # equal up to float rounding
    assert perfect["ssim_tumour"] == pytest.approx(1.0) and perfect["ssim_healthy"] == pytest.approx(1.0)
    noisy = score_case(truth + rng.normal(0, 10, shape).astype(np.float32) * brain, truth, brain, None)
    assert 5 < noisy["psnr"] < 40 and noisy["ssim"] < 0.9 and math.isnan(noisy["ssim_tumour"])


def test_the_table_averages_over_subjects_and_each_subject_over_its_cases():
    rows = []
    for subject, base in (("a", 20.0), ("b", 24.0)):
        for k, missing in enumerate(("t1", "t2")):
            rows.append({"subject": subject, "method": "mmhvae", "missing": missing, "inputs": "x",
                         "psnr": base + k, "ssim": 0.5, "ssim_tumour": math.nan, "ssim_healthy": 0.4})
    lines = brasyn_table(rows, ("t1", "t2")).splitlines()
    t1, any_row = lines[2].split(" | "), lines[4].split(" | ")
    assert t1[1:5] == ["t1", "x", "2", "22.00 (2.83)"]  # mean (sample sd) of 20 and 24 over the two subjects
    assert any_row[1] == "any" and any_row[4] == "22.50 (2.83)"  # subjects first averaged over their cases
    assert any_row[6] == "-"  # no tumour labels


@pytest.fixture(scope="module")
def mr_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "mr.pt"
    return save_model_file(path, MMHVAE.from_config(MR).eval(), PreprocessConfig(modalities=MR.modalities,
                                                                                 image_size=32))


def test_every_complete_subject_is_scored_once_per_missing_modality(mr_model, non_canonical_subject, tmp_path):
    first = non_canonical_subject("s1")
    non_canonical_subject("s2", seed=1)
    partial = non_canonical_subject("s3", seed=2)
    (partial / "flair.nii.gz").unlink()  # left out: it cannot be scored on every case
    rows = evaluate_brasyn(mr_model, first.parent, tmp_path / "eval", temperature=0.0)
    assert [(r["subject"], r["missing"]) for r in rows] == [(s, m) for s in ("s1", "s2") for m in MR.modalities]
    assert all(r["inputs"] == "+".join(k for k in MR.modalities if k != r["missing"]) for r in rows)
    with open(tmp_path / "eval" / "brasyn.csv") as handle:
        saved = list(csv.DictReader(handle))
    assert len(saved) == 8 and all(math.isfinite(float(r["psnr"])) for r in saved)
    assert all(-1 <= float(r["ssim"]) <= 1 for r in saved)  # an untrained network: any structure
    assert "| mmhvae | any | the others | 2 |" in (tmp_path / "eval" / "brasyn.md").read_text()
    with pytest.raises(InputError, match="already has BraSyn results"):
        evaluate_brasyn(mr_model, first.parent, tmp_path / "eval")
    with pytest.raises(InputError, match="no subject has every modality of the model"):
        evaluate_brasyn(mr_model, partial, tmp_path / "eval2")

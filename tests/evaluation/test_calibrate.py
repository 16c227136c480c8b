"""`mmhvae calibrate` end to end on a small random network: the stored calibration, predict's intervals,
evaluate's uncertainty table, and the refusals (exit 2, one line, nothing written)."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch

from mmhvae.cli.main import main
from mmhvae.evaluation.calibrate import calibrate
from mmhvae.model.baselines.mmgan import MMGANConfig
from mmhvae.model.mmhvae import MMHVAE
from mmhvae.model.mmhvae_config import MMHVAEConfig
from mmhvae.model.registry import build_network
from mmhvae.model_file import load_model_file, save_model_file
from mmhvae.phantom.cohort import simulate_cohort
from mmhvae.preprocessing.prepare import PreprocessConfig

SMALL = MMHVAEConfig(image_size=32, num_pool=3, latent_channels=(2, 4, 4), global_latent=8, base_features=4,
                     max_features=8, decoder_blocks=1)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    torch.manual_seed(0)
    model = save_model_file(root / "model.pt", MMHVAE.from_config(SMALL).eval(),
                            PreprocessConfig(modalities=SMALL.modalities, image_size=32))
    simulate_cohort(root / "cal", subjects=2, size=32, seed=100, missing="complete")
    simulate_cohort(root / "test", subjects=2, size=32, seed=200, missing="complete")
    calibrated = calibrate(model, root / "cal", root / "calibrated.pt", levels=(0.8, 0.9), samples=3)
    return root, model, calibrated


def test_the_calibration_is_stored_with_its_provenance_and_the_weights_are_untouched(cohorts):
    root, model, calibrated = cohorts
    before, after = load_model_file(model), load_model_file(calibrated)
    assert before.calibration is None
    assert set(after.calibration["groups"]) == {f"{m}/{t}" for m in SMALL.modalities
                                                for t in ("harmonisation", "synthesis")}
    assert after.calibration["provenance"]["subjects"] == ["sub-000", "sub-001"]
    assert after.calibration["samples"] == 3 and after.calibration["temperature"] == 0.5
    for a, b in zip(before.model.state_dict().values(), after.model.state_dict().values()):
        assert torch.equal(a, b)
    payload = torch.load(calibrated, weights_only=True)
    payload["calibration"]["groups"]["t2/synthesis"]["quantiles"]["0.9"] *= 2
    torch.save(payload, root / "edited.pt")
    with pytest.raises(Exception, match="calibration does not match its checksum"):
        load_model_file(root / "edited.pt")


def test_predict_writes_the_interval_around_the_mean_and_a_calibrated_sd(cohorts, tmp_path):
    root, model, calibrated = cohorts
    assert main(["predict", "--model", str(calibrated), "--input", str(root / "test" / "sub-000"),
                 "--out", str(tmp_path / "out"), "--samples", "3", "--inputs", "us", "--level", "0.8"]) == 0
    folder = tmp_path / "out" / "sub-000"
    mean, low, high = (nib.load(str(folder / f"t2{t}.nii.gz")).get_fdata() for t in ("", "_lo", "_hi"))
    inside = mean != 0
    assert np.all(low[inside] <= mean[inside]) and np.all(high[inside] >= mean[inside])
    assert (high - low)[inside].mean() > 0
    assert main(["predict", "--model", str(model), "--input", str(root / "test" / "sub-000"),
                 "--out", str(tmp_path / "raw"), "--samples", "3"]) == 0
    assert not (tmp_path / "raw" / "sub-000" / "t2_lo.nii.gz").exists()  # uncalibrated: no interval


def test_evaluate_with_samples_scores_coverage_width_and_ranking(cohorts, tmp_path):
    root, _, calibrated = cohorts
    assert main(["evaluate", "--model", str(calibrated), "--data", str(root / "test"), "--out", str(tmp_path),
                 "--samples", "3", "--no-lpips"]) == 0
    text = (tmp_path / "table.md").read_text()
    assert "## Uncertainty of the samples" in text and "AUSE" in text
    lines = (tmp_path / "uncertainty.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 15 * 4  # subjects x subsets x targets
    assert "coverage" in lines[0]


@pytest.mark.parametrize("extra, expected", [
    (["--samples", "1"], "--samples must be at least 2"),
    (["--levels", "1.5"], "--level must lie between 0 and 1"),
    (["--data", "MISSING"], "no calibration subject has a target for flair"),
])
def test_bad_calibration_input_exits_2_with_one_line_and_writes_nothing(cohorts, tmp_path, capsys, extra,
                                                                        expected):
    root, model, _ = cohorts
    data = root / "cal"
    if "MISSING" in extra:  # subjects without FLAIR: no target to calibrate its synthesis on
        data = tmp_path / "no-flair"
        simulate_cohort(data, subjects=1, size=32, seed=300, missing="complete",
                        modalities=("us", "t2", "t1c"))
        extra = []
    out = tmp_path / "out.pt"
    code = main(["calibrate", "--model", str(model), "--data", str(data), "--out", str(out), *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert not out.exists()


def test_too_few_voxels_are_refused(cohorts, tmp_path, monkeypatch, capsys):
    root, model, _ = cohorts
    monkeypatch.setattr("mmhvae.inference.calibration.MIN_VOXELS", 10**9)
    code = main(["calibrate", "--model", str(model), "--data", str(root / "cal"), "--out", str(tmp_path / "o.pt"),
                 "--samples", "2"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "calibration voxels" in lines[0], lines
    assert not (tmp_path / "o.pt").exists()


def test_each_input_subset_gets_its_own_scale(cohorts):
    _, _, calibrated = cohorts
    subsets = load_model_file(calibrated).calibration["subsets"]
    assert len(subsets) == 15 * 4  # every non-empty subset x target of complete calibration subjects
    assert subsets["t2/us"]["quantiles"]["0.9"] != subsets["t2/us+t1c+flair"]["quantiles"]["0.9"]


def test_a_network_that_draws_no_samples_is_refused(cohorts, tmp_path, capsys):
    root, _, _ = cohorts
    config = MMGANConfig(modalities=SMALL.modalities, image_size=32, channels=(4, 8, 8), num_res_units=0)
    baseline = save_model_file(tmp_path / "mmgan.pt", build_network(config.to_dict()).eval(),
                               PreprocessConfig(modalities=SMALL.modalities, image_size=32))
    out = tmp_path / "out.pt"
    code = main(["calibrate", "--model", str(baseline), "--data", str(root / "cal"), "--out", str(out),
                 "--samples", "2"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "this network draws no samples" in lines[0], lines
    assert str(baseline) in lines[0] and not out.exists()


def test_the_uncertainty_analysis_draws_reliability_and_sparsification(cohorts, tmp_path):
    root, _, calibrated = cohorts
    assert main(["analyse", "uncertainty", "--model", str(calibrated), "--data", str(root / "test"),
                 "--out", str(tmp_path), "--samples", "3"]) == 0
    for name in ("uncertainty_reliability.png", "uncertainty_sparsification.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    rows = list(csv.DictReader(open(tmp_path / "uncertainty_coverage.csv")))
    levels = sorted({float(r["level"]) for r in rows})
    assert levels == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
    assert len(rows) == 2 * 15 * 4 * len(levels)
    # coverage grows with the level, subject by subject and subset by subset
    by_curve: dict[tuple, list[tuple[float, float]]] = {}
    for r in rows:
        by_curve.setdefault((r["subject"], r["inputs"], r["target"]), []).append(
            (float(r["level"]), float(r["coverage"])))
    for points in by_curve.values():
        coverages = [c for _, c in sorted(points)]
        assert coverages == sorted(coverages)
    curves = list(csv.DictReader(open(tmp_path / "uncertainty_sparsification.csv")))
    assert all(float(r["oracle"]) <= float(r["by_sd"]) + 1e-9 for r in curves)  # the oracle is a lower bound
    text = (tmp_path / "uncertainty.md").read_text()
    assert "Coverage at 0.9 per input subset" in text and "AUSE" in text
    code = main(["analyse", "uncertainty", "--model", str(calibrated), "--data", str(root / "test"),
                 "--out", str(tmp_path), "--samples", "3"])
    assert code == 2  # an earlier analysis is kept

"""The Section 6 analyses on a 2-subject phantom cohort with the shipped demo model: latent alignment (Fig. 4)
and samples against temperature (Fig. 5)."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from mmhvae.errors import InputError
from mmhvae.evaluation.scoring import evaluate_subject, prepared_for_evaluation
from mmhvae.experiments.analyses.latent import analyse_latent
from mmhvae.experiments.analyses.temperature import analyse_temperature
from mmhvae.io.layouts import discover_subjects
from mmhvae.model.baselines.m2dn import M2DN, M2DNConfig
from mmhvae.model.baselines.mmgan import MMGAN, MMGANConfig
from mmhvae.model.baselines.resvit import ResViT, ResViTConfig
from mmhvae.model_file import load_model_file, save_model_file
from mmhvae.phantom.cohort import simulate_cohort
from mmhvae.preprocessing.prepare import PreprocessConfig
from network_inputs import tiny_config

MODEL = Path(__file__).resolve().parents[2] / "models" / "phantom-tiny.pt"
FULL = "us+t2+t1c+flair"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Two complete phantom subjects on the demo model's 64x64 grid; 8 slices keep the module fast."""
    out = tmp_path_factory.mktemp("analyse") / "cohort"
    simulate_cohort(out, subjects=2, missing="complete", size=64, slices=8, seed=4_242)
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def without(subject: Path, destination: Path, modality: str) -> Path:
    """A copy of a subject folder without one modality (image and harmonised target)."""
    return Path(shutil.copytree(subject, destination, ignore=shutil.ignore_patterns(f"{modality}.nii.gz")))


def test_latent_analysis_writes_figure_and_similarities(cohort, tmp_path):
    result = analyse_latent(MODEL, cohort, tmp_path / "latent", slices=3)
    for path in result.files:
        assert path.is_file() and path.stat().st_size > 0
    picture = matplotlib.image.imread(tmp_path / "latent" / "latent_pca.png")
    assert picture.ndim == 3 and np.isfinite(picture).all()

    rows = read_csv(tmp_path / "latent" / "latent_similarity.csv")
    assert len(rows) == 15 and {r["reference"] for r in rows} == {FULL}
    singles = {r["inputs"] for r in rows if r["modalities"] == "1"}
    assert singles == {"us", "t2", "t1c", "flair"}
    for r in rows:
        for name in ("cosine_mean", "cosine_sd", "linear_cka"):
            assert math.isfinite(float(r[name]))
        assert 0.0 <= float(r["linear_cka"]) <= 1.0
        assert -1.0 <= float(r["cosine_mean"]) <= 1.0 + 1e-12
    full = next(r for r in rows if r["inputs"] == FULL)
    assert float(full["cosine_mean"]) == pytest.approx(1.0, abs=1e-9)
    assert float(full["linear_cka"]) == pytest.approx(1.0, abs=1e-9)
    markdown = (tmp_path / "latent" / "latent.md").read_text()
    assert "PC1" in markdown and f"| us | {FULL} |" in markdown and "nan" not in markdown

    with pytest.raises(InputError, match="already has this analysis"):
        analyse_latent(MODEL, cohort, tmp_path / "latent", slices=3)


def test_latent_analysis_refuses_bad_input(cohort, tmp_path):
    with pytest.raises(InputError, match="no subject 'nobody'"):
        analyse_latent(MODEL, cohort, tmp_path / "a", subject="nobody")
    with pytest.raises(InputError, match="at least 1"):
        analyse_latent(MODEL, cohort, tmp_path / "a", slices=0)
    lonely = tmp_path / "lonely" / "sub-009"
    lonely.mkdir(parents=True)
    shutil.copy(cohort / "sub-000" / "us.nii.gz", lonely / "us.nii.gz")
    with pytest.raises(InputError, match="at least two") as caught:
        analyse_latent(MODEL, lonely.parent, tmp_path / "a")
    assert caught.value.path == lonely
    for network in (MMGAN(MMGANConfig.like(tiny_config())),
                    ResViT(ResViTConfig.like(tiny_config(), transformer_layers=1)),
                    M2DN(M2DNConfig.like(tiny_config()))):
        gan = save_model_file(tmp_path / "gan.pt", network, PreprocessConfig(image_size=64))
        with pytest.raises(InputError, match=f"need an MMHVAE model .*the {network.config.variant} baseline"):
            analyse_latent(gan, cohort, tmp_path / "a")
        with pytest.raises(InputError, match="need an MMHVAE model"):
            analyse_temperature(gan, cohort, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_temperature_analysis_with_lpips(cohort, tmp_path):
    result = analyse_temperature(MODEL, cohort, tmp_path / "temp", with_lpips=True, samples=2)
    for path in result.files:
        assert path.is_file() and path.stat().st_size > 0
    summary = read_csv(tmp_path / "temp" / "temperature_summary.csv")
    assert [(r["target"], float(r["temperature"])) for r in summary] == [
        (t, x) for t in ("t2", "t1c") for x in (0.0, 0.25, 0.5, 0.75, 1.0)]
    for r in summary:
        assert r["inputs"] == "us" and r["subjects"] == "2"
        for name in ("psnr_mean", "ssim_mean", "lpips_mean", "psnr_sd", "ssim_sd", "lpips_sd"):
            assert math.isfinite(float(r[name])), (name, r)
    per_slice = read_csv(tmp_path / "temp" / "temperature_metrics.csv")
    assert len(per_slice) == sum(int(r["slices"]) for r in summary)
    assert all(math.isfinite(float(r["lpips"])) for r in per_slice)
    markdown = (tmp_path / "temp" / "temperature.md").read_text()
    assert "| us -> t1c | 0.5 | 2 |" in markdown and "nan" not in markdown
    # at T = 0 every sample is the posterior mean: no spread between the figure's samples
    spread_t2 = next(line for line in markdown.splitlines() if line.startswith("| us -> t2 | 0.000 |"))
    assert float(spread_t2.split("|")[-2]) > 0  # ... and some at T = 1


def test_temperature_zero_is_deterministic_and_scored_as_evaluate(cohort, tmp_path):
    runs = [analyse_temperature(MODEL, cohort, tmp_path / f"run{i}", temperatures=(0,), pairs=[("us", "t2")],
                                with_lpips=False, samples=1) for i in range(2)]
    assert runs[0].rows[0]["psnr_mean"] == runs[1].rows[0]["psnr_mean"]
    first, second = (read_csv(tmp_path / f"run{i}" / "temperature_metrics.csv") for i in range(2))
    assert first == second

    # the same scores as `mmhvae evaluate` gives for us -> t2 at temperature 0
    loaded = load_model_file(MODEL)
    files = discover_subjects(cohort)[0]
    rows, _ = evaluate_subject(loaded, prepared_for_evaluation(files, loaded), subsets=[("us",)], temperature=0.0)
    expected = [r["psnr"] for r in rows if r["target"] == "t2"]
    assert [float(r["psnr"]) for r in first if r["subject"] == files.name] == pytest.approx(expected, rel=1e-12)


def test_temperature_analysis_refuses_bad_input(cohort, tmp_path):
    out = tmp_path / "temp"
    for bad in ((-0.5,), (float("nan"),), (), ("hot",)):
        with pytest.raises(InputError, match="temperature"):
            analyse_temperature(MODEL, cohort, out, temperatures=bad, with_lpips=False)
    with pytest.raises(InputError, match="no subject 'nobody'"):
        analyse_temperature(MODEL, cohort, out, subject="nobody", with_lpips=False)
    with pytest.raises(InputError, match="unknown modality"):
        analyse_temperature(MODEL, cohort, out, pairs=[("us", "ct")], with_lpips=False)
    with pytest.raises(InputError, match="the model has no"):
        analyse_temperature(MODEL, cohort, out, pairs=[("us", "pd")], with_lpips=False)
    mixed = tmp_path / "mixed"
    shutil.copytree(cohort / "sub-000", mixed / "sub-000")
    without(cohort / "sub-001", mixed / "sub-001", "t1c")
    with pytest.raises(InputError, match="lacks a modality of us -> t1c") as caught:
        analyse_temperature(MODEL, mixed, out, subject="sub-001", with_lpips=False)
    assert caught.value.path == mixed / "sub-001"
    assert not out.exists()


def test_the_uncertainty_page_sentence_follows_its_numbers():
    from mmhvae.experiments.analyses.uncertainty import coverage_sentence

    text = coverage_sentence({("t2", "synthesis"): 0.905, ("us", "synthesis"): 0.942,
                              ("t2", "harmonisation"): 0.875}, calibrated=True)
    assert "cover 0.875 to 0.942" in text and "1 of 3 lie within 0.02" in text
    assert "outside: t2 harmonisation 0.875, us synthesis 0.942" in text

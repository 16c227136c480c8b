"""Evaluation: every input subset x target, harmonisation vs synthesis, the mean-image floor, the table."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from mmhvae.errors import InputError
from mmhvae.evaluation.evaluate import evaluate
from mmhvae.evaluation.scoring import mean_images
from mmhvae.io.layouts import discover_subjects
from mmhvae.modalities import non_empty_subsets
from mmhvae.model.mmhvae import MMHVAE
from mmhvae.model.mmhvae_config import MMHVAEConfig
from mmhvae.model_file import save_model_file
from mmhvae.preprocessing.prepare import PreprocessConfig, load_prepared

from conftest import small_cohort

SMALL = MMHVAEConfig(image_size=32, num_pool=3, latent_channels=(2, 4, 4), global_latent=8, base_features=4,
                     max_features=8, decoder_blocks=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    model = save_model_file(root / "model.pt", MMHVAE.from_config(SMALL).eval(),
                            PreprocessConfig(modalities=SMALL.modalities, image_size=32))
    return model, small_cohort(root / "data")


def test_every_subset_and_target_is_scored(setup, tmp_path):
    model, data = setup
    rows = evaluate(model, data, tmp_path / "eval", with_lpips=False, mean_image_from=data)
    with open(tmp_path / "eval" / "metrics.csv") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == len(rows) > 0
    complete = [r for r in rows if r["subject"] == "sub00" and r["method"] == "mmhvae"]
    assert {r["inputs"] for r in complete} == {"+".join(s) for s in non_empty_subsets(("us", "t2", "t1c", "flair"))}
    assert {r["target"] for r in complete} == {"us", "t2", "t1c", "flair"}
    for r in rows:
        assert (r["task"] == "harmonisation") == (r["target"] in r["inputs"].split("+"))
        assert np.isfinite(r["psnr"]) and np.isfinite(r["ssim"])
    # subjects missing a modality have no rows with it as target or input
    only_us = [r for r in rows if r["subject"] == "sub04"]
    assert {r["inputs"] for r in only_us} == {"us"} and {r["target"] for r in only_us} == {"us"}
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "| mmhvae | us+t2+t1c+flair |" in table and "| mean-image | us |" in table and "nan" not in table
    with pytest.raises(InputError, match="already has results"):
        evaluate(model, data, tmp_path / "eval", with_lpips=False)


def test_mean_image_is_the_average_of_observed_training_slices(setup):
    _, data = setup
    config = PreprocessConfig(image_size=32)
    subjects = [load_prepared(f, config) for f in discover_subjects(data)]
    mean = mean_images(subjects, config.modalities)
    flair = [s for s in subjects if s.present[3]]
    expected = np.mean([s.targets[3][..., k] for s in flair for k in s.slices], axis=0)
    np.testing.assert_allclose(mean[3], expected, atol=1e-5)


def synthetic_rows(shift_b: float, seed: int = 0, n: int = 48, subjects: int = 12):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        base = rng.normal(25, 2)
        for method, shift in (("a", 0.0), ("b", shift_b), ("c", -1.0)):
            rows.append({"subject": f"s{i % subjects}", "slice": i, "method": method, "inputs": "us", "target": "t2",
                         "task": "synthesis", "psnr": base + shift + rng.normal(0, 0.1),
                         "ssim": 0.8 + 0.01 * shift, "lpips": 0.2 - 0.01 * shift})
    return rows


def test_bold_marks_a_method_significantly_better_than_all_others():
    from mmhvae.evaluation.statistics import significantly_best
    from mmhvae.evaluation.tables import markdown_table

    rows = synthetic_rows(shift_b=1.0)
    assert significantly_best(rows, "psnr") == {("b", "us", "t2")}
    assert significantly_best(rows, "lpips") == {("b", "us", "t2")}  # lower is better
    table = markdown_table(rows, ["us", "t2"])
    assert table.count("**") == 4  # PSNR and SSIM of method b
    # a difference within the noise is not significant: nobody is bold
    assert significantly_best(synthetic_rows(shift_b=0.01), "psnr") == set()


def test_with_too_few_subjects_nothing_is_bold_and_the_caption_says_why():
    from mmhvae.evaluation.statistics import significantly_best
    from mmhvae.evaluation.tables import markdown_table

    # 4 subjects, 40 slices: the old slice-level test called this significant; over subjects the smallest
    # two-sided p is 2/2^4 = 0.125
    rows = synthetic_rows(shift_b=1.0, n=40, subjects=4)
    assert significantly_best(rows, "psnr") == set()
    table = markdown_table(rows, ["us", "t2"])
    assert "**" not in table and "With 4 subjects, the smallest p" in table and "0.12" in table


def test_several_models_are_compared_in_one_table_under_their_method_names(setup, tmp_path):
    model, data = setup
    torch.manual_seed(1)
    mopoe = save_model_file(tmp_path / "mopoe.pt", MMHVAE.from_config(
        MMHVAEConfig(**{**SMALL.to_dict(), "num_latent_levels": 1})).eval(),
        PreprocessConfig(modalities=SMALL.modalities, image_size=32), meta={"method": "mopoe"})
    rows = evaluate([model, mopoe], data, tmp_path / "eval", with_lpips=False, mean_image_from=data)
    assert {r["method"] for r in rows} == {"mmhvae", "mopoe", "mean-image"}
    by_method = {m: {(r["subject"], r["slice"], r["inputs"], r["target"]) for r in rows if r["method"] == m}
                 for m in ("mmhvae", "mopoe")}
    assert by_method["mmhvae"] == by_method["mopoe"]  # paired: the same slices, subsets and targets
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "| mopoe | us+t2+t1c+flair |" in table and "## mopoe: subject-averaged" in table
    wider = save_model_file(tmp_path / "wider.pt", MMHVAE.from_config(MMHVAEConfig(**{**SMALL.to_dict(),
                            "image_size": 64, "num_pool": 3})).eval(),
                            PreprocessConfig(modalities=SMALL.modalities, image_size=64))
    with pytest.raises(InputError, match=r"the modalities \(or some of them\) and the preprocessing"):
        evaluate([model, wider], data, tmp_path / "other", with_lpips=False)


def test_floor_comparison_gives_each_subject_one_vote_and_the_standard_error_over_subjects():
    from mmhvae.evaluation.statistics import standard_error, subject_means
    from mmhvae.evaluation.tables import floor_comparison

    def row(subject, method, ssim, psnr, slice_index=0):
        return {"subject": subject, "slice": slice_index, "method": method, "inputs": "us", "target": "t2",
                "task": "synthesis", "psnr": psnr, "ssim": ssim, "lpips": float("nan")}

    # subject a has three slices, subject b one: the mean is over subjects (0.85), not over slices (0.825)
    rows = [row("a", "mmhvae", 0.8, 20.0, i) for i in range(3)] + [row("b", "mmhvae", 0.9, 22.0)]
    rows += [row(s, "mean-image", 0.3, 15.0) for s in ("a", "b")]
    entry = subject_means(rows)[("mmhvae", "us", "t2")]
    assert entry["ssim"] == pytest.approx(0.85)
    assert entry["ssim_se"] == pytest.approx(np.std([0.8, 0.9], ddof=1) / np.sqrt(2))  # 0.05
    assert "| us | t2 | synthesis | 2 | 21.00 | 0.850 | 0.050 | 15.00 | +6.00 |" in floor_comparison(rows)
    assert np.isnan(standard_error([0.9]))  # one subject: no spread to speak of, shown as "-"
    assert "| 1 | 20.00 | 0.800 | - |" in floor_comparison([r for r in rows if r["subject"] == "a"])


def test_samples_score_the_mean_of_several_draws_and_the_table_says_so(setup, tmp_path):
    from mmhvae.cli.main import main

    model, data = setup
    one = evaluate(model, data, tmp_path / "t0-one", with_lpips=False, temperature=0.0)
    three = evaluate(model, data, tmp_path / "t0-three", with_lpips=False, temperature=0.0, samples=3)
    # at temperature 0 every draw is the posterior mean: the mean of three is the one (up to float rounding,
    # which differs between batch sizes)
    assert [r["ssim"] for r in three] == pytest.approx([r["ssim"] for r in one], abs=1e-5)
    noisy_one = evaluate(model, data, tmp_path / "t1-one", with_lpips=False, temperature=1.0)
    noisy_three = evaluate(model, data, tmp_path / "t1-three", with_lpips=False, temperature=1.0, samples=3)
    assert [r["psnr"] for r in noisy_three] != pytest.approx([r["psnr"] for r in noisy_one], abs=1e-3)
    assert (tmp_path / "t1-three" / "table.md").read_text().startswith(
        "Predictions at temperature 1, the mean of 3 samples each.")
    assert (tmp_path / "t0-one" / "table.md").read_text().startswith("Predictions at temperature 0, one sample each.")
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "bad"),
                 "--samples", "0"]) == 2
    assert not (tmp_path / "bad").exists()


def test_a_bad_subject_is_refused_before_any_subject_is_scored(setup, tmp_path, capsys):
    import shutil

    from mmhvae.cli.main import main

    model, data = setup
    shutil.copytree(data / "sub00", tmp_path / "data" / "sub00")
    bad = tmp_path / "data" / "sub99"
    bad.mkdir()
    (bad / "t2.nii.gz").write_text("not an image")
    code = main(["evaluate", "--model", str(model), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                 "--no-lpips"])
    captured = capsys.readouterr()
    assert code == 2 and "t2.nii.gz: cannot read as NIfTI" in captured.err
    assert "slice scores" not in captured.out  # nothing was scored first
    assert not (tmp_path / "o").exists()
    shutil.rmtree(bad)
    shutil.copytree(data / "sub01", tmp_path / "data" / "sub01")
    assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                 "--no-lpips"]) == 0
    assert "note: 1 of 2 subjects (sub01) have no targets/ folder" in capsys.readouterr().out


def test_models_with_other_input_normalisations_share_a_table_but_not_other_preprocessing():
    import dataclasses

    from mmhvae.evaluation.scoring import same_targets
    from mmhvae.preprocessing.prepare import PreprocessConfig

    ours = PreprocessConfig(image_size=64)
    assert same_targets(dataclasses.replace(ours, input_normalisation="authors"), ours)
    assert not same_targets(dataclasses.replace(ours, input_percentile=99.0), ours)
    assert not same_targets(dataclasses.replace(ours, image_size=32), ours)


def test_seeds_of_a_method_are_pooled_and_a_two_modality_model_is_scored_on_its_pair(setup, tmp_path):
    model, data = setup
    torch.manual_seed(2)
    again = save_model_file(tmp_path / "seed1.pt", MMHVAE.from_config(SMALL).eval(),
                            PreprocessConfig(modalities=SMALL.modalities, image_size=32),
                            meta={"method": "mmhvae", "config": {"train": {"seed": 1}}})
    pair = MMHVAEConfig(**{**SMALL.to_dict(), "modalities": ("us", "t2")})
    mhvae = save_model_file(tmp_path / "mhvae.pt", MMHVAE.from_config(pair).eval(),
                            PreprocessConfig(modalities=("us", "t2"), image_size=32), meta={"method": "mhvae"})
    rows = evaluate([model, again, mhvae], data, tmp_path / "eval", with_lpips=False)
    assert {(r["method"], r["seed"]) for r in rows} == {("mmhvae", 0), ("mmhvae", 1), ("mhvae", 0)}
    pair_rows = [r for r in rows if r["method"] == "mhvae"]
    assert {r["target"] for r in pair_rows} == {"us", "t2"} and {r["inputs"] for r in pair_rows} <= {
        "us", "t2", "us+t2"}
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "| mhvae | us |" in table and "| mhvae | t1c |" not in table
    assert "Left out: mhvae" in table  # pooled summaries need the same cells
    assert "2 training seeds" in table

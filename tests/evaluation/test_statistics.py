"""Subject-level paired statistics: the unit, the corrections, the bootstrap interval, seeds and claims."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wilcoxon

from mmhvae.evaluation.statistics import (
    SIGNIFICANCE_LEVEL,
    Comparison,
    Scores,
    bootstrap_ci,
    can_reach,
    cell_scores,
    compare,
    corrected,
    paired_p_value,
    significantly_best,
    significantly_lowest,
    smallest_attainable_p,
)
from mmhvae.evaluation.tables import markdown_lines, paired_differences, verdict


def rows_for(values: dict[str, dict[str, list[float]]], seed: int = 0) -> list[dict]:
    """Long-table rows: method -> subject -> the values of its slices."""
    return [{"subject": subject, "slice": k, "method": method, "seed": seed, "inputs": "us", "target": "t2",
             "task": "synthesis", "psnr": v, "ssim": 0.5, "lpips": 0.1}
            for method, subjects in values.items() for subject, slices in subjects.items()
            for k, v in enumerate(slices)]


def test_the_unit_is_the_subject_the_p_value_is_the_exact_one_for_n_subjects():
    # 8 subjects, b above a in every one: the exact two-sided signed-rank p is 2 / 2^8, however many slices
    rng = np.random.default_rng(0)
    for slices in (1, 50):
        values = {"a": {}, "b": {}}
        for i in range(8):
            base = rng.normal(25, 2, slices)
            values["a"][f"s{i}"] = list(base)
            values["b"][f"s{i}"] = list(base + 0.1 * (i + 1))
        scores = cell_scores(rows_for(values), "psnr", ("inputs", "target"))[("us", "t2")]
        c = compare("b", scores["b"], "a", scores["a"])
        assert c.subjects == 8 and c.p == pytest.approx(2 / 2**8) == pytest.approx(smallest_attainable_p(8))
    assert paired_p_value([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0  # nothing differs: no evidence
    a, b = rng.normal(size=12), rng.normal(size=12) + 0.5
    assert paired_p_value(a, b) == pytest.approx(wilcoxon(a, b, zero_method="wilcox").pvalue)


def test_holm_and_bonferroni_adjust_in_their_order():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005 x 4, 0.01 x 3, 0.03 x 2, 0.04 x 1, made monotone
    assert corrected(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert corrected(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert corrected([0.5, 0.9], "bonferroni") == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        corrected(p, "sidak")


def test_the_bootstrap_interval_covers_a_known_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    for replication in range(200):
        differences = 0.5 + rng.normal(0, 1, 16)
        low, high = bootstrap_ci(differences, resamples=2000, seed=replication)
        assert low < differences.mean() < high
        covered += low <= 0.5 <= high
    assert 0.88 <= covered / 200 <= 0.99
    assert np.isnan(bootstrap_ci([0.3])).all()  # one subject has no interval
    assert bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)


def test_too_few_subjects_cannot_reach_the_level():
    assert not can_reach(8, comparisons=7, alpha=0.01)  # 7 x 2/256 = 0.055
    assert can_reach(16, comparisons=7, alpha=0.01)
    assert not can_reach(4, comparisons=1, alpha=0.05)  # 0.125


def test_bold_needs_a_win_against_every_method_after_correction():
    rng = np.random.default_rng(2)
    values = {m: {} for m in "abc"}
    for i in range(12):
        base = rng.normal(25, 2)
        values["a"][f"s{i}"] = [base]
        values["b"][f"s{i}"] = [base + 1.0 + rng.normal(0, 0.1)]
        values["c"][f"s{i}"] = [base + 1.0 + rng.normal(0, 0.1)]  # b and c tie: neither is best
    assert significantly_best(rows_for(values), "psnr") == set()
    del values["c"]
    assert significantly_best(rows_for(values), "psnr") == {("b", "us", "t2")}
    errors = {"x": {f"s{i}": 5.0 + i for i in range(10)}, "y": {f"s{i}": 3.0 + i + 0.01 * i for i in range(10)}}
    assert significantly_lowest(errors, alpha=0.05) == "y"
    assert significantly_lowest({"y": errors["y"]}, alpha=0.05) is None


def test_seeds_are_averaged_per_subject_and_their_spread_is_kept():
    scores = Scores({0: {"s1": 10.0, "s2": 12.0}, 1: {"s1": 11.0, "s2": 13.0, "s3": 50.0}})
    assert scores.subjects == ["s1", "s2"]  # s3 lacks seed 0
    assert scores.per_subject() == {"s1": 10.5, "s2": 12.5}
    assert scores.mean == pytest.approx(11.5) and scores.sd == pytest.approx(np.sqrt(2))
    assert scores.seed_sd == pytest.approx(np.std([11.0, 12.0], ddof=1))


def test_a_claim_needs_a_ci_without_zero_a_corrected_test_and_a_difference_beyond_the_seed_spread():
    base = dict(first="a", second="b", subjects=16, seeds=3, p=0.001, p_corrected=0.002)
    assert verdict(Comparison(**base, difference=0.5, ci=(0.3, 0.7), seed_sd=0.1), "psnr") == "a better"
    assert verdict(Comparison(**base, difference=0.5, ci=(0.3, 0.7), seed_sd=0.1), "lpips") == "a worse"
    assert verdict(Comparison(**base, difference=0.5, ci=(0.3, 0.7), seed_sd=0.6), "psnr").startswith("no claim")
    assert verdict(Comparison(**base, difference=0.5, ci=(-0.1, 0.7), seed_sd=0.1), "psnr").startswith("no claim")
    not_significant = {**base, "p_corrected": 0.03}
    assert "not significant" in verdict(Comparison(**not_significant, difference=0.5, ci=(0.3, 0.7), seed_sd=0.1),
                                        "psnr")
    one_seed = {**base, "seeds": 1}
    assert "one training seed" in verdict(Comparison(**one_seed, difference=0.5, ci=(0.3, 0.7),
                                                     seed_sd=float("nan")), "psnr")


def test_the_paired_differences_table_pools_a_task_per_subject():
    rng = np.random.default_rng(3)
    rows = []
    for seed in range(3):
        values = {"mmhvae": {}, "other": {}}
        for i in range(10):
            base = rng.normal(25, 2)
            values["mmhvae"][f"s{i}"] = [base + 1.0, base + 1.2]
            values["other"][f"s{i}"] = [base, base + 0.1]
        rows += rows_for(values, seed)
    table = paired_differences(rows, "mmhvae", ("psnr",))
    assert "| synthesis | PSNR | other | +1.05 |" in table and "mmhvae better" in table
    assert f"corrected p < {SIGNIFICANCE_LEVEL:g}" in table  # the caption states every condition a verdict applies


def test_one_markdown_writer():
    assert markdown_lines(["a", "b"], [[1, 2]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]

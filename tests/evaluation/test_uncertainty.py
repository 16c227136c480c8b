"""Uncertainty scores (evaluation/uncertainty.py): sparsification, AUSE and the subject-level summary."""

from __future__ import annotations

import numpy as np

from mmhvae.evaluation.uncertainty import ause, sparsification_curve, subject_summary, uncertainty_table


def test_an_sd_that_ranks_like_the_error_has_zero_ause_and_a_random_one_does_not():
    rng = np.random.default_rng(0)
    error = np.abs(rng.normal(size=5000))
    assert ause(error, error * 3.0) == 0.0  # any increasing function of the error ranks perfectly
    random = ause(error, rng.uniform(size=error.size))
    assert 0.3 < random < 0.8
    curve = sparsification_curve(error, error)
    assert abs(curve[0] - error.mean()) < 1e-12 and np.all(np.diff(curve) <= 1e-12)


def test_the_summary_is_over_subjects_not_rows():
    rows = [{"subject": s, "method": "m", "seed": 0, "inputs": i, "target": "t2", "task": "synthesis",
             "coverage": c, "width": 0.1, "raw_coverage": 0.1, "raw_width": 0.01, "spearman": 0.3, "ause": 0.4}
            for s, cs in (("a", (0.8, 1.0)), ("b", (0.9, 0.9)), ("c", (0.85, 0.95))) for i, c in zip(("us", "t1c"), cs)]
    mean, sd, n = subject_summary(rows)[("m", "t2", "synthesis")]["coverage"]
    assert n == 3 and abs(mean - 0.9) < 1e-12 and sd < 1e-12  # every subject's mean over subsets is 0.9
    assert "| m | t2 | synthesis | 3 | 0.900 (0.000) |" in uncertainty_table(rows)

"""The paired tests behind every table's bold entries, and the one Markdown table writer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wilcoxon

from mmhvae.evaluation.statistics import paired_p_value, significantly_lowest
from mmhvae.evaluation.tables import markdown_lines, section_row, table_row


def test_paired_p_value_is_the_two_sided_wilcoxon_with_its_guards_and_correction():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=12), rng.normal(size=12) + 0.5
    expected = wilcoxon(a, b, zero_method="wilcox").pvalue
    assert paired_p_value(a, b) == pytest.approx(expected)
    assert paired_p_value(a, b, comparisons=3) == pytest.approx(min(1.0, 3 * expected))
    assert paired_p_value(a, a + 10.0, comparisons=10**6) == 1.0  # Bonferroni never exceeds 1
    assert paired_p_value([], []) == 1.0
    assert paired_p_value([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0  # nothing differs: no evidence


def test_significantly_lowest_needs_every_paired_test_to_pass():
    units = [(f"s{i}", 0) for i in range(10)]
    low = {u: 1.0 + 0.01 * i for i, u in enumerate(units)}
    high = {u: 3.0 + 0.02 * i for i, u in enumerate(units)}
    close = {u: v + (0.001 if i % 2 else -0.001) for i, (u, v) in enumerate(low.items())}
    assert significantly_lowest({"a": high, "b": low}, alpha=0.05) == "b"
    assert significantly_lowest({"a": high, "b": low, "c": close}, alpha=0.05) is None
    assert significantly_lowest({"b": low}, alpha=0.05) is None


def test_markdown_lines_write_header_rule_and_rows():
    assert markdown_lines(["a", "b"], [["1", 2]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    assert table_row(["x"]) == "| x |"
    assert section_row("group", 2) == "| *group* | | |"

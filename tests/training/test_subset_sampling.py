"""The input subsets r' each method trains on: every method draws from MMHVAE's p_alpha(r' | r) by default
(Section 4.3, the same sample selection for all), and `train.subset_sampling: own` keeps a method's own scheme."""

from __future__ import annotations

from collections import Counter

import pytest

from mmhvae.config import RunConfig, from_yaml_text, with_method
from mmhvae.modalities import mixture_distribution, non_empty_subsets
from mmhvae.training.trainer import module_for

from conftest import SMALL_CONFIG

OBSERVED = ("us", "t2", "t1c")  # p_alpha (paper): 1/3 all, 1/3 us alone, 1/9 each MR subset; uniform: 1/7 each
DRAWS = 3000
TOLERANCE = 0.03  # about 3.5 standard errors of a frequency at DRAWS; the two schemes differ by up to 0.19


def frequencies(method: str, sampling: str | None = None) -> tuple[dict[tuple, float], RunConfig]:
    text = SMALL_CONFIG + (f"  subset_sampling: {sampling}\n" if sampling else "")
    run = with_method(from_yaml_text(text, "<test>", RunConfig()), method)
    drawn = module_for(run).sample_input_subsets(OBSERVED, DRAWS)
    return {subset: count / DRAWS for subset, count in Counter(drawn).items()}, run


def largest_gap(found: dict[tuple, float], expected: dict[tuple, float]) -> float:
    return max(abs(found.get(s, 0.0) - expected.get(s, 0.0)) for s in set(found) | set(expected))


@pytest.mark.parametrize("method", ["mmgan", "resvit", "m2dn", "mmhvae", "mopoe"])
def test_every_method_draws_its_input_subsets_from_p_alpha_by_default(method):
    found, run = frequencies(method)
    assert run.train.subset_sampling == "mixture"
    mixture = mixture_distribution(OBSERVED, run.train.mixture)
    uniform = {s: 1 / 7 for s in non_empty_subsets(OBSERVED)}
    assert largest_gap(found, mixture) < TOLERANCE
    assert largest_gap(uniform, mixture) > 3 * TOLERANCE  # the check tells the two schemes apart


@pytest.mark.parametrize("method", ["mmgan", "resvit", "m2dn"])
def test_own_sampling_keeps_the_zero_imputation_methods_uniform_input_dropping(method):
    found, _ = frequencies(method, "own")
    assert largest_gap(found, {s: 1 / 7 for s in non_empty_subsets(OBSERVED)}) < TOLERANCE


def test_own_sampling_of_the_mmhvae_family_is_the_mixture():
    found, run = frequencies("mmhvae", "own")
    assert largest_gap(found, mixture_distribution(OBSERVED, run.train.mixture)) < TOLERANCE


def test_mhvae_draws_from_p_alpha_on_its_pair_which_is_one_third_each_subset():
    run = with_method(from_yaml_text(SMALL_CONFIG, "<test>", RunConfig()), "mhvae")
    drawn = module_for(run).sample_input_subsets(("us", "t2"), DRAWS)
    found = {subset: count / DRAWS for subset, count in Counter(drawn).items()}
    assert largest_gap(found, {("us", "t2"): 1 / 3, ("us",): 1 / 3, ("t2",): 1 / 3}) < TOLERANCE

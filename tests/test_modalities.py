from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmhvae.errors import InputError
from mmhvae.modalities import (
    CANONICAL_KEYS,
    DATA_ORDER,
    PAPER_MODALITIES,
    ModalitySet,
    SubsetSampler,
    canonical_key,
    in_data_order,
    mixture_distribution,
    mixture_for,
    non_empty_subsets,
    parse_modality_list,
    subset_from_code,
)

PAPER = ModalitySet(("us", "t2", "t1c", "flair"))


@pytest.mark.parametrize(
    "alias, key",
    [("cet1", "t1c"), ("T1CE", "t1c"), ("t1gd", "t1c"), ("t1n", "t1"), ("T1w", "t1"), ("t2w", "t2"),
     ("t2f", "flair"), ("FLAIR", "flair"), ("US", "us"), ("pd", "pd")],
)
def test_aliases_map_to_canonical_keys(alias, key):
    assert canonical_key(alias) == key


def test_unknown_and_duplicated_names_are_input_errors():
    assert canonical_key("dwi") is None
    with pytest.raises(InputError, match="unknown modality 'dwi'"):
        parse_modality_list("us,dwi")
    with pytest.raises(InputError, match="twice"):
        parse_modality_list("t1c,cet1")


def test_modality_set_orders_subsets_and_indicators():
    assert PAPER.ordered(["flair", "us"]) == ("us", "flair")
    assert PAPER.indicator(["t2", "flair"]) == (0, 1, 0, 1)
    assert PAPER.from_indicator((1, 0, 1, 0)) == ("us", "t1c")
    subsets = PAPER.subsets()
    assert len(subsets) == 15 and len(set(subsets)) == 15
    assert subsets[0] == ("us",) and subsets[-1] == PAPER.keys
    assert ModalitySet.parse("cet1,us").keys == ("t1c", "us")


@given(st.integers(min_value=1, max_value=6))
def test_subset_enumeration_counts(m):
    keys = CANONICAL_KEYS[:m]
    subsets = non_empty_subsets(keys)
    assert len(subsets) == 2**m - 1
    assert all(s and set(s) <= set(keys) for s in subsets)



def test_subset_codes_enumerate_every_non_empty_subset_once():
    keys = ("us", "t2", "t1c")
    assert subset_from_code(keys, 0b101) == ("us", "t1c")
    decoded = [subset_from_code(keys, code) for code in range(1, 8)]
    assert sorted(decoded) == sorted(non_empty_subsets(keys))
    for bad in (0, 8):
        with pytest.raises(ValueError):
            subset_from_code(keys, bad)


observed_sets = st.lists(st.sampled_from(CANONICAL_KEYS), min_size=1, max_size=6, unique=True).map(
    lambda keys: tuple(k for k in CANONICAL_KEYS if k in keys)
)


@settings(max_examples=60, deadline=None)
@given(observed=observed_sets, preset=st.sampled_from(["paper", "default"]), seed=st.integers(0, 2**31))
def test_every_draw_is_a_non_empty_subset_of_r(observed, preset, seed):
    sampler = SubsetSampler(preset)
    dist = sampler.distribution(observed)
    assert abs(sum(dist.values()) - 1) < 1e-12
    assert all(p > 0 for p in dist.values())
    for drawn in sampler.sample(observed, np.random.default_rng(seed), size=50):
        assert drawn and set(drawn) <= set(observed)
        assert drawn == tuple(k for k in observed if k in drawn)


def expected_paper(observed):
    """The paper's weights written out by hand for the ReMIND-like modality set."""
    mr = [k for k in observed if k != "us"]
    mr_subsets = non_empty_subsets(mr)
    branches = [[observed]] + ([[("us",)]] if "us" in observed else []) + ([mr_subsets] if mr else [])
    expected = {}
    for branch in branches:
        for s in branch:
            expected[s] = expected.get(s, 0) + 1 / len(branches) / len(branch)
    return expected


@pytest.mark.parametrize(
    "observed, checks",
    [
        (("us", "t2", "t1c", "flair"), {("us", "t2", "t1c", "flair"): 1 / 3, ("us",): 1 / 3,
                                         ("t2",): 1 / 21, ("t2", "t1c", "flair"): 1 / 21}),
        (("us", "t1c"), {("us", "t1c"): 1 / 3, ("us",): 1 / 3, ("t1c",): 1 / 3}),
        (("us",), {("us",): 1.0}),  # both other branches collapse onto r = {us}
        (("t2", "t1c"), {("t2", "t1c"): 1 / 2 + 1 / 6, ("t2",): 1 / 6, ("t1c",): 1 / 6}),  # no US branch
    ],
)
def test_paper_preset_weights(observed, checks):
    dist = mixture_distribution(observed, "paper")
    for subset, p in checks.items():
        assert dist[subset] == pytest.approx(p)
    assert dist == pytest.approx(expected_paper(observed))


def test_default_preset_weights():
    dist = mixture_distribution(("us", "t2", "flair"), "default")
    assert dist[("us", "t2", "flair")] == pytest.approx(1 / 3)
    assert all(dist[s] == pytest.approx(2 / 3 / 6) for s in non_empty_subsets(("us", "t2", "flair"))[:-1])
    assert mixture_distribution(("t2",), "default") == {("t2",): 1.0}


def test_uniform_preset_gives_every_subset_the_same_weight():
    observed = ("us", "t2", "t1c", "flair")
    dist = mixture_distribution(observed, "uniform")
    assert set(dist) == set(non_empty_subsets(observed))
    assert all(p == pytest.approx(1 / 15) for p in dist.values())
    assert mixture_distribution(("t2",), "uniform") == {("t2",): 1.0}


def test_singles_preset_puts_half_the_mass_on_the_single_modalities():
    observed = ("us", "t2", "t1c", "flair")
    dist = mixture_distribution(observed, "singles")
    assert set(dist) == set(non_empty_subsets(observed))
    assert dist[("flair",)] == pytest.approx(1 / 8 + 1 / 30)  # a quarter of the singles' half, plus uniform's
    assert dist[("us", "flair")] == pytest.approx(1 / 30)
    assert sum(dist[(key,)] for key in observed) == pytest.approx(1 / 2 + 4 / 30)
    assert sum(dist.values()) == pytest.approx(1.0)
    assert mixture_distribution(("t2",), "singles") == {("t2",): pytest.approx(1.0)}


def test_modality_weights_default_to_one_and_accept_aliases():
    modalities = ModalitySet(("us", "t2", "t1c", "flair"))
    assert modalities.weights({}) == (1.0, 1.0, 1.0, 1.0)
    assert modalities.weights({"T2F": 3, "cet1": 0.5}) == (1.0, 1.0, 0.5, 3.0)
    for bad, message in [({"t1": 2.0}, "not in the modality set"), ({"flair": -1.0}, ">= 0"),
                         ({"flair": "two"}, ">= 0"), ({"flare": 1.0}, "unknown modality")]:
        with pytest.raises(InputError, match=message):
            modalities.weights(bad, "config.yaml")


def test_the_paper_preset_never_pairs_the_ultrasound_with_part_of_the_mr():
    observed = ("us", "t2", "t1c", "flair")
    partial = ("us", "flair")
    assert partial not in mixture_distribution(observed, "paper")
    assert mixture_distribution(observed, "uniform")[partial] > 0


@pytest.mark.parametrize("preset", ["paper", "default", "uniform", "singles"])
@pytest.mark.parametrize("observed", [("us", "t2", "t1c", "flair"), ("us", "t1c", "flair"), ("t2", "flair")])
def test_empirical_frequencies_match_the_stated_probabilities(preset, observed):
    sampler = SubsetSampler(preset)
    n = 40_000
    drawn = sampler.sample(observed, np.random.default_rng(1), size=n)
    counts = {}
    for s in drawn:
        counts[s] = counts.get(s, 0) + 1
    for subset, p in sampler.distribution(observed).items():
        se = np.sqrt(p * (1 - p) / n)
        assert abs(counts.get(subset, 0) / n - p) < 5 * se + 1e-9, subset
    assert set(counts) <= set(sampler.distribution(observed))


def test_unknown_preset_is_refused():
    with pytest.raises(InputError, match="unknown mixture preset"):
        SubsetSampler("uniformish")


def test_modalities_found_in_data_keep_the_papers_order():
    assert sorted(DATA_ORDER) == sorted(CANONICAL_KEYS)
    assert in_data_order(["flair", "US", "cet1", "t2w"]) == PAPER_MODALITIES
    assert in_data_order(["t2f", "t1n", "t2w", "t1c"]) == ("t1", "t2", "t1c", "flair")  # BraTS, as the brats preset
    assert in_data_order(["pd", "t1", "pd"]) == ("t1", "pd")
    with pytest.raises(InputError, match="unknown modality 'adc'"):
        in_data_order(["adc"])


def test_without_an_ultrasound_the_papers_mixture_gives_way_to_the_generic_one():
    assert mixture_for(("t1", "t2"), "paper") == "default"
    assert mixture_for(("us", "t2"), "paper") == "paper"
    assert mixture_for(("t1", "t2"), "uniform") == "uniform"

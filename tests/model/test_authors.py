"""The `authors` variant: parity with the authors' network on the fixture, their keys and parameter count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmhvae.model.authors import AuthorsConfig, AuthorsMMHVAE
from mmhvae.model.distributions import gaussian_from_log_scale

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "authors-parity"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def fixture() -> dict:
    return json.loads((FIXTURE / "fixture.json").read_text())


@pytest.fixture(scope="module")
def small_model(fixture) -> AuthorsMMHVAE:
    model = AuthorsMMHVAE(AuthorsConfig.from_authors_arguments(fixture["small_config"])).eval()
    model.load_state_dict(torch.load(FIXTURE / "small_state_dict.pt", weights_only=True))
    return model


def fixture_inputs(config: AuthorsConfig) -> torch.Tensor:
    """[B, M, H, W] in config order from the fixture's per-modality [B, 1, H, W] arrays."""
    with np.load(FIXTURE / "small_inputs.npz") as inputs:
        return torch.from_numpy(np.concatenate([inputs[k] for k in config.checkpoint_keys], axis=1))


def subset_mask(config: AuthorsConfig, subset: list[str], batch: int) -> torch.Tensor:
    return torch.tensor([[k in subset for k in config.checkpoint_keys]] * batch)


def test_config_from_their_arguments_maps_keys_and_round_trips(fixture):
    config = AuthorsConfig.from_authors_arguments(fixture["small_config"])
    assert config.modalities == ("us", "t2", "t1c", "flair")
    assert config.checkpoint_keys == ("us", "t2", "cet1", "flair")
    assert (config.image_size, config.num_pool, config.base_features, config.max_features) == (48, 3, 4, 16)
    values = config.to_dict()
    assert values["variant"] == "authors"
    assert AuthorsConfig.from_dict(values) == config
    with pytest.raises(ValueError, match="variant"):
        AuthorsConfig.from_dict(values | {"variant": "mmhvae"})


def test_paper_setting_has_their_536_keys_shapes_and_parameter_count(fixture):
    model = AuthorsMMHVAE(AuthorsConfig())
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = fixture["paper_config_state_dict_shapes"]
    assert len(shapes) == len(expected) == 536
    assert sorted(set(shapes) - set(expected)) == [] and sorted(set(expected) - set(shapes)) == []
    assert shapes == expected
    assert sum(p.numel() for p in model.parameters()) == fixture["paper_config_param_count"] == 13_774_770


@torch.no_grad()
def test_reproduces_their_outputs_for_every_subset_at_temperature_0(small_model, fixture):
    config = small_model.config
    images = fixture_inputs(config)
    batch = images.shape[0]
    features = small_model.encode(images, torch.ones(batch, len(config.modalities), dtype=torch.bool))
    with np.load(FIXTURE / "small_outputs.npz") as outputs:
        expected = dict(outputs)
    worst = 0.0
    for subset in fixture["subsets"]:
        # The fixture passed the subset in this order; its first modality masks the outputs.
        first = config.modalities[config.checkpoint_keys.index(subset[0])]
        out = small_model.decode(features, subset_mask(config, subset, batch), temperature=0.0,
                                 mask_modality=first)
        for j, key in enumerate(config.checkpoint_keys):
            reference = expected["+".join(subset) + "->" + key][:, 0]
            difference = float(np.abs(out.images[:, j].numpy() - reference).max())
            assert difference <= TOLERANCE, (subset, key, difference)
            worst = max(worst, difference)
    assert len(expected) == 4 * len(fixture["subsets"])
    print(f"max abs difference to the authors' network: {worst:.2e}")


@torch.no_grad()
def test_subsets_batched_in_one_pass_equal_the_fixture(small_model, fixture):
    """Rows with different subsets in one decode (as predict batches them) give each subset's outputs."""
    config = small_model.config
    images = fixture_inputs(config)
    batch = images.shape[0]
    features = small_model.encode(images, torch.ones(batch, len(config.modalities), dtype=torch.bool))
    subsets = [s for s in fixture["subsets"] if s[0] == "us" or "us" not in s]  # default mask = their first
    rows = torch.arange(batch).repeat(len(subsets))
    masks = torch.cat([subset_mask(config, s, batch) for s in subsets])
    out = small_model.decode(features.index(rows), masks, temperature=0.0)
    with np.load(FIXTURE / "small_outputs.npz") as outputs:
        for i, subset in enumerate(subsets):
            for j, key in enumerate(config.checkpoint_keys):
                got = out.images[i * batch:(i + 1) * batch, j].numpy()
                np.testing.assert_allclose(got, outputs["+".join(subset) + "->" + key][:, 0], atol=TOLERANCE)


@torch.no_grad()
def test_outputs_are_masked_by_the_first_input_and_absent_inputs_are_ignored(small_model):
    config = small_model.config
    images = fixture_inputs(config).clone()
    t2 = config.modalities.index("t2")
    images[:, t2, :, 30:] = -1.0  # t2 has less foreground than flair
    present = torch.tensor([[False, True, False, True]] * images.shape[0])
    images[:, 0] = float("nan")  # absent: never read
    features = small_model.encode(images, present)
    subset = present.clone()
    by_t2 = small_model.decode(features, subset, temperature=0.0).images  # t2 comes first in config order
    assert bool((by_t2[..., 30:] == -1).all())
    assert bool(torch.isfinite(by_t2).all())
    by_flair = small_model.decode(features, subset, temperature=0.0, mask_modality="flair").images
    assert bool((by_flair[..., 30:] > -1).any())
    inside = images[:, t2] > -1
    np.testing.assert_allclose(by_t2.permute(1, 0, 2, 3)[:, inside], by_flair.permute(1, 0, 2, 3)[:, inside])
    with pytest.raises(ValueError, match="not encoded"):
        small_model.decode(features, subset, temperature=0.0, mask_modality="us")


def test_heads_give_a_log_standard_deviation_clamped_before_squaring():
    params = torch.tensor([[3.0, 50.0]])
    gaussian = gaussian_from_log_scale(params, clamp=10.0)
    assert torch.allclose(gaussian.mean, torch.tensor([[10 * np.tanh(0.3)]], dtype=torch.float32))
    assert torch.allclose(gaussian.std, torch.exp(10 * torch.tanh(torch.tensor([[5.0]]))))

"""The interface every synthesis network shares (model/interface.py): construction from a configuration dict,
the input checks, and `forward` as decode(encode(...)) with the same random draws."""

from __future__ import annotations

import pytest
import torch

from mmhvae.model.authors import AuthorsConfig
from mmhvae.model.baselines.m2dn import M2DNConfig
from mmhvae.model.baselines.mmgan import MMGANConfig
from mmhvae.model.baselines.resvit import ResViTConfig
from mmhvae.model.interface import SynthesisNetwork, config_checker, zero_outside
from mmhvae.model.mmhvae_config import MMHVAEConfig
from mmhvae.model.registry import build_network
from network_inputs import mask, random_images, tiny_config

# One small configuration of every network class.
CONFIGS = {
    "mmhvae": tiny_config(),
    "joint": tiny_config(encoder="joint"),
    "authors": AuthorsConfig(image_size=64, num_pool=4, base_features=8, max_features=32, decoder_blocks=1),
    "mmgan": MMGANConfig(channels=(8, 16, 16)),
    "resvit": ResViTConfig(image_size=64, base_features=4, hidden_size=32, transformer_layers=1, heads=2,
                           mlp_size=64, dropout=0.0),
    "m2dn": M2DNConfig(channels=(8, 16), head_channels=8, res_blocks=1, sampling_steps=3),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def network(request) -> SynthesisNetwork:
    torch.manual_seed(0)
    return build_network(CONFIGS[request.param].to_dict()).eval()


def test_every_network_rebuilds_from_its_plain_dict(network: SynthesisNetwork) -> None:
    assert isinstance(network, SynthesisNetwork)
    rebuilt = type(network).from_config(network.to_dict())
    assert rebuilt.config == network.config
    assert type(network).from_config(network.config).config is network.config
    assert rebuilt.state_dict().keys() == network.state_dict().keys()
    assert network.num_modalities == len(network.config.modalities)


def test_forward_is_decode_of_encode_with_the_same_draws(network: SynthesisNetwork) -> None:
    images, present, subset = random_images(2), mask("1111", "1011"), mask("1010", "0011")
    with torch.no_grad():
        by_forward = network(images, present, subset, temperature=0.5, generator=torch.Generator().manual_seed(3))
        features = network.encode(images, present)
        by_decode = network.decode(features, subset, temperature=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(by_forward.images, by_decode.images)
    assert len(by_forward.kl) == len(by_decode.kl)
    assert all(torch.equal(a, b) for a, b in zip(by_forward.kl, by_decode.kl))


def test_inputs_are_checked_with_one_message_for_every_network(network: SynthesisNetwork) -> None:
    images = random_images(2)
    with pytest.raises(ValueError, match=r"present must be \[2, 4\], got \(2, 3\)"):
        network.encode(images, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"images must be \[B, 4, H, W\]"):
        network.encode(images[:, :3], torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="images must be 64x64, got"):
        network.encode(images[..., :32, :32], torch.ones(2, 4, dtype=torch.bool))
    features = network.encode(images, mask("1100", "1111"))
    with pytest.raises(ValueError, match="subset selects a modality that was not encoded"):
        network.decode(features, mask("0010", "1111"))
    with pytest.raises(ValueError, match=r"subset must be \[2, 4\]"):
        network.decode(features, mask("1100"))


def test_config_checker_names_the_configuration_and_checks_the_modalities() -> None:
    with pytest.raises(ValueError, match="MMHVAEConfig: at least one modality is needed"):
        MMHVAEConfig(modalities=())
    with pytest.raises(ValueError, match=r"AuthorsConfig: duplicate modalities \('t2', 't2'\)"):
        AuthorsConfig(modalities=("t2", "t2"), checkpoint_keys=("t2", "t2"))
    with pytest.raises(ValueError, match="MMGANConfig: variant must be 'mmgan', got 'resvit'"):
        MMGANConfig(variant="resvit")
    config = MMGANConfig(modalities=["t2", "us"])
    assert config.modalities == ("t2", "us")
    check = config_checker(config, "mmgan")
    with pytest.raises(ValueError, match="MMGANConfig: too small"):
        check(False, "too small")


def test_zero_outside_keeps_no_nan_of_the_modalities_left_out() -> None:
    images = random_images(2)
    images[0, 1] = float("nan")
    kept = zero_outside(images, mask("1011", "0100"))
    assert torch.equal(kept[0, 1], torch.zeros_like(kept[0, 1]))
    assert torch.equal(kept[0, 0], images[0, 0]) and torch.equal(kept[1, 1], images[1, 1])
    assert not bool(kept[1, 0].any())

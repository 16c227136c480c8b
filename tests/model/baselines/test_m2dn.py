"""Tests of the M2DN baseline network (a conditional Brownian-bridge diffusion)."""

from __future__ import annotations

import pytest
import torch

from mmhvae.config import load_config
from mmhvae.model.baselines.m2dn import M2DN, M2DNConfig, subset_codes
from mmhvae.model.distributions import RowNoise
from mmhvae.model.registry import build_network, network_config_for_method, network_config_from_dict
from network_inputs import B, M, all_present, mask, tiny_config
from network_inputs import random_images as random_images_of_size

SIZE = 32


def random_images(batch: int = B, seed: int = 0) -> torch.Tensor:
    return random_images_of_size(batch, seed, SIZE)


def small_config(**overrides) -> M2DNConfig:
    settings = dict(image_size=SIZE, channels=(8, 16, 16), head_channels=8, res_blocks=1, sampling_steps=4)
    return M2DNConfig(**(settings | overrides))


def trained_like(model: M2DN) -> M2DN:
    """MONAI zero-initialises the last convolution of the U-Net and of each residual block (an untrained model
    predicts 0 everywhere and ignores step and code): give those weights so that outputs depend on the inputs."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def m2dn() -> M2DN:
    torch.manual_seed(0)
    return trained_like(M2DN(small_config()))



def keyed_noise(batch: int = B) -> RowNoise:
    return RowNoise(torch.arange(batch))


def test_subset_codes_are_the_binary_numbers_of_the_subsets() -> None:
    assert subset_codes(mask("1000", "0100", "1100", "1111")).tolist() == [1, 2, 3, 15]


def test_shapes_range_and_reproducible_sampling(m2dn: M2DN) -> None:
    images = random_images()
    subsets = mask("1111", "1000", "0110")
    features = m2dn.encode(images, all_present())
    first = m2dn.decode(features, subsets, generator=keyed_noise())
    assert first.images.shape == (B, M, SIZE, SIZE) and first.images.abs().max() <= 1.0 and first.kl == []
    again = m2dn.decode(features, subsets, generator=keyed_noise())
    torch.testing.assert_close(first.images, again.images, rtol=0, atol=0)  # same keys, same draws
    other = m2dn.decode(features, subsets, generator=RowNoise(torch.arange(B) + 10))
    assert not torch.allclose(first.images, other.images)  # other noise, another sample
    for i in range(B):  # group norm and per-row noise: a row alone gives what it gives in a batch
        row = torch.tensor([i])
        alone = m2dn.decode(features.index(row), subsets[i : i + 1], generator=RowNoise(row))
        torch.testing.assert_close(first.images[i : i + 1], alone.images, rtol=1e-4, atol=1e-5)


def test_only_the_subset_influences_the_output(m2dn: M2DN) -> None:
    images = random_images()
    subsets = mask("1010", "0110", "1000")
    reference = m2dn.decode(m2dn.encode(images, all_present()), subsets, generator=keyed_noise()).images
    changed = images.clone()
    changed[:, 3] = float("nan")
    changed[0, 1] = 5.0
    out = m2dn.decode(m2dn.encode(changed, mask("1110", "1110", "1110")), subsets, generator=keyed_noise()).images
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    swapped = m2dn.decode(m2dn.encode(images, all_present()), mask("0110", "0110", "1000"),
                          generator=keyed_noise()).images
    assert not torch.allclose(swapped[0], reference[0])  # row 0's subset changed, its output too
    torch.testing.assert_close(swapped[1:], reference[1:], rtol=1e-4, atol=1e-5)


def test_the_binary_code_conditions_the_network(m2dn: M2DN) -> None:
    x_t, steps = random_images(batch=1), torch.tensor([500])
    with torch.no_grad():
        m2dn.unet.class_embedding.weight[3].add_(1.0)  # the embedding of subset {us, t2}
    try:
        a = m2dn.predict_images(x_t, steps, mask("1100"))
        b = m2dn.predict_images(x_t, steps, mask("1010"))
        assert not torch.allclose(a, b)
    finally:
        with torch.no_grad():
            m2dn.unet.class_embedding.weight[3].sub_(1.0)


def test_training_prediction_follows_the_bridge_and_gradients_flow() -> None:
    torch.manual_seed(0)
    model = trained_like(M2DN(small_config())).train()
    images, targets = random_images(batch=2), random_images(batch=2, seed=1)
    prediction = model.training_prediction(images, mask("1010", "0001"), targets,
                                           generator=torch.Generator().manual_seed(0))
    assert prediction.shape == targets.shape
    (prediction - targets).abs().mean().backward()
    assert not [name for name, p in model.named_parameters() if p.grad is None]
    replay = model.training_prediction(images, mask("1010", "0001"), targets,
                                       generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(prediction, replay)  # the generator fixes the steps and the noise


def test_configs_like_the_presets_round_trip_and_validation() -> None:
    tiny = network_config_for_method("m2dn", load_config("tiny").model)
    assert (tiny.channels, tiny.res_blocks, tiny.sampling_steps, tiny.image_size) == ((16, 32, 64, 64), 1, 18, 64)
    paper = network_config_for_method("m2dn", load_config("paper").model)
    assert (paper.channels, paper.res_blocks, paper.image_size) == ((32, 64, 128, 256), 2, 192)
    config = small_config()
    assert network_config_from_dict(config.to_dict()) == config and isinstance(build_network(config.to_dict()), M2DN)
    assert network_config_for_method("m2dn", config) == config
    for bad in (dict(channels=(8, 12)), dict(sampling_steps=0), dict(image_size=30), dict(bridge_scale=0.0)):
        with pytest.raises(ValueError, match="M2DNConfig"):
            small_config(**bad)
    with pytest.raises(ValueError, match="needs an MMHVAE or m2dn"):
        network_config_for_method("m2dn", network_config_for_method("resvit", tiny_config()))

"""Tests of the MM-GAN baseline network and of the network registry."""

from __future__ import annotations

import pytest
import torch

from mmhvae.config import load_config
from mmhvae.model.baselines.mmgan import MMGAN, MMGANConfig
from mmhvae.model.interface import EncodedImages
from mmhvae.model.mmhvae import MMHVAE
from mmhvae.model.mmhvae_config import MMHVAEConfig
from mmhvae.model.registry import build_network, network_config_for_method, network_config_from_dict
from network_inputs import SIZE, B, M, all_present, count_parameters, mask, random_images, tiny_config


@pytest.fixture(scope="module")
def tiny_gan() -> MMGAN:
    torch.manual_seed(0)
    return MMGAN(MMGANConfig.like(tiny_config())).eval()



def test_shapes_range_and_no_kl(tiny_gan: MMGAN) -> None:
    features = tiny_gan.encode(random_images(), all_present())
    assert isinstance(features, EncodedImages) and features.batch_size == B
    out = tiny_gan.decode(features, mask("1111", "1000", "0110"))
    assert out.images.shape == (B, M, SIZE, SIZE)
    assert out.images.abs().max() <= 1.0
    assert out.kl == [] and out.kl_groups == () and out.z1_mean is None
    with pytest.raises(ValueError, match="not encoded"):
        tiny_gan.decode(tiny_gan.encode(random_images(), mask("1000", "1000", "1000")), mask("1100", "1000", "1000"))
    with pytest.raises(ValueError):
        tiny_gan.encode(random_images()[:, :3], all_present()[:, :3])


def test_modalities_outside_the_subset_do_not_influence_the_output(tiny_gan: MMGAN) -> None:
    images = random_images()
    subset = mask("1010", "0110", "1000")
    reference = tiny_gan(images, all_present(), subset).images
    changed = images.clone()
    changed[:, 3] = torch.randn(B, SIZE, SIZE)  # flair is in no subset
    changed[0, 1] = 5.0  # t2 is outside sample 0's subset only
    torch.testing.assert_close(tiny_gan(changed, all_present(), subset).images, reference, rtol=0, atol=0)
    # Absent modalities may hold anything, NaN included.
    changed[:, 3] = float("nan")
    present = mask("1110", "1110", "1110")
    out = tiny_gan(changed, present, subset).images
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference, rtol=0, atol=0)


def test_the_input_subset_matters(tiny_gan: MMGAN) -> None:
    images = random_images(batch=1)
    a = tiny_gan(images, all_present(1), mask("1000")).images
    b = tiny_gan(images, all_present(1), mask("1100")).images
    assert not torch.allclose(a, b)


def test_deterministic_and_batching_is_exact(tiny_gan: MMGAN) -> None:
    images = random_images()
    subsets = mask("1111", "1000", "0101")
    features = tiny_gan.encode(images, all_present())
    first = tiny_gan.decode(features, subsets, temperature=1.0, generator=torch.Generator().manual_seed(1))
    second = tiny_gan.decode(features, subsets, temperature=0.0, sample=False)
    torch.testing.assert_close(first.images, second.images, rtol=0, atol=0)
    for i in range(B):  # instance norm: each row alone gives what it gives in a batch of mixed subsets
        alone = tiny_gan.decode(features.index(torch.tensor([i])), subsets[i : i + 1])
        torch.testing.assert_close(first.images[i : i + 1], alone.images, rtol=1e-4, atol=1e-5)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = MMGAN(MMGANConfig.like(tiny_config()))
    images = random_images(batch=2)
    out = model(images, all_present(2), mask("1010", "0001"))
    (out.images - images).abs().mean().backward()
    assert not [name for name, p in model.named_parameters() if p.grad is None]


def test_config_round_trip_and_validation() -> None:
    config = MMGANConfig.like(tiny_config(), num_res_units=1)
    values = config.to_dict()
    assert values["variant"] == "mmgan" and isinstance(values["channels"], list)
    assert MMGANConfig.from_dict(values) == config
    assert config.channels == (16, 32, 64, 64, 64) and config.image_size == 64
    with pytest.raises(ValueError, match="unknown"):
        MMGANConfig.from_dict({**values, "colour": "blue"})
    for bad in (dict(variant="mmhvae"), dict(image_size=40), dict(channels=(8,)), dict(modalities=("us", "us"))):
        with pytest.raises(ValueError):
            MMGANConfig(**bad)


def test_size_is_comparable_to_the_tiny_mmhvae() -> None:
    tiny = load_config("tiny").model
    mmhvae, mmgan = count_parameters(MMHVAE(tiny)), count_parameters(MMGAN(MMGANConfig.like(tiny)))
    assert 0.7 < mmgan / mmhvae < 1.3, (mmgan, mmhvae)


def test_registry_builds_both_variants_and_state_dicts_round_trip(tmp_path) -> None:
    images = random_images(batch=2)
    for config in (tiny_config(), tiny_config(encoder="joint"), MMGANConfig.like(tiny_config())):
        torch.manual_seed(0)
        model = build_network(config.to_dict()).eval()
        assert type(model) is (MMGAN if isinstance(config, MMGANConfig) else MMHVAE)
        assert network_config_from_dict(config.to_dict()) == config == model.config
        torch.save({"config": model.to_dict(), "state_dict": model.state_dict()}, tmp_path / "model.pt")
        saved = torch.load(tmp_path / "model.pt", weights_only=True)
        restored = build_network(saved["config"]).eval()
        restored.load_state_dict(saved["state_dict"])
        a = model(images, all_present(2), mask("1100", "0010"), temperature=0.0).images
        b = restored(images, all_present(2), mask("1100", "0010"), temperature=0.0).images
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert isinstance(network_config_from_dict({**tiny_config().to_dict(), "variant": "mmhvae"}), MMHVAEConfig)
    with pytest.raises(ValueError, match="unknown network variant"):
        network_config_from_dict({"variant": "pix2pix"})


def test_methods_map_to_network_configurations() -> None:
    tiny = tiny_config(latent_groups=(1, 3, 5))
    assert network_config_for_method("mmhvae", tiny) == tiny
    assert network_config_for_method("mopoe", tiny).stochastic_groups == (5,)
    assert network_config_for_method("average", tiny).fusion == "average"
    joint = network_config_for_method("concat-zeros", tiny_config(fusion="inverse_std"))
    assert joint.encoder == "joint" and joint.fusion == "poe"
    gan = network_config_for_method("mmgan", tiny)
    assert isinstance(gan, MMGANConfig) and network_config_for_method("mmgan", gan) == gan
    with pytest.raises(ValueError, match="unknown method"):
        network_config_for_method("pix2pix", tiny)
    with pytest.raises(ValueError, match="needs an MMHVAE"):
        network_config_for_method("mopoe", gan)

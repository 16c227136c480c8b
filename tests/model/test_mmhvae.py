"""Tests of the MMHVAE network: shapes, subset handling, batching, options, serialisation."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from mmhvae.errors import InputError
from mmhvae.model.interface import EncodedImages, EncodedModalities
from mmhvae.model.mmhvae import MMHVAE
from mmhvae.model.mmhvae_config import MMHVAEConfig
from network_inputs import SIZE, B, M, all_present, count_parameters, mask, paper_config, random_images, tiny_config


@pytest.fixture(scope="module")
def tiny_model() -> MMHVAE:
    torch.manual_seed(0)
    return MMHVAE(tiny_config())



def test_tiny_output_shapes(tiny_model: MMHVAE) -> None:
    out = tiny_model(random_images(), all_present(), mask("1111", "1000", "0110"))
    assert out.images.shape == (B, M, SIZE, SIZE)
    assert out.images.abs().max() <= 1.0
    assert out.kl_groups == (1, 2, 3, 4, 5)
    assert len(out.kl) == 5 and all(k.shape == (B,) for k in out.kl)
    assert out.kl_total.shape == (B,)
    assert out.z1_mean is not None and out.z1_mean.shape == (B, 4, SIZE, SIZE)


def test_paper_configuration_has_the_papers_size() -> None:
    config = paper_config()
    assert config.bottom_size == 3 and config.stochastic_groups == (1, 2, 3, 4, 5, 6, 7)
    model = MMHVAE(config)
    # The authors' network has 13,774,770 parameters (paper: "14M").
    assert 13e6 <= count_parameters(model) <= 15e6


def test_tiny_configuration_is_small(tiny_model: MMHVAE) -> None:
    assert count_parameters(tiny_model) < 1_000_000


def test_excluded_modality_does_not_influence_the_output(tiny_model: MMHVAE) -> None:
    images = random_images()
    subset = mask("1010", "0110", "1000")
    reference = tiny_model(images, all_present(), subset, temperature=0.0)
    changed = images.clone()
    changed[:, 3] = torch.randn(B, SIZE, SIZE)  # flair is in no subset
    changed[0, 1] = 5.0  # t2 is excluded for sample 0 only
    out = tiny_model(changed, all_present(), subset, temperature=0.0)
    torch.testing.assert_close(out.images, reference.images, rtol=0, atol=1e-6)
    for a, b in zip(out.kl, reference.kl):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_absent_modality_may_hold_nan(tiny_model: MMHVAE) -> None:
    images = random_images()
    present = mask("1100", "1100", "1100")
    images[:, 2:] = float("nan")
    out = tiny_model(images, present, present, temperature=0.0)
    assert torch.isfinite(out.images).all()
    assert all(torch.isfinite(k).all() for k in out.kl)


def test_mixed_subsets_in_one_batch_equal_separate_runs(tiny_model: MMHVAE) -> None:
    images = random_images()
    subsets = mask("1111", "1000", "0101")
    features = tiny_model.encode(images, all_present())
    together = tiny_model.decode(features, subsets, temperature=0.0)
    for i in range(B):
        alone = tiny_model.decode(features.index(torch.tensor([i])), subsets[i : i + 1], temperature=0.0)
        torch.testing.assert_close(together.images[i : i + 1], alone.images, rtol=1e-4, atol=1e-5)
        for a, b in zip(together.kl, alone.kl):
            torch.testing.assert_close(a[i : i + 1], b, rtol=1e-4, atol=1e-4)


def test_encode_once_fuse_many_matches_forward(tiny_model: MMHVAE) -> None:
    images = random_images(batch=1)
    subsets = mask("1000", "0100", "1111")
    features = tiny_model.encode(images, all_present(1))
    repeated = features.index(torch.zeros(3, dtype=torch.long))
    assert isinstance(repeated, EncodedModalities) and repeated.batch_size == 3
    batched = tiny_model.decode(repeated, subsets, temperature=0.0)
    for i in range(3):
        single = tiny_model(images, all_present(1), subsets[i : i + 1], temperature=0.0)
        torch.testing.assert_close(batched.images[i : i + 1], single.images, rtol=1e-4, atol=1e-5)


def test_encoding_only_present_samples_equals_encoding_everything(tiny_model: MMHVAE) -> None:
    images = random_images()
    present = mask("1111", "1001", "0111")
    partial = tiny_model.encode(images, present)
    full = tiny_model.encode(images, all_present())
    for level_partial, level_full in zip(partial.skips, full.skips):
        kept = present.reshape(B, M, 1, 1, 1)
        torch.testing.assert_close(level_partial, torch.where(kept, level_full, 0.0), rtol=1e-4, atol=1e-5)
        assert (level_partial[~present] == 0).all()


def test_subset_must_be_encoded(tiny_model: MMHVAE) -> None:
    features = tiny_model.encode(random_images(), mask("1000", "1000", "1000"))
    with pytest.raises(ValueError, match="not encoded"):
        tiny_model.decode(features, mask("1100", "1000", "1000"))
    with pytest.raises(ValueError):
        tiny_model.decode(features, torch.ones(B, 3, dtype=torch.bool))


def test_kl_is_non_negative_and_sampling_is_stochastic(tiny_model: MMHVAE) -> None:
    images, subset = random_images(), mask("1111", "1000", "0011")
    torch.manual_seed(1)
    first = tiny_model(images, all_present(), subset, temperature=1.0)
    second = tiny_model(images, all_present(), subset, temperature=1.0)
    assert all((k >= 0).all() for k in first.kl)
    assert not torch.equal(first.images, second.images)
    mean_a = tiny_model(images, all_present(), subset, temperature=0.0)
    mean_b = tiny_model(images, all_present(), subset, temperature=0.7, sample=False)
    torch.testing.assert_close(mean_a.images, mean_b.images)


def test_empty_subset_samples_from_the_prior(tiny_model: MMHVAE) -> None:
    out = tiny_model(random_images(), all_present(), torch.zeros(B, M, dtype=torch.bool), temperature=0.0)
    assert torch.isfinite(out.images).all()
    # q equals the prior at every level, so the analytic KL vanishes.
    torch.testing.assert_close(out.kl_total, torch.zeros(B), atol=1e-4, rtol=0)


def test_single_sample_kl_option(tiny_model: MMHVAE) -> None:
    features = tiny_model.encode(random_images(), all_present())
    out = tiny_model.decode(features, all_present(), kl="sample")
    assert len(out.kl) == 5 and all(torch.isfinite(k).all() for k in out.kl)
    with pytest.raises(ValueError):
        tiny_model.decode(features, all_present(), kl="exact")


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = MMHVAE(tiny_config())
    images = random_images(batch=2)
    out = model(images, all_present(2), all_present(2))
    loss = (out.images - images).abs().mean() + 1e-3 * out.kl_total.mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


VARIANTS = [
    dict(topdown="markov"),
    dict(heads="shared"),
    dict(fusion="inverse_std"),
    dict(fusion="average"),
    dict(fusion="concat_zeros"),
    dict(topdown="markov", heads="shared", fusion="inverse_std"),
    dict(num_latent_levels=1),
    dict(num_latent_levels=2),
    dict(num_latent_levels=3),
    dict(num_latent_levels=4),
    dict(latent_groups=(1, 5)),
    dict(latent_groups=(1, 3, 5), topdown="markov"),
    dict(norm="instance_affine"),
    dict(kl="sample"),
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_options_construct_and_run(overrides: dict) -> None:
    torch.manual_seed(0)
    config = tiny_config(**overrides)
    model = MMHVAE(config)
    images = random_images(batch=2)
    subset = mask("1010", "0100")
    out = model(images, all_present(2), subset)
    assert out.images.shape == (2, M, SIZE, SIZE)
    assert len(out.kl) == len(config.stochastic_groups) and out.kl_groups == config.stochastic_groups
    assert (out.z1_mean is not None) == (1 in config.stochastic_groups)
    out.images.mean().add(out.kl_total.mean()).backward()
    # Subset exclusion must hold for every fusion, ablations included.
    changed = images.clone()
    changed[0, 1] = -images[0, 1]
    changed[1, 0] = 0.0
    a = model(images, all_present(2), subset, temperature=0.0).images
    b = model(changed, all_present(2), subset, temperature=0.0).images
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_num_latent_levels_takes_the_coarsest_groups() -> None:
    assert tiny_config(num_latent_levels=1).stochastic_groups == (5,)
    assert tiny_config(num_latent_levels=3).stochastic_groups == (3, 4, 5)
    assert paper_config(latent_groups=(7, 1, 4)).stochastic_groups == (1, 4, 7)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(latent_channels=(4, 8)),
        dict(image_size=40),
        dict(fusion="max"),
        dict(topdown="nvae"),
        dict(heads="none"),
        dict(num_latent_levels=0),
        dict(latent_groups=(1, 2)),
        dict(modalities=("us", "us")),
    ],
)
def test_invalid_configurations_are_rejected(overrides: dict) -> None:
    with pytest.raises(ValueError):
        tiny_config(**overrides)


def test_config_round_trips_through_a_plain_dict_and_a_weights_only_file(tmp_path) -> None:
    config = tiny_config(latent_groups=(1, 3, 5), fusion="average")
    as_dict = config.to_dict()
    assert MMHVAEConfig.from_dict(as_dict) == config
    with pytest.raises(ValueError, match="unknown"):
        MMHVAEConfig.from_dict({**as_dict, "colour": "blue"})

    torch.manual_seed(0)
    model = MMHVAE.from_config(config)
    torch.save({"config": model.to_dict(), "state_dict": model.state_dict()}, tmp_path / "model.pt")
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    restored = MMHVAE.from_config(saved["config"])
    restored.load_state_dict(saved["state_dict"])
    images = random_images(batch=1)
    a = model(images, all_present(1), temperature=0.0).images
    b = restored(images, all_present(1), temperature=0.0).images
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----- encoder "joint": one encoder on the concatenated modalities, zeros outside r' (Section 4.4.2) -----


@pytest.fixture(scope="module")
def joint_model() -> MMHVAE:
    torch.manual_seed(0)
    return MMHVAE(tiny_config(encoder="joint"))


def test_joint_encoder_shapes_and_a_single_encoder(joint_model: MMHVAE) -> None:
    assert len(joint_model.encoders) == 1 and joint_model.encoders[0].stem.in_channels == M
    features = joint_model.encode(random_images(), all_present())
    assert isinstance(features, EncodedImages) and features.skips == []
    out = joint_model.decode(features, mask("1111", "1000", "0110"), temperature=0.5)
    assert out.images.shape == (B, M, SIZE, SIZE) and out.images.abs().max() <= 1.0
    assert out.kl_groups == (1, 2, 3, 4, 5) and all(k.shape == (B,) for k in out.kl)
    assert out.z1_mean is not None and out.z1_mean.shape == (B, 4, SIZE, SIZE)
    assert count_parameters(joint_model) < count_parameters(MMHVAE(tiny_config()))


def test_joint_encoder_ignores_modalities_outside_the_subset_nan_included(joint_model: MMHVAE) -> None:
    images = random_images()
    subset = mask("1010", "0110", "1000")
    reference = joint_model(images, all_present(), subset, temperature=0.0)
    changed = images.clone()
    changed[:, 3] = torch.randn(B, SIZE, SIZE)  # flair is in no subset
    changed[0, 1] = 5.0  # t2 is outside sample 0's subset only
    out = joint_model(changed, all_present(), subset, temperature=0.0)
    torch.testing.assert_close(out.images, reference.images, rtol=0, atol=0)
    changed[:, 3] = float("nan")  # absent: any value, NaN included
    out = joint_model(changed, mask("1110", "1110", "1110"), subset, temperature=0.0)
    assert torch.isfinite(out.images).all() and all(torch.isfinite(k).all() for k in out.kl)
    torch.testing.assert_close(out.images, reference.images, rtol=0, atol=0)


def test_joint_encoder_mixed_subsets_in_one_batch_equal_separate_runs(joint_model: MMHVAE) -> None:
    images = random_images()
    subsets = mask("1111", "1000", "0101")
    features = joint_model.encode(images, all_present())
    together = joint_model.decode(features, subsets, temperature=0.0)
    for i in range(B):
        alone = joint_model.decode(features.index(torch.tensor([i])), subsets[i : i + 1], temperature=0.0)
        torch.testing.assert_close(together.images[i : i + 1], alone.images, rtol=1e-4, atol=1e-5)
        for a, b in zip(together.kl, alone.kl):
            torch.testing.assert_close(a[i : i + 1], b, rtol=1e-4, atol=1e-3)
    # The subset changes the joint encoder's input, hence the output (the features are not encoded once).
    assert not torch.allclose(together.images[0], joint_model.decode(features.index(torch.tensor([0])),
                                                                      mask("1000"), temperature=0.0).images[0])


def test_joint_encoder_empty_subset_samples_from_the_prior_and_needs_poe(joint_model: MMHVAE) -> None:
    out = joint_model(random_images(), all_present(), torch.zeros(B, M, dtype=torch.bool), temperature=0.0)
    torch.testing.assert_close(out.kl_total, torch.zeros(B), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="fusion 'poe'"):
        tiny_config(encoder="joint", fusion="average")
    with pytest.raises(ValueError, match="encoder must be"):
        tiny_config(encoder="shared")
    with pytest.raises(ValueError, match="own `encode`"):
        joint_model.decode(MMHVAE(tiny_config()).encode(random_images(), all_present()), all_present())
    config = tiny_config(encoder="joint")
    assert MMHVAEConfig.from_dict(config.to_dict()) == config


def test_activation_checkpointing_gives_the_same_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    plain = MMHVAE(tiny_config(image_size=32, num_pool=3, latent_channels=(2, 4, 4)))
    recomputed = copy.deepcopy(plain).recompute_levels(2)
    images = torch.randn(3, 4, 32, 32)
    present = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    results = []
    for model in (plain, recomputed):
        out = model(images, present, sample=False)
        loss = out.images.square().mean() + out.kl_total.mean()
        loss.backward()
        results.append((out.images.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                              if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_activation_checkpointing_keeps_fewer_activations() -> None:
    torch.manual_seed(0)
    plain = MMHVAE(tiny_config(image_size=32, num_pool=3, latent_channels=(2, 4, 4)))
    recomputed = copy.deepcopy(plain).recompute_levels(2)
    images, present = torch.randn(2, 4, 32, 32), torch.ones(2, 4, dtype=torch.bool)

    def saved_elements(model) -> int:
        count = [0]

        def pack(tensor):
            count[0] += tensor.numel()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(images, present, sample=False).images.sum()
        return count[0]

    # 0.31 with the experts, the fusion and the upsampling recomputed too; 0.50 when only the cells were
    assert saved_elements(recomputed) < 0.4 * saved_elements(plain)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_blocks_give_the_same_outputs_and_keep_the_state_dict_keys(monkeypatch) -> None:
    import torch._dynamo

    # as if the network had more blocks of one class than torch's default limit of recompilations covers (the
    # paper setting's 6 top-down cells at two batch sizes do): none may silently fall back to eager execution
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    config = tiny_config(image_size=32, num_pool=3, latent_channels=(2, 4, 4), global_latent=8,
                               base_features=4, max_features=8, decoder_blocks=1)
    plain = MMHVAE(config).eval()
    compiled = copy.deepcopy(plain).compile_blocks()
    images = torch.randn(2, 4, 32, 32)
    present = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        expected = plain(images, present, sample=False).images
        got = compiled(images, present, sample=False).images
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    frames = torch._dynamo.utils.counters["frames"]
    assert frames["total"] == frames["ok"] > 0, dict(torch._dynamo.utils.counters["unimplemented"])
    assert list(compiled.state_dict()) == list(plain.state_dict())


def test_compiling_without_a_cpp_compiler_is_refused_before_any_work(monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    config = tiny_config(image_size=32, num_pool=3, latent_channels=(2, 4, 4), global_latent=8,
                               base_features=4, max_features=8, decoder_blocks=1)
    with pytest.raises(InputError, match="needs a C.. compiler"):
        MMHVAE(config).compile_blocks()

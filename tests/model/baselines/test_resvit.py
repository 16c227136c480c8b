"""Tests of the ResViT baseline network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import erf

from mmhvae.config import load_config
from mmhvae.model.baselines.resvit import ResViT, ResViTConfig
from mmhvae.model.interface import EncodedImages
from mmhvae.model.registry import build_network, network_config_for_method, network_config_from_dict
from network_inputs import SIZE, B, M, all_present, count_parameters, mask, random_images, tiny_config

from conftest import vit_checkpoint


def small_config(**overrides) -> ResViTConfig:
    """The tiny setting's ResViT with two transformer layers: the same structure, quicker to test."""
    return ResViTConfig.like(tiny_config(), transformer_layers=2, **overrides)


@pytest.fixture(scope="module")
def resvit() -> ResViT:
    torch.manual_seed(0)
    return ResViT(small_config()).eval()



def test_shapes_range_and_no_kl(resvit: ResViT) -> None:
    features = resvit.encode(random_images(), all_present())
    assert isinstance(features, EncodedImages)
    out = resvit.decode(features, mask("1111", "1000", "0110"))
    assert out.images.shape == (B, M, SIZE, SIZE) and out.images.abs().max() <= 1.0
    assert out.kl == [] and out.z1_mean is None
    with pytest.raises(ValueError, match="not encoded"):
        resvit.decode(resvit.encode(random_images(), mask("1000", "1000", "1000")), mask("1100", "1000", "1000"))


def test_only_the_subset_influences_the_output_and_batching_is_exact(resvit: ResViT) -> None:
    images = random_images()
    subsets = mask("1010", "0110", "1000")
    reference = resvit(images, all_present(), subsets).images
    changed = images.clone()
    changed[:, 3] = float("nan")  # flair is in no subset, and absent: it may hold anything
    changed[0, 1] = 5.0  # t2 is outside sample 0's subset only
    out = resvit(changed, mask("1110", "1110", "1110"), subsets).images
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    features = resvit.encode(images, all_present())
    for i in range(B):  # instance norm and per-sample attention: a row alone gives what it gives in a batch
        alone = resvit.decode(features.index(torch.tensor([i])), subsets[i : i + 1])
        torch.testing.assert_close(reference[i : i + 1], alone.images, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(resvit(images[:1], all_present(1), mask("1000")).images,
                              resvit(images[:1], all_present(1), mask("1100")).images)


def test_the_transformer_is_shared_by_blocks_1_and_6_and_changes_the_output() -> None:
    torch.manual_seed(0)
    model = ResViT(small_config()).eval()
    branches = [i for i, block in enumerate(model.blocks, start=1) if block.branch is not None]
    assert branches == [1, 6]
    assert model.blocks[0].branch.encoder is model.blocks[5].branch.encoder
    assert model.blocks[0].branch.up is not model.blocks[5].branch.up  # only the ViT encoder is shared
    images = random_images(batch=1)
    before = model(images, all_present(1)).images
    with torch.no_grad():
        model.blocks[0].branch.encoder.layers[0].linear2.weight.add_(0.5)
    assert not torch.allclose(model(images, all_present(1)).images, before)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = ResViT(small_config())
    images = random_images(batch=2)
    out = model(images, all_present(2), mask("1010", "0001"))
    (out.images - images).abs().mean().backward()
    assert not [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


def test_the_paper_setting_is_the_original_resvit_and_tiny_is_a_quarter_of_its_widths() -> None:
    paper = network_config_for_method("resvit", load_config("paper").model)
    original = ResViTConfig()  # Res-ViT-B_16: ngf 64, hidden 768, 12 layers, 12 heads, MLP 3072
    assert paper == ResViTConfig(modalities=paper.modalities, image_size=192)
    assert (original.base_features, original.hidden_size, original.transformer_layers, original.heads,
            original.mlp_size, original.art_blocks, original.transformer_blocks) == (64, 768, 12, 12, 3072, 9, (1, 6))
    tiny = network_config_for_method("resvit", load_config("tiny").model)
    assert (tiny.base_features, tiny.hidden_size, tiny.heads, tiny.mlp_size, tiny.image_size) == (16, 192, 3, 768, 64)
    # The ViT encoder counts once although two blocks hold it.
    model = ResViT(small_config())
    vit = count_parameters(model.blocks[0].branch.encoder)
    assert count_parameters(model) == sum(count_parameters(part) for part in (model.encoder, model.decoder)) + sum(
        count_parameters(block) for block in model.blocks) - vit


def test_config_round_trip_validation_and_registry(tmp_path) -> None:
    config = small_config()
    values = config.to_dict()
    assert values["variant"] == "resvit" and ResViTConfig.from_dict(values) == config
    assert network_config_from_dict(values) == config
    for bad in (dict(image_size=40), dict(heads=5), dict(transformer_blocks=(0,)), dict(variant="mmgan"),
                dict(transformer_blocks=(2, 2))):
        with pytest.raises(ValueError, match="ResViTConfig"):
            small_config(**bad)
    torch.manual_seed(0)
    model = build_network(values).eval()
    assert isinstance(model, ResViT)
    torch.save({"config": model.to_dict(), "state_dict": model.state_dict()}, tmp_path / "model.pt")
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    restored = build_network(saved["config"]).eval()
    restored.load_state_dict(saved["state_dict"])
    images = random_images(batch=2)
    torch.testing.assert_close(model(images, all_present(2)).images, restored(images, all_present(2)).images,
                               rtol=0, atol=0)
    assert network_config_for_method("resvit", config) == config
    with pytest.raises(ValueError, match="needs an MMHVAE or resvit"):
        network_config_for_method("resvit", network_config_for_method("mmgan", tiny_config()))


def flax_vit_encoder(arrays: dict[str, np.ndarray], tokens: np.ndarray, layers: int) -> np.ndarray:
    """The reference: Google's ViT encoder (pre-norm blocks, then encoder_norm) computed from the checkpoint's
    Flax-shaped arrays as they are, in numpy; exact GELU, as ResViT's PyTorch ViT has."""

    def layer_norm(x, prefix):
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
        return x * arrays[f"{prefix}/scale"] + arrays[f"{prefix}/bias"]

    x = tokens.astype(np.float64)
    for index in range(layers):
        root = f"Transformer/encoderblock_{index}"
        attention = f"{root}/MultiHeadDotProductAttention_1"
        y = layer_norm(x, f"{root}/LayerNorm_0")
        q, k, v = (np.einsum("nd,dhk->nhk", y, arrays[f"{attention}/{p}/kernel"]) + arrays[f"{attention}/{p}/bias"]
                   for p in ("query", "key", "value"))
        logits = np.einsum("nhk,mhk->hnm", q, k) / np.sqrt(q.shape[-1])
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        heads = np.einsum("hnm,mhk->nhk", weights, v)
        x = x + np.einsum("nhk,hkd->nd", heads, arrays[f"{attention}/out/kernel"]) + arrays[f"{attention}/out/bias"]
        y = layer_norm(x, f"{root}/LayerNorm_2") @ arrays[f"{root}/MlpBlock_3/Dense_0/kernel"]
        y = y + arrays[f"{root}/MlpBlock_3/Dense_0/bias"]
        y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
        x = x + y @ arrays[f"{root}/MlpBlock_3/Dense_1/kernel"] + arrays[f"{root}/MlpBlock_3/Dense_1/bias"]
    return layer_norm(x, "Transformer/encoder_norm")


def test_imagenet_vit_weights_load_into_the_shared_encoder_as_googles_vit_computes() -> None:
    config = small_config()
    torch.manual_seed(0)
    model = ResViT(config).eval()
    untouched = {name: p.clone() for name, p in model.named_parameters() if "encoder.layers" not in name
                 and "encoder.norm" not in name and "position" not in name}
    arrays = vit_checkpoint(config.transformer_layers, config.hidden_size, config.heads, config.mlp_size, grid=7)
    arrays["Transformer/posembed_input/pos_embedding"][0, 0] = 1e3  # the class token: must be dropped
    model.load_vit_weights(arrays)
    tokens = np.random.default_rng(1).standard_normal((10, config.hidden_size)).astype(np.float32)
    with torch.no_grad():
        ours = model.shared_encoder(torch.from_numpy(tokens)[None])[0].double().numpy()
    np.testing.assert_allclose(ours, flax_vit_encoder(arrays, tokens, config.transformer_layers), atol=1e-4)
    # The convolutions and patch embeddings keep their weights.
    assert all(torch.equal(p, untouched[name]) for name, p in model.named_parameters() if name in untouched)


def test_the_vit_position_embedding_is_resized_bilinearly_to_the_token_grid_in_every_branch() -> None:
    config = small_config()
    model = ResViT(config)
    arrays = vit_checkpoint(config.transformer_layers, config.hidden_size, config.heads, config.mlp_size, grid=7)
    # A plane in the grid's coordinates (corners at 0 and 1), which bilinear resizing with aligned corners keeps.
    slope = np.random.default_rng(2).standard_normal((3, config.hidden_size)).astype(np.float32)

    def plane(side: int) -> np.ndarray:
        row, col = np.meshgrid(np.linspace(0, 1, side), np.linspace(0, 1, side), indexing="ij")
        return (row[..., None] * slope[0] + col[..., None] * slope[1] + slope[2]).reshape(1, side * side, -1)

    arrays["Transformer/posembed_input/pos_embedding"] = np.concatenate([np.full((1, 1, config.hidden_size), 1e3),
                                                                         plane(7)], axis=1)
    model.load_vit_weights(arrays)
    for block in (model.blocks[0], model.blocks[5]):
        np.testing.assert_allclose(block.branch.position.detach().numpy(), plane(config.token_grid), atol=1e-5)


def test_a_vit_checkpoint_that_does_not_fit_is_refused_naming_what_differs() -> None:
    config = small_config()
    model = ResViT(config)
    fits = dict(layers=config.transformer_layers, hidden=config.hidden_size, heads=config.heads, mlp=config.mlp_size,
                grid=7)
    with pytest.raises(ValueError, match="3 layers of width"):
        model.load_vit_weights(vit_checkpoint(**{**fits, "layers": 3}))
    with pytest.raises(ValueError, match="1 heads"):
        model.load_vit_weights(vit_checkpoint(**{**fits, "heads": 1}))
    missing = vit_checkpoint(**fits)
    del missing["Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"]
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(ValueError, match="encoderblock_1/MlpBlock_3/Dense_1/bias"):
        model.load_vit_weights(missing)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())  # untouched
    text = vit_checkpoint(**fits)
    text["Transformer/encoder_norm/bias"] = np.array(["x"] * config.hidden_size)
    with pytest.raises(ValueError, match="encoder_norm/bias' is not numeric"):
        model.load_vit_weights(text)
    with pytest.raises(ValueError, match="no transformer blocks"):
        ResViT(small_config(transformer_blocks=())).load_vit_weights(vit_checkpoint(**fits))

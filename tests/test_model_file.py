"""Tests of loading model files for inference."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from mmhvae.errors import InputError
from mmhvae.inference.predict import prepare_for_model
from mmhvae.inference.synthesis import synthesise
from mmhvae.io.layouts import discover_subjects
from mmhvae.io.subjects import load_subject
from mmhvae.methods import METHODS
from mmhvae.model.mmhvae_config import MMHVAEConfig
from mmhvae.model.registry import build_network, network_config_for_method
from mmhvae.model_file import load_model_file, save_model_file, weights_checksum
from mmhvae.preprocessing.prepare import PreprocessConfig

from conftest import phantom_subject

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "phantom-tiny.pt"

SMALL = MMHVAEConfig(image_size=32, num_pool=3, latent_channels=(2, 4, 4), global_latent=8, base_features=4,
                     max_features=8, decoder_blocks=1)
SUBSETS = [("us",), ("t2", "t1c"), ("us", "t2", "t1c")]


def convolution_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]


@pytest.mark.parametrize("method", METHODS)
def test_cpu_inference_layout_gives_the_default_layouts_syntheses(method, tmp_path):
    """Channels-last (where the network asks for it on CPUs) changes float rounding only, seeded noise included."""
    torch.manual_seed(0)
    config = network_config_for_method(method, SMALL)
    network = build_network(config.to_dict()).eval()
    path = save_model_file(tmp_path / f"{method}.pt", network,
                           PreprocessConfig(modalities=config.modalities, image_size=32))
    loaded = load_model_file(path)
    layout = torch.channels_last if loaded.model.cpu_inference_channels_last else torch.contiguous_format
    assert all(w.is_contiguous(memory_format=layout) for w in convolution_weights(loaded.model))

    default_layout = copy.deepcopy(loaded.model).to(memory_format=torch.contiguous_format)
    (files,) = discover_subjects(phantom_subject(tmp_path / "s", ("us", "t2", "t1c")))
    prepared = prepare_for_model(load_subject(files, loaded.modalities), loaded)
    subsets = [s for s in SUBSETS if set(s) <= set(loaded.modalities)]  # mhvae: us and t2 only
    fast, plain = (synthesise(model, prepared, subsets, temperature=0.5) for model in (loaded.model, default_layout))
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_allclose(a.mean, b.mean, atol=1e-4)


def test_channels_last_is_chosen_where_it_was_measured_faster():
    """docs/performance.md: faster on CPUs for MMHVAE and the methods built like it, not for MM-GAN or ResViT."""
    chosen = {method: build_network(network_config_for_method(method, SMALL).to_dict()).cpu_inference_channels_last
              for method in METHODS}
    assert chosen == {method: method not in ("mmgan", "resvit") for method in METHODS}


def test_the_weights_checksum_does_not_depend_on_the_memory_layout():
    """A network loaded for CPU inference (channels-last) can be saved again: its 1x1 weights are strided."""
    network = build_network(SMALL.to_dict())
    plain = weights_checksum(network.state_dict())
    assert weights_checksum(network.to(memory_format=torch.channels_last).state_dict()) == plain


def test_a_model_file_that_does_not_name_its_input_normalisation_gets_ours(tmp_path):
    """The shipped model (written before preprocessing named the input normalisation) and its like."""
    assert "input_normalisation" not in torch.load(SHIPPED_MODEL, weights_only=True)["preprocess"]
    assert load_model_file(SHIPPED_MODEL).preprocess.input_normalisation == "mmhvae"
    path = save_model_file(tmp_path / "ours.pt", build_network(SMALL.to_dict()),
                           PreprocessConfig(modalities=SMALL.modalities, image_size=32))
    payload = torch.load(path, weights_only=True)
    assert payload["preprocess"]["input_normalisation"] == "mmhvae"
    del payload["preprocess"]["input_normalisation"]
    torch.save(payload, tmp_path / "earlier.pt")
    assert load_model_file(tmp_path / "earlier.pt").preprocess == load_model_file(path).preprocess


def test_an_unknown_input_normalisation_is_an_input_error_naming_the_file(tmp_path):
    path = save_model_file(tmp_path / "ours.pt", build_network(SMALL.to_dict()),
                           PreprocessConfig(modalities=SMALL.modalities, image_size=32))
    payload = torch.load(path, weights_only=True)
    payload["preprocess"]["input_normalisation"] = "z-score"
    torch.save(payload, path)
    with pytest.raises(InputError, match="section 'preprocess': input_normalisation must be one of mmhvae, authors, "
                                         "got 'z-score'") as error:
        load_model_file(path)
    assert error.value.path == path

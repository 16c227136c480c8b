"""The CUDA paths give the CPU's results: run where a GPU is (`bash benchmarks/gpu_check.sh` on a lent device
machine); skipped elsewhere, as on CI, whose machines have none."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmhvae.inference.predict import predict, prepare_for_model
from mmhvae.inference.synthesis import synthesise
from mmhvae.io.layouts import discover_subjects
from mmhvae.io.subjects import load_subject
from mmhvae.methods import METHODS
from mmhvae.model.mmhvae_config import MMHVAEConfig
from mmhvae.model.registry import build_network, network_config_for_method
from mmhvae.model_file import load_model_file, save_model_file
from mmhvae.preprocessing.prepare import PreprocessConfig

from conftest import SMALL_CONFIG, phantom_subject, small_cohort

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SMALL = MMHVAEConfig(image_size=32, num_pool=3, latent_channels=(2, 4, 4), global_latent=8, base_features=4,
                     max_features=8, decoder_blocks=1)
SUBSETS = [("us",), ("t2", "t1c"), ("us", "t2", "t1c")]


def small_model_file(folder, method: str):
    torch.manual_seed(0)
    network = build_network(network_config_for_method(method, SMALL).to_dict()).eval()
    return save_model_file(folder / f"{method}.pt", network, PreprocessConfig(modalities=SMALL.modalities,
                                                                               image_size=32))


def syntheses(path, subject, device: str, precision: str = "fp32") -> list[np.ndarray]:
    loaded = load_model_file(path)
    loaded.model.to(device)
    (files,) = discover_subjects(subject)
    prepared = prepare_for_model(load_subject(files, loaded.modalities), loaded)
    subsets = [s for s in SUBSETS if set(s) <= set(loaded.modalities)]  # mhvae: us and t2 only
    return [s.mean for s in synthesise(loaded.model, prepared, subsets, temperature=0.5, precision=precision)]


@pytest.mark.parametrize("method", METHODS)
def test_cuda_float32_synthesis_equals_the_cpus_noise_included(method, tmp_path):
    """Same seeded noise on both devices (RowNoise draws on the CPU); cuDNN's TF32 convolutions round more."""
    path = small_model_file(tmp_path, method)
    subject = phantom_subject(tmp_path / "s", ("us", "t2", "t1c"))
    for cpu, cuda in zip(syntheses(path, subject, "cpu"), syntheses(path, subject, "cuda"), strict=True):
        difference = np.abs(cpu - cuda)
        assert difference.mean() < 2e-3 and difference.max() < 5e-2, (difference.mean(), difference.max())


def test_cuda_bf16_autocast_stays_close_to_float32(tmp_path):
    path = small_model_file(tmp_path, "mmhvae")
    subject = phantom_subject(tmp_path / "s", ("us", "t2", "t1c"))
    exact, fast = syntheses(path, subject, "cuda"), syntheses(path, subject, "cuda", precision="bf16")
    for a, b in zip(exact, fast, strict=True):
        difference = np.abs(a - b)
        assert difference.max() > 0  # bf16 did run
        assert difference.mean() < 0.01 and difference.max() < 0.1


def test_compiled_prediction_equals_the_eager_one(tmp_path):
    import nibabel as nib

    path = small_model_file(tmp_path, "mmhvae")
    subject = phantom_subject(tmp_path / "s", ("us", "t2", "t1c"))
    eager = predict(path, subject, tmp_path / "eager", device="cuda", precision="fp32")
    compiled = predict(path, subject, tmp_path / "compiled", device="cuda", precision="fp32", compile_network=True)
    assert len(eager) == len(compiled) == 4
    for a, b in zip(sorted(eager), sorted(compiled), strict=True):
        difference = np.abs(np.asarray(nib.load(a).dataobj) - np.asarray(nib.load(b).dataobj))
        assert difference.max() < 5e-2 and difference.mean() < 2e-3


@pytest.mark.parametrize("method", ["mmhvae", "resvit", "m2dn"])
def test_training_on_the_gpu_in_bf16_mixed_precision(method, tmp_path):
    from mmhvae.training.trainer import train

    config = tmp_path / "bf16.yaml"
    config.write_text(SMALL_CONFIG + "  precision: bf16-mixed\n")
    cohort = small_cohort(tmp_path / "cohort")
    model_path = train(cohort, tmp_path / "run", config, max_steps=4, progress=False, accelerator="gpu",
                       method=method)
    loaded = load_model_file(model_path)
    assert loaded.meta["steps"] == 4
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())


@pytest.mark.parametrize("affine", [False, True])
def test_the_group_norm_kernel_gives_torchs_instance_norm_on_cuda(affine, monkeypatch):
    """`benchmarks/bench_kernels.py` times both kernels on a GPU; they must agree there as on the CPU."""
    from torch import nn

    from mmhvae.model.blocks import InstanceNorm2d

    monkeypatch.setattr(InstanceNorm2d, "group_norm_devices", ("cpu", "cuda"))
    torch.manual_seed(0)
    ours, reference = InstanceNorm2d(6, affine=affine).cuda(), nn.InstanceNorm2d(6, affine=affine).cuda()
    x = (3 * torch.randn(3, 6, 9, 7, device="cuda") + 2).requires_grad_()
    y_ours, (gradient_ours,) = ours(x), torch.autograd.grad(ours(x).square().sum(), x)
    y_reference, (gradient_reference,) = reference(x), torch.autograd.grad(reference(x).square().sum(), x)
    torch.testing.assert_close(y_ours, y_reference)
    torch.testing.assert_close(gradient_ours, gradient_reference)

"""The demo job end to end with a small model (the shipped one is exercised by `make demo`)."""

from __future__ import annotations

import logging

import torch

from mmhvae.experiments.demo import run_demo
from mmhvae.model.mmhvae import MMHVAE
from mmhvae.model.mmhvae_config import MMHVAEConfig
from mmhvae.model_file import save_model_file
from mmhvae.preprocessing.prepare import PreprocessConfig


def test_demo_writes_predictions_figure_and_table(tmp_path, caplog):
    config = MMHVAEConfig(image_size=32, num_pool=3, latent_channels=(2, 4, 4), global_latent=8, base_features=4,
                          max_features=8, decoder_blocks=1)
    caplog.set_level(logging.INFO, logger="mmhvae")
    torch.manual_seed(0)
    model = save_model_file(tmp_path / "m.pt", MMHVAE.from_config(config).eval(),
                            PreprocessConfig(modalities=config.modalities, image_size=32))
    out = run_demo(tmp_path / "demo", model=model)
    assert len(list((out / "predictions").glob("*/*/*.nii.gz"))) == 15 * 4
    assert (out / "fig3.png").stat().st_size > 1000
    table = (out / "table.md").read_text()
    assert table.count("| mmhvae |") == 15
    assert "outputs:" in caplog.text
    # step 4: the sd and the interval of T2 from US next to its error; an uncalibrated model writes no interval
    assert (out / "uncertainty.png").stat().st_size > 10_000
    written = sorted(p.name for p in (out / "uncertainty" / "sub-000" / "us").glob("*.nii.gz"))
    assert written == sorted([f"{m}{s}.nii.gz" for m in config.modalities for s in ("", "_std")])
    assert "(uncalibrated: the raw sd read as a Gaussian): the 90% interval holds the truth at" in table

"""What does a plain supervised network reach on one harmonisation or synthesis? A reference for a quality bar.

A diagnosis for models/README.md, not a method of this toolkit: a MONAI U-Net (skip connections at every scale,
no latent bottleneck, no missing data, one target) learns `--target` from `--inputs` on the slices of a training
cohort where all of them are present (absolute error inside the FOV, Adam), and is scored on the held-out cohort
as `mmhvae evaluate` scores (SSIM and PSNR inside the FOV, mean over slices then subjects). If it beats the demo
model by far, the data allow the bar and the demo model's capacity is what falls short.

    python scripts/supervised_probe.py --train runs/phantom-train --test runs/phantom-test \\
        --inputs flair --target flair --steps 3000
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from decoder_probe import random_batch, scored_slices, volume_scores
from monai.networks.nets import UNet

from mmhvae.io.layouts import discover_subjects
from mmhvae.preprocessing.prepare import PreparedSubject, PreprocessConfig, load_prepared
from mmhvae.training.data import SliceDataset


@torch.no_grad()
def score(net: torch.nn.Module, test: list[PreparedSubject], channels: list[int], target: int) -> str:
    net.eval()
    scores = []
    for prepared in test:
        x = scored_slices(prepared)[:, channels]
        scores.append(volume_scores(net(x)[:, 0], prepared, target))
    net.train()
    ssim, psnr = np.mean(scores, 0)
    return f"SSIM {ssim:.3f} PSNR {psnr:.2f} dB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="training cohort")
    parser.add_argument("--test", required=True, help="held-out cohort with every modality")
    parser.add_argument("--inputs", required=True, help="comma-separated input modalities")
    parser.add_argument("--target", required=True)
    parser.add_argument("--modalities", default="us,t2,t1c,flair", help="the cohort's modalities, in order")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=500, help="score every this many steps")
    args = parser.parse_args()

    torch.manual_seed(0)
    modalities = args.modalities.split(",")
    preprocess = PreprocessConfig(modalities=tuple(modalities))
    channels = [modalities.index(m) for m in args.inputs.split(",")]
    target = modalities.index(args.target)
    needed = [*channels, target]
    train = [p for p in (load_prepared(f, preprocess) for f in discover_subjects(args.train))
             if p.present[needed].all()]
    test = [load_prepared(f, preprocess) for f in discover_subjects(args.test)]
    slices = SliceDataset(train)
    net = UNet(spatial_dims=2, in_channels=len(channels), out_channels=1, channels=(16, 32, 64, 128),
               strides=(2, 2, 2), num_res_units=2)
    optimiser = torch.optim.Adam(net.parameters(), lr=args.lr)
    print(f"{len(train)} training subjects, {len(slices)} slices; U-Net of "
          f"{sum(p.numel() for p in net.parameters()):,} parameters", flush=True)
    rng = np.random.default_rng(0)
    for step in range(1, args.steps + 1):
        batch = random_batch(slices, rng)
        x, y, fov = batch["inputs"][:, channels], batch["targets"][:, target], batch["fov"].float()
        loss = ((net(x)[:, 0] - y).abs() * fov).sum() / fov.sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % args.every == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.4f} {score(net, test, channels, target)}", flush=True)


if __name__ == "__main__":
    main()

"""Is an image decoder the bottleneck of a harmonisation? Retrain one on frozen z_1 and score it again.

A diagnosis for models/README.md. The model is frozen; z_1 is its posterior mean (temperature 0) fused from the
given input modalities. One image decoder, either a copy of the model's own (`--width 0`) or a fresh one of the
given width, is trained for `--steps` steps (Adam, squared error) on slices of a training cohort where the inputs
and the target are present, then scored on the held-out cohort as `mmhvae evaluate` scores (SSIM and PSNR
inside the FOV, mean over slices then subjects). If the retrained decoder scores far higher, the decoder was the
limit; if not, z_1 lacks what the target needs.

    python scripts/decoder_probe.py --model models/phantom-tiny.pt --train runs/phantom-train \\
        --test runs/phantom-test --target flair --inputs flair --steps 600
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from mmhvae.evaluation.scoring import score as evaluate_score
from mmhvae.io.layouts import discover_subjects
from mmhvae.model.mmhvae import MMHVAE, image_decoder
from mmhvae.model_file import load_model_file
from mmhvae.preprocessing.prepare import PreparedSubject, load_prepared
from mmhvae.training.data import SliceDataset


def scored_slices(prepared: PreparedSubject) -> torch.Tensor:
    """The inputs of the slices `mmhvae evaluate` scores, [S, M, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(prepared.inputs[..., prepared.slices], -1, 0)))


def random_batch(slices: SliceDataset, rng: np.random.Generator, size: int = 16) -> dict[str, torch.Tensor]:
    """`size` distinct training slices drawn by `rng`, stacked per key."""
    return default_collate([slices[i] for i in rng.choice(len(slices), size, replace=False)])


@torch.no_grad()
def z1_and_output(model: MMHVAE, inputs: torch.Tensor, present: torch.Tensor, subset: torch.Tensor,
                  target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean of z_1 from `subset`, and the model's own output for the target modality."""
    out = model.decode(model.encode(inputs, present), subset.expand(len(inputs), -1), temperature=0.0)
    return out.z1_mean, out.images[:, target]


def volume_scores(slices: torch.Tensor, prepared: PreparedSubject, target: int) -> tuple[float, float]:
    volume = np.full(prepared.targets[target].shape, -1.0, np.float32)
    volume[..., prepared.slices] = np.moveaxis(slices.numpy(), 0, -1)
    rows = evaluate_score(volume, prepared.targets[target], prepared.fov, with_lpips=False)
    return float(np.mean([r["ssim"] for r in rows])), float(np.mean([r["psnr"] for r in rows]))


def frozen_test_latents(model: MMHVAE, test: list[PreparedSubject], subset: torch.Tensor,
                        target: int) -> tuple[list[torch.Tensor], str]:
    """z_1 of every test subject (the model is frozen, so once for the whole probe) and the model's own score."""
    latents, own = [], []
    for prepared in test:
        inputs = scored_slices(prepared)
        present = torch.from_numpy(prepared.present).expand(len(inputs), -1)
        z1, output = z1_and_output(model, inputs, present, subset, target)
        latents.append(z1)
        own.append(volume_scores(output, prepared, target))
    own_ssim, own_psnr = np.mean(own, 0)
    return latents, f"model's decoder SSIM {own_ssim:.3f} PSNR {own_psnr:.2f} dB"


@torch.no_grad()
def score(decoder: nn.Module, test: list[PreparedSubject], latents: list[torch.Tensor], target: int) -> str:
    """Mean SSIM and PSNR of the probe decoder over the test subjects."""
    decoder.eval()
    probe = [volume_scores(decoder(z1)[:, 0], prepared, target) for prepared, z1 in zip(test, latents)]
    decoder.train()
    probe_ssim, probe_psnr = np.mean(probe, 0)
    return f"probe decoder SSIM {probe_ssim:.3f} PSNR {probe_psnr:.2f} dB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", required=True, help="training cohort (the probe decoder learns on it)")
    parser.add_argument("--test", required=True, help="held-out cohort with every modality")
    parser.add_argument("--target", required=True)
    parser.add_argument("--inputs", required=True, help="comma-separated input modalities fused into z_1")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--width", type=int, default=0, help="0: copy the model's decoder; else a fresh one")
    parser.add_argument("--blocks", type=int, default=2, help="ResNet blocks of a fresh decoder")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=200, help="score every this many steps")
    args = parser.parse_args()

    torch.manual_seed(0)
    loaded = load_model_file(args.model)
    model, modalities = loaded.model, list(loaded.modalities)
    inputs = args.inputs.split(",")
    target = modalities.index(args.target)
    subset = torch.tensor([m in inputs for m in modalities])
    needed = [modalities.index(m) for m in {*inputs, args.target}]
    train = [p for p in (load_prepared(f, loaded.preprocess) for f in discover_subjects(args.train))
             if p.present[needed].all()]
    test = [load_prepared(f, loaded.preprocess) for f in discover_subjects(args.test)]
    slices = SliceDataset(train)

    if args.width:
        decoder = image_decoder(model.config.latent_channels[0], args.width, args.blocks, model.config.norm)
    else:
        decoder = copy.deepcopy(model.decoders[target])
    decoder.train().requires_grad_(True)
    optimiser = torch.optim.Adam(decoder.parameters(), lr=args.lr)
    latents, own = frozen_test_latents(model, test, subset, target)
    print(f"{own}; step 0: {score(decoder, test, latents, target)}", flush=True)
    rng = np.random.default_rng(0)
    for step in range(1, args.steps + 1):
        batch = random_batch(slices, rng)
        z1, _ = z1_and_output(model, batch["inputs"], batch["present"], subset, target)
        loss = ((decoder(z1)[:, 0] - batch["targets"][:, target]) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % args.every == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.5f} {score(decoder, test, latents, target)}", flush=True)


if __name__ == "__main__":
    main()

"""Is one modality's encoder path under-trained? Retrain only it on that modality alone and score it again.

A diagnosis for models/README.md. Everything is frozen except the given modality's encoder and its experts at
every level (`--train-decoder` adds its image decoder). The model then trains for `--steps` steps (Adam,
temperature 1 as in training) on slices of a training cohort where that modality is present, always fusing that
modality alone, with either the loss on every observed modality (`--loss all`, absolute error summed over
the observed modalities) or the loss on that modality only (`--loss own`). Every `--every` steps it
prints the SSIM of each target from that modality alone on the held-out cohort (temperature 0, scored as
`mmhvae evaluate` scores). If the harmonisation rises with `--loss all` while the syntheses hold, the path was
under-trained by the mixture rather than short of capacity.

    python scripts/encoder_probe.py --model models/phantom-tiny.pt --train runs/phantom-train \\
        --test runs/phantom-test --modality flair --loss all --steps 300
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from decoder_probe import random_batch, scored_slices, volume_scores

from mmhvae.io.layouts import discover_subjects
from mmhvae.model.mmhvae import MMHVAE
from mmhvae.model_file import load_model_file
from mmhvae.preprocessing.prepare import PreparedSubject, load_prepared
from mmhvae.training.data import SliceDataset


def trainable_path(model: MMHVAE, j: int, with_decoder: bool) -> list[torch.nn.Parameter]:
    """Modality j's encoder and its expert heads at every spatial level (the global expert is shared)."""
    params = list(model.encoders[j].parameters())
    params += [p for level in model.experts.values() for p in level[j].parameters()]
    if with_decoder:
        params += list(model.decoders[j].parameters())
    return params


@torch.no_grad()
def ssim_per_target(model: MMHVAE, test: list[PreparedSubject], subset: torch.Tensor) -> np.ndarray:
    model.eval()
    scores = []
    for prepared in test:
        inputs = scored_slices(prepared)
        present = torch.from_numpy(prepared.present).expand(len(inputs), -1)
        out = model.decode(model.encode(inputs, present), subset.expand(len(inputs), -1), temperature=0.0)
        scores.append([volume_scores(out.images[:, j], prepared, j)[0] for j in range(out.images.shape[1])])
    model.train()
    return np.mean(scores, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", required=True, help="training cohort")
    parser.add_argument("--test", required=True, help="held-out cohort with every modality")
    parser.add_argument("--modality", required=True, help="the modality whose path is retrained and fused alone")
    parser.add_argument("--loss", choices=("all", "own"), default="all")
    parser.add_argument("--train-decoder", action="store_true")
    parser.add_argument("--subjects", type=int, default=4, help="test subjects scored (the first N)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()

    torch.manual_seed(0)
    loaded = load_model_file(args.model)
    model, modalities = loaded.model, list(loaded.modalities)
    j = modalities.index(args.modality)
    subset = torch.tensor([m == args.modality for m in modalities])
    test = [load_prepared(f, loaded.preprocess) for f in discover_subjects(args.test)[: args.subjects]]
    train = [p for p in (load_prepared(f, loaded.preprocess) for f in discover_subjects(args.train)) if p.present[j]]
    slices = SliceDataset(train)
    model.requires_grad_(False)
    params = trainable_path(model, j, args.train_decoder)
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(params, lr=args.lr)
    header = " ".join(f"{m:>6}" for m in modalities)
    print(f"{sum(p.numel() for p in params)} trainable parameters; SSIM from {args.modality} alone: {header}")
    print(f"step 0: {np.array2string(ssim_per_target(model, test, subset), precision=3)}", flush=True)
    rng = np.random.default_rng(0)
    for step in range(1, args.steps + 1):
        batch = random_batch(slices, rng)
        inputs, present, targets = batch["inputs"], batch["present"].bool(), batch["targets"]
        out = model.decode(model.encode(inputs, present), subset.expand(len(inputs), -1), temperature=1.0)
        errors = (out.images - targets).abs().flatten(2).mean(2)
        loss = (errors * present).sum(1).mean() if args.loss == "all" else errors[:, j].mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % args.every == 0 or step == args.steps:
            print(f"step {step}: {np.array2string(ssim_per_target(model, test, subset), precision=3)}", flush=True)


if __name__ == "__main__":
    main()

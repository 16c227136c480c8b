"""The `analyse` verb: Section 6's `latent` alignment of the subsets' latents (Fig. 4) and the effect of the
sampling `temperature` (Fig. 5), and the `uncertainty` maps' reliability and sparsification."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmhvae.cli.common import (
    add_device,
    add_model_file,
    add_no_lpips,
    add_overwrite,
    add_seed,
    add_temperature,
    print_written,
)


def run_analyse_latent(args: argparse.Namespace) -> int:
    from mmhvae.experiments.analyses.latent import analyse_latent

    result = analyse_latent(args.model, args.data, args.out, subject=args.subject,
                            slices=None if args.all_slices else args.slices, temperature=args.temperature,
                            pca_pixels=args.pca_pixels, seed=args.seed, device=args.device, overwrite=args.overwrite)
    print_written(result.files)
    return 0


def run_analyse_temperature(args: argparse.Namespace) -> int:
    from mmhvae.experiments.analyses.temperature import analyse_temperature

    result = analyse_temperature(args.model, args.data, args.out, temperatures=args.temperatures.split(","),
                                 pairs=[tuple(p.split(":", 1)) for p in args.pairs.split(",")],
                                 with_lpips=not args.no_lpips, subject=args.subject, samples=args.samples,
                                 seed=args.seed, device=args.device, overwrite=args.overwrite)
    print_written(result.files)
    return 0


def run_analyse_uncertainty(args: argparse.Namespace) -> int:
    from mmhvae.experiments.analyses.uncertainty import analyse_uncertainty

    result = analyse_uncertainty(args.model, args.data, args.out, samples=args.samples,
                                 temperature=args.temperature, seed=args.seed, device=args.device,
                                 overwrite=args.overwrite)
    print_written(result.files)
    return 0


def add_latent(kinds: argparse._SubParsersAction) -> None:
    latent = kinds.add_parser("latent", help="PCA of z_1 from every input subset of one subject (Fig. 4)")
    add_model_file(latent)
    latent.add_argument("--data", required=True, type=Path, help="data folder or one subject folder")
    latent.add_argument("--out", required=True, type=Path,
                        help="writes latent_pca.png, latent_similarity.csv and latent.md")
    latent.add_argument("--subject", default=None, help="subject name (default: the one with the most modalities)")
    latent.add_argument("--slices", type=int, default=8, help="central FOV slices analysed")
    latent.add_argument("--all-slices", action="store_true", help="every FOV slice, as in the paper (more memory)")
    add_temperature(latent, default=0.0, help="for z_>1 (0: posterior means, deterministic)")
    latent.add_argument("--pca-pixels", type=int, default=10000, help="pixel descriptors drawn to fit the PCA")
    add_seed(latent)
    add_device(latent)
    add_overwrite(latent)
    latent.set_defaults(func=run_analyse_latent)


def add_temperature_analysis(kinds: argparse._SubParsersAction) -> None:
    temp = kinds.add_parser("temperature", help="samples and PSNR/SSIM/LPIPS against temperature (Fig. 5)")
    add_model_file(temp)
    temp.add_argument("--data", required=True, type=Path, help="test subjects (with targets or tissue maps)")
    temp.add_argument("--out", required=True, type=Path, help="writes temperature_*.png/.csv and temperature.md")
    temp.add_argument("--temperatures", default="0,0.25,0.5,0.75,1", help="comma-separated, each >= 0")
    temp.add_argument("--pairs", default="us:t2,us:t1c", help="comma-separated SOURCE:TARGET; a source may be us+t2")
    temp.add_argument("--subject", default=None, help="subject of the figure (default: the first with every pair)")
    temp.add_argument("--samples", type=int, default=3, help="samples per temperature in the figure")
    add_seed(temp)
    add_no_lpips(temp)
    add_device(temp)
    add_overwrite(temp)
    temp.set_defaults(func=run_analyse_temperature)


def add_uncertainty_analysis(kinds: argparse._SubParsersAction) -> None:
    spread = kinds.add_parser("uncertainty", help="reliability diagram and sparsification curves of the sd maps")
    add_model_file(spread)
    spread.add_argument("--data", required=True, type=Path,
                        help="held-out subjects with ground truth (seen by neither training nor calibration)")
    spread.add_argument("--out", required=True, type=Path,
                        help="writes uncertainty_reliability.png, uncertainty_sparsification.png, their CSVs and "
                             "uncertainty.md")
    spread.add_argument("--samples", type=int, default=8, help="posterior samples per input subset (K >= 2)")
    add_temperature(spread, help="sampling temperature (a calibration applies at its own only)")
    add_seed(spread)
    add_device(spread)
    add_overwrite(spread)
    spread.set_defaults(func=run_analyse_uncertainty)


def add_parsers(verbs: argparse._SubParsersAction) -> None:
    """Register `analyse latent`, `analyse temperature` and `analyse uncertainty` on the `mmhvae` parser."""
    analyse = verbs.add_parser("analyse", help="latent alignment (Fig. 4), temperature (Fig. 5), uncertainty maps")
    kinds = analyse.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    add_latent(kinds)
    add_temperature_analysis(kinds)
    add_uncertainty_analysis(kinds)

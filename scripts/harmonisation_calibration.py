"""What does a harmonisation SSIM mean? References scored exactly as `mmhvae evaluate` scores the model.

A calibration for the harmonisation bar of the demo model (models/README.md), on a held-out cohort with every
modality present, SSIM inside the FOV as `mmhvae evaluate` takes it (data range 2, the background as zero
intensity), mean over slices then subjects:

- "input as it stands": the non-harmonised input scored against its target (the identity mapping);
- "truth, sigma s px": the target itself, smoothed in-plane by a Gaussian of s pixels (how sharp an output
  must be to reach a given SSIM);
- "model": the model's harmonisation of each modality from that modality alone, temperature 0.5;
- "model, smooth error removed (oracle)": the same with the low-frequency part of its error (a Gaussian of
  SMOOTH_SIGMA pixels, normalised inside the FOV) subtracted: what the model would score if only its
  slowly varying intensity errors (an input bias field or gamma not undone) were fixed. It uses the truth, so
  it is a diagnosis, never a result.

    python scripts/harmonisation_calibration.py runs/phantom-test models/phantom-tiny.pt
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.ndimage import gaussian_filter

from mmhvae.evaluation.per_slice import volume_metrics
from mmhvae.inference.synthesis import synthesise
from mmhvae.io.layouts import discover_subjects
from mmhvae.model_file import load_model_file
from mmhvae.preprocessing.prepare import load_prepared

BLUR_SIGMAS = (0.5, 0.7, 1.0, 1.5)
SMOOTH_SIGMA = 4.0


def mean_ssim(prediction: np.ndarray, target: np.ndarray, fov: np.ndarray) -> float:
    """SSIM inside the FOV, averaged over slices, as `mmhvae evaluate` computes it."""
    rows = volume_metrics(prediction, target, fov, axis=2, data_range=2.0, with_lpips=False)
    return float(np.mean([r["ssim"] for r in rows]))


def in_plane(sigma: float) -> tuple[float, float, float]:
    """Gaussian widths for a volume [H, W, S]: slices stay independent, as in the model."""
    return (sigma, sigma, 0.0)


def smooth_inside(volume: np.ndarray, fov: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing that only averages voxels of the FOV (normalised convolution), 0 outside it."""
    weight = gaussian_filter(fov.astype(np.float64), in_plane(sigma))
    total = gaussian_filter(np.where(fov, volume, 0.0), in_plane(sigma))
    return np.where(fov, total / np.maximum(weight, 1e-6), 0.0)


def main(data: str, model_path: str) -> None:
    loaded = load_model_file(model_path)
    modalities = loaded.modalities
    scores: dict[tuple[str, str], list[float]] = {}

    def add(reference: str, modality: str, value: float) -> None:
        scores.setdefault((reference, modality), []).append(value)

    for files in discover_subjects(data):
        prepared = load_prepared(files, loaded.preprocess)
        fov = prepared.fov
        for j in np.flatnonzero(prepared.present):
            key, target = modalities[j], prepared.targets[j]
            add("input as it stands", key, mean_ssim(prepared.inputs[j], target, fov))
            for sigma in BLUR_SIGMAS:
                add(f"truth, sigma {sigma:g} px", key, mean_ssim(gaussian_filter(target, in_plane(sigma)), target, fov))
            output = synthesise(loaded.model, prepared, [(key,)])[0].mean[j]
            add("model (from this modality alone)", key, mean_ssim(output, target, fov))
            smooth_error = smooth_inside(output - target, fov, SMOOTH_SIGMA)
            add(f"model, smooth error removed (oracle, {SMOOTH_SIGMA:g} px)", key,
                mean_ssim(output - smooth_error, target, fov))

    print("| reference | " + " | ".join(modalities) + " |")
    print("|---|" + "---|" * len(modalities))
    for name in dict.fromkeys(k[0] for k in scores):
        cells = [f"{np.mean(scores[(name, m)]):.3f}" if (name, m) in scores else "" for m in modalities]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nSSIM inside the FOV, mean over slices then subjects ({data}, {model_path}, temperature 0.5).")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

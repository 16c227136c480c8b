"""Does sampling spread mean anything? For a model and test subjects: the per-voxel sd of K posterior samples
(`predict --samples K`) against the absolute error of their mean, inside the field of view, per temperature.

A posterior that has collapsed onto its mean gives samples that barely differ (sd far below the error) and a
temperature that changes nothing; Eq. 19's KL weight keeps the posterior wider (docs/model.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmhvae.evaluation.scoring import load_models, prepared_for_evaluation
from mmhvae.inference.synthesis import synthesise
from mmhvae.io.layouts import SubjectFiles
from mmhvae.modalities import ModalitySet

TEMPERATURES = (0.5, 1.0)
SAMPLES = 8
INPUTS = ("us",)


def spread_rows(model: Path, name: str, subjects: Sequence[SubjectFiles], temperatures: Sequence[float] = TEMPERATURES,
                samples: int = SAMPLES, inputs: Sequence[str] = INPUTS) -> list[dict]:
    """One row per (subject, temperature, synthesised target): mean sd of the samples and mean |error| of their
    mean over the field of view of the subject's foreground slices, on the harmonised intensity scale."""
    (loaded,) = load_models([model])
    modalities = ModalitySet(loaded.modalities)
    subset = modalities.ordered(inputs)
    rows = []
    for files in subjects:
        prepared = prepared_for_evaluation(files, loaded)
        region = prepared.fov.copy()
        region[..., np.setdiff1d(np.arange(region.shape[-1]), prepared.slices)] = False
        for temperature in temperatures:
            (result,) = synthesise(loaded.model, prepared, [subset], temperature, samples)
            for key in modalities:
                j = modalities.index(key)
                if key in subset or not prepared.present[j]:
                    continue
                error = np.abs(result.mean[j] - prepared.targets[j])[region] / 2.0  # network scale 2t - 1 -> t
                rows.append({"model": name, "subject": prepared.name, "temperature": temperature, "target": key,
                             "sd": float(result.std[j][region].mean() / 2.0), "abs_error": float(error.mean())})
    return rows


def spread_summary(rows: Sequence[dict]) -> list[dict]:
    """Per (model, temperature, target): the means over subjects of sd and |error|, and their ratio."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["temperature"], row["target"])].append(row)
    summary = []
    for (model, temperature, target), members in groups.items():
        sd = float(np.mean([m["sd"] for m in members]))
        error = float(np.mean([m["abs_error"] for m in members]))
        summary.append({"model": model, "temperature": temperature, "target": target, "subjects": len(members),
                        "sd": sd, "abs_error": error, "ratio": error / sd if sd > 0 else float("inf")})
    return summary

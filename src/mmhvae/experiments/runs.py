"""The models of a study and their scores, each computed once: a variant is trained in a run folder named by
its whole configuration (reused when finished, resumed when interrupted), and its scores on a test set are
cached next to the runs, so an interrupted or repeated study redoes nothing it already has."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmhvae.config import RunConfig, save_config
from mmhvae.evaluation.evaluate import write_csv
from mmhvae.evaluation.scoring import (
    evaluate_mean_image,
    evaluation_rows,
    load_models,
    prepared_for_evaluation,
    training_mean_images,
)
from mmhvae.experiments.variants import Variant
from mmhvae.io.layouts import SubjectFiles
from mmhvae.model_file import load_model_file
from mmhvae.performance.cost import parameter_count
from mmhvae.training.trainer import train

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"


# ----------------------------------------------------------------------------------------------------
# Training the variants
# ----------------------------------------------------------------------------------------------------


# Training settings that change how fast a run goes, not what it learns: left out of the run-folder digest, so
# that adding one does not orphan the finished runs of earlier versions.
SPEED_ONLY_TRAIN_SETTINGS = ("compile",)


def config_digest(run: RunConfig) -> str:
    """Eight hex digits that change with every setting of the run that changes what it learns."""
    settings = run.to_dict()
    settings["train"] = {k: v for k, v in settings["train"].items() if k not in SPEED_ONLY_TRAIN_SETTINGS}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]


def train_variant(variant: Variant, data: Path, runs: Path, base: RunConfig, max_steps: int,
                  folds: int | None = None, test_fold: int = 0, progress: bool = False) -> Path:
    """The model file of `variant` trained on `data`: reused when finished, resumed when interrupted.

    The run folder's name carries a digest of the full configuration, so a changed setting never reuses
    a model trained with another one."""
    run = variant.run_config(base, max_steps, folds, test_fold)
    out = runs / f"{variant.name.replace('=', '')}-{config_digest(run)}"
    model = out / MODEL_FILE
    if model.is_file():
        log.info(f"{variant.name}: reusing {model}")
        return model
    out.mkdir(parents=True, exist_ok=True)
    resume = (out / "config.yaml").is_file()
    config = out.parent / f"{out.name}.yaml"
    save_config(run, config)
    log.info(f"{variant.name}: {'resuming' if resume else 'training'} {max_steps} steps in {out}")
    return train(data, out, config, resume=resume, progress=progress)


def run_summary(name: str, model: Path) -> dict[str, Any]:
    """Budget figures of a trained variant, from its model file's meta."""
    loaded = load_model_file(model)
    meta = loaded.meta
    train = (meta.get("config") or {}).get("train") or {}
    return {"name": name, "method": meta.get("method"), "parameters": parameter_count(loaded.model),
            "steps": meta.get("steps"), "minutes": meta.get("train_minutes"), "model": str(model),
            "lr": train.get("lr", float("nan")), "seed": train.get("seed"), "stopped": meta.get("stop_reason", "-")}


# ----------------------------------------------------------------------------------------------------
# Evaluation with a cache (evaluating a model on a test set takes minutes; a re-run reuses the scores)
# ----------------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    """Cached score rows, with their numbers as numbers again."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["slice"] = int(row["slice"])
        row["seed"] = int(row.get("seed") or 0)
        for name in ("psnr", "ssim", "lpips"):
            row[name] = float(row[name])
    return rows


def scored_rows(model: Path, name: str, subjects: Sequence[SubjectFiles], cache: Path, temperature: float,
                with_lpips: bool, samples: int = 1, seed: int = 0) -> list[dict]:
    """Rows of one model (named `name`, trained with seed `seed`) on the test subjects, cached next to the run by
    model, subjects and settings."""
    key = json.dumps([str(model), model.stat().st_mtime_ns, [s.name for s in subjects], temperature, with_lpips]
                     + ([samples] if samples > 1 else []))  # one sample keeps the caches made before --samples
    path = cache / f"scores-{name.replace('=', '')}-{hashlib.sha256(key.encode()).hexdigest()[:8]}.csv"
    if path.is_file():
        return [dict(r, method=name, seed=seed) for r in read_rows(path)]
    rows = evaluation_rows(load_models([model]), [(name, seed)], subjects, temperature, with_lpips, samples=samples)
    write_csv(path, rows)
    return rows


def mean_image_rows(model: Path, train_subjects: Sequence[SubjectFiles],
                    test_subjects: Sequence[SubjectFiles]) -> list[dict]:
    """Rows of the mean-image floor: the training subjects' mean image of each target, scored on the test
    subjects as a model would be."""
    (loaded,) = load_models([model])
    mean = training_mean_images(train_subjects, loaded)
    rows = []
    for files in test_subjects:
        rows += evaluate_mean_image(mean, prepared_for_evaluation(files, loaded), loaded.modalities)
    return rows

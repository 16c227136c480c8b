"""Starting a run from existing weights: `--init-from` (a model file, possibly of a network that differs in
the parts the run trains) and `--vit-weights` (ResViT's transformer from an ImageNet ViT checkpoint).

Each returns the provenance the new model file records (path, checksum, and what started fresh or grew).
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np

from mmhvae.config import RunConfig
from mmhvae.errors import InputError
from mmhvae.model.baselines.resvit import ResViT
from mmhvae.model_file import load_model_file, weights_checksum
from mmhvae.training.module import MMHVAEModule


def initialise_from(module: MMHVAEModule, path: str | Path, run: RunConfig) -> dict[str, Any]:
    """Copy a model file's weights into the live and EMA networks; returns its provenance for the new model file.

    The architectures must match, except in parts the run trains (`train.trainable`): those parts start fresh
    where the model file's tensors do not fit them (a wider image decoder, say), and the frozen rest is the
    model file's. A part that only gained tensors keeps every tensor it had and starts the new ones fresh: ResViT
    from its Res-CNN (the same network without transformer branches), as ResViT's authors train it.
    """
    if Path(path).suffix == ".npz":
        raise InputError("--init-from takes a model file; an ImageNet ViT checkpoint (.npz) goes to --vit-weights",
                         path)
    loaded = load_model_file(path)
    if tuple(loaded.model.config.modalities) != tuple(run.model.modalities):
        raise InputError(f"--init-from: the model file's modalities {','.join(loaded.model.config.modalities)} "
                         f"differ from the run's {','.join(run.model.modalities)}", path)
    source, target = loaded.model.state_dict(), module.model.state_dict()
    differing = {name for name in source.keys() | target.keys()
                 if name not in source or name not in target or source[name].shape != target[name].shape}
    # A part is fresh when a tensor of the model file's is missing from it or has another shape; it has grown
    # when it only has tensors the model file lacks.
    fresh = sorted({part_of(name) for name in differing if name in source})
    grown = sorted({part_of(name) for name in differing} - set(fresh))
    # Some settings (soft_clamp, fusion, ...) shape no tensor, so they also change what the frozen parts compute;
    # the model file records every change rather than leaving it to the config next to it.
    changed = changed_settings(loaded.model.config, run.model)
    if changed:
        frozen_but_new = [part for part in fresh + grown if part not in run.train.trainable]
        if frozen_but_new or not run.train.trainable:
            raise InputError("--init-from: the model file's architecture differs from the run's config in "
                             f"{', '.join(frozen_but_new or fresh + grown or ['its settings'])} (only parts listed "
                             "in train.trainable may start fresh)", path)
    shared = {name: tensor for name, tensor in source.items() if part_of(name) not in fresh}
    module.model.load_state_dict(shared, strict=False)
    module.ema.load_state_dict(module.model.state_dict())
    provenance = {"path": str(path), "checksum": weights_checksum(source), "steps": loaded.meta.get("steps")}
    if fresh:
        provenance["fresh"] = fresh
    if grown:
        # new state-dict entries per part (a module shared by several blocks counts under each of its names)
        provenance["grown"] = {part: sum(part_of(name) == part for name in differing) for part in grown}
    if changed:
        provenance["settings"] = changed
    return provenance


def part_of(tensor_name: str) -> str:
    """The top-level module a state-dict entry belongs to: the unit of `train.trainable` and `--init-from`."""
    return tensor_name.split(".")[0]


def initialise_from_vit(module: pl.LightningModule, path: str | Path) -> dict[str, Any]:
    """Load a Google-format ViT checkpoint (.npz) into a ResViT's shared transformer, live and EMA networks
    (`ResViT.load_vit_weights`), as ResViT's authors start from ImageNet-21k weights. Returns its provenance."""
    if not isinstance(module.model, ResViT):
        raise InputError("--vit-weights: an ImageNet ViT checkpoint is for ResViT's transformer (--method resvit)",
                         path)
    if not Path(path).is_file():
        raise InputError("--vit-weights: no such file", path)
    if not zipfile.is_zipfile(path):  # np.load would call anything else pickled data
        raise InputError("--vit-weights: not an .npz archive (a ViT checkpoint is one)", path)
    try:
        with np.load(path) as archive:
            weights = {name: archive[name] for name in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
        raise InputError(f"--vit-weights: cannot read the ViT checkpoint ({error})", path) from error
    try:
        module.model.load_vit_weights(weights)
    except ValueError as error:
        raise InputError(f"--vit-weights: {error}", path) from error
    module.ema.load_state_dict(module.model.state_dict())
    return {"path": str(path), "checksum": file_sha256(path)}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in chunks (an ImageNet ViT checkpoint is 400 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def changed_settings(before: Any, after: Any) -> dict[str, list[Any]]:
    """The network settings two configurations set differently, as {name: [before, after]}."""
    if type(before) is not type(after):  # another network family altogether
        return {"network": [type(before).__name__, type(after).__name__]}
    return {field.name: [getattr(before, field.name), getattr(after, field.name)] for field in fields(before)
            if getattr(before, field.name) != getattr(after, field.name)}

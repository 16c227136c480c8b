"""The `mmhvae train` job: a run folder (config.yaml, logs/session-<n>/, checkpoints/, model.pt) trained with
Lightning, started fresh, resumed exactly after an interruption, or started from another model's weights.

`train(..., method=...)` (`mmhvae train --method`, methods.py) picks the Lightning module: mopoe, average,
concat-zeros and mhvae are MMHVAE configurations trained by `MMHVAEModule`'s step of Algorithm 1 (module.py); the
zero-imputation generators (mmgan, resvit) have their own generator step in `ZeroImputationGANModule`, and the
diffusion baseline m2dn its denoising step in `M2DNModule` (baseline_modules.py); all share everything else
(data, critics, memory, EMA, checkpoints, resume, logging).

Checkpoints are written through a temporary file and a rename, so a crash, a SIGKILL or a full disk while
saving leaves the previous checkpoint intact for `--resume`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy

from mmhvae.config import (
    RunConfig,
    from_mapping,
    load_config,
    names_modalities,
    read_yaml,
    save_config,
    with_method,
    with_modalities,
)
from mmhvae.errors import InputError
from mmhvae.io.files import atomic_path
from mmhvae.io.layouts import discover_subjects, modalities_found, require_modalities_present
from mmhvae.methods import MMHVAE_METHOD_OVERRIDES
from mmhvae.modalities import parse_modality_list
from mmhvae.model.registry import ZERO_IMPUTATION_NETWORKS
from mmhvae.model_file import save_model_file, weights_checksum
from mmhvae.training.baseline_modules import M2DNModule, ZeroImputationGANModule
from mmhvae.training.data import SliceDataModule
from mmhvae.training.folds import validation_subjects
from mmhvae.training.initialisation import initialise_from, initialise_from_vit
from mmhvae.training.module import MMHVAEModule
from mmhvae.training.stopping import early_stopping_callbacks, stop_reason

MODEL_FILE = "model.pt"
LAST_CHECKPOINT = "last.ckpt"

# What a run trained with before these train fields existed: a run folder whose config.yaml lacks one resumes
# as it started (the KL divided by H x W x M; MM-GAN, ResViT and M2DN drawing their input subsets uniformly).
BEFORE_THE_FIELD_EXISTED = {"kl_normalisation": "modality_pixels", "subset_sampling": "own"}

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through a temporary file and a rename: a crash or SIGKILL while
    saving leaves the previous checkpoint intact, never a truncated one."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
        except OSError as exc:  # full disk, quota, read-only folder: stop, keeping the last good checkpoint
            reason = exc.strerror or str(exc).splitlines()[0]
            raise InputError(f"cannot write the checkpoint ({reason}); training stopped, the previous "
                             f"checkpoint is intact: free space, then continue with --resume", path) from None


def is_not_a_lightning_tip(record: logging.LogRecord) -> bool:
    """Lightning's "💡 Tip" lines advertise its cloud services, on every run of a tool that works offline."""
    return not str(record.msg).startswith("💡")


def build_trainer(out: Path, run: RunConfig, devices: int = 1, nodes: int = 1, accelerator: str = "auto",
                  progress: bool = True, stop_at_step: int | None = None, session: int = 0,
                  validates: bool = True) -> pl.Trainer:
    """The Lightning trainer; each call of `train` on a run folder logs to logs/session-<n>/metrics.csv.

    `validates` False (no validation subjects) turns validation off, which Lightning would otherwise run on an
    empty loader with a warning that means nothing to the user. With `train.early_stopping_patience`, training
    stops early on the validation loss (stopping.py).
    """
    train = run.train
    use_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = train.precision if train.precision != "auto" else ("bf16-mixed" if use_gpu else "32-true")
    strategy = "auto"
    if devices > 1 or nodes > 1:
        strategy = DDPStrategy(find_unused_parameters=True, process_group_backend=None if use_gpu else "gloo")
    checkpoints = ModelCheckpoint(dirpath=out / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
                                  every_n_epochs=1, save_on_train_epoch_end=True, save_top_k=1, save_last=True)
    stopping = early_stopping_callbacks(train, validates)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(is_not_a_lightning_tip)
    return pl.Trainer(
        default_root_dir=out,
        accelerator="gpu" if use_gpu else "cpu",
        devices=devices,
        num_nodes=nodes,
        strategy=strategy,
        precision=precision,
        max_steps=train.max_steps if stop_at_step is None else stop_at_step,
        max_time={"minutes": train.max_minutes} if train.max_minutes else None,
        max_epochs=-1,
        val_check_interval=train.validate_every,
        check_val_every_n_epoch=None,
        limit_val_batches=8 if validates else 0,
        num_sanity_val_steps=0,
        callbacks=[checkpoints, *stopping],
        plugins=[AtomicCheckpointIO()],
        logger=CSVLogger(out, name="logs", version=f"session-{session}"),
        log_every_n_steps=train.log_every,
        enable_progress_bar=progress,
        use_distributed_sampler=False,
        enable_model_summary=False,
        deterministic=False,
    )


def module_for(run: RunConfig) -> MMHVAEModule:
    """The Lightning module that trains `run.train.method`."""
    if run.train.method == "m2dn":
        return M2DNModule(run.to_dict())
    module_class = ZeroImputationGANModule if run.train.method in ZERO_IMPUTATION_NETWORKS else MMHVAEModule
    return module_class(run.to_dict())


def train(data: str | Path, out: str | Path, config: str | Path = "tiny", max_steps: int | None = None,
          max_minutes: float | None = None, devices: int = 1, nodes: int = 1, resume: bool = False,
          accelerator: str = "auto", progress: bool = True, overrides: dict[str, Any] | None = None,
          stop_at_step: int | None = None, init_from: str | Path | None = None, method: str | None = None,
          vit_weights: str | Path | None = None, modalities: str | Sequence[str] | None = None) -> Path:
    """Train on a data folder; write the run folder (config, logs, checkpoints, model file). Returns the model.

    `modalities` (`mmhvae train --modalities`) are those the network is built for; without them, those the
    config names, else those found in the data (`modalities_to_train`).

    `method` (methods.py METHODS; default: the config's train.method, "mmhvae") picks MMHVAE or a
    baseline; it is recorded in the run's config.yaml (train.method) and the model file's meta. A resumed run
    keeps its method.

    `init_from` (a model file of the same architecture) starts a new run from its weights, with fresh
    optimisers and schedules: fine-tuning, or continuing a shipped model with a new budget. `vit_weights` (an
    ImageNet ViT checkpoint, .npz) then loads ResViT's transformer, as its authors start (`initialise_from_vit`);
    with `init_from` a Res-CNN model file (ResViT without transformer blocks), that is their two-stage recipe.

    `stop_at_step` ends this call early without changing the schedules (which follow train.max_steps), as an
    interruption would; `resume=True` then continues the run.
    """
    data, out = Path(data), Path(out)
    last = out / "checkpoints" / LAST_CHECKPOINT
    replica = is_launched_replica()
    run = run_config_to_train(out, config, resume, method, init_from, vit_weights, replica)
    run = modalities_to_train(run, data, config, modalities, resume)
    run = with_method(run, run.train.method)  # a method made for some modalities only (mhvae) keeps to them
    changes = {k: v for k, v in {"max_steps": max_steps, "max_minutes": max_minutes, **(overrides or {})}.items()
               if v is not None}
    run = RunConfig(run.model, run.data, replace(run.train, **changes))
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(run.train.seed, workers=True, verbose=False)
    val_subjects = validation_subjects(data, run)
    datamodule = data_module_for(data, out, run, val_subjects)
    module = module_for(run)
    continues_a_checkpoint = resume and last.is_file()
    if not continues_a_checkpoint:
        initialise(module, init_from, vit_weights, run)
    if not replica:  # only now: a run refused above leaves no config.yaml, so the folder can be reused
        save_config(run, out / "config.yaml")
    session = len(list((out / "logs").glob("session-*")))
    trainer = build_trainer(out, run, devices, nodes, accelerator, progress, stop_at_step, session,
                            validates=bool(val_subjects))
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if continues_a_checkpoint else None)
    in_sync = replicas_in_sync(module.model)  # every rank takes part in this check
    model_path = out / MODEL_FILE
    if trainer.is_global_zero:
        write_model_file(model_path, trainer, module, run, data, in_sync)
    return model_path


def modalities_to_train(run: RunConfig, data: Path, config: str | Path, modalities: str | Sequence[str] | None,
                        resume: bool) -> RunConfig:
    """The modality set of a fresh run: `modalities`, else those its config names, else those found in the data
    (said on the command line), with the one clear error when the data has none of them. A resumed run keeps
    its own."""
    if resume:
        if modalities is not None and parse_modality_list(modalities) != tuple(run.model.modalities):
            raise InputError(f"--modalities: this run trains {','.join(run.model.modalities)}", data)
        return run
    subjects = discover_subjects(data)
    own = MMHVAE_METHOD_OVERRIDES.get(run.train.method, {}).get("modalities")  # a method with its own (mhvae)
    if own is not None:
        keys, origin = tuple(own), f"those of --method {run.train.method}"
        if modalities is not None and parse_modality_list(modalities) != keys:
            raise InputError(f"--modalities: --method {run.train.method} trains {','.join(keys)} only", data)
    elif modalities is not None:
        keys, origin = parse_modality_list(modalities), "from --modalities"
    elif names_modalities(config):
        keys, origin = tuple(run.model.modalities), f"named by the config {config}"
    else:
        keys, origin = modalities_found(subjects), "found in the data"
        log.info(f"modalities: {','.join(keys)} (found in {data}; choose others with --modalities)")
    require_modalities_present(subjects, keys, data, origin, "train on theirs with --modalities {found}")
    chosen = with_modalities(run, keys)
    if chosen.train.mixture != run.train.mixture:
        log.info(f"mixture: {chosen.train.mixture} (the paper's p_alpha anchors one branch on an ultrasound, which "
                 f"{','.join(keys)} lacks)")
    return chosen


def is_launched_replica() -> bool:
    """Whether this process is one Lightning's DDP launcher started (LOCAL_RANK or NODE_RANK > 0): it re-runs
    the command with the same settings and must neither refuse rank 0's fresh run folder nor rewrite its config."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def run_config_to_train(out: Path, config: str | Path, resume: bool, method: str | None,
                        init_from: str | Path | None, vit_weights: str | Path | None, replica: bool) -> RunConfig:
    """The run configuration of this call: the run folder's own when resuming, else `config` switched to
    `method`. Refuses a fresh run in a folder that holds one, and a resume that asks for another method or
    for starting weights its checkpoint already holds."""
    last = out / "checkpoints" / LAST_CHECKPOINT
    if replica:
        run = saved_run_config(out) if resume else load_config(config)
    elif resume:
        run = run_config_to_resume(out, last)
    else:
        if (out / "config.yaml").exists():
            raise InputError("run folder already holds a run (use --resume, or another --out)", out)
        run = load_config(config)
    if not resume:
        return with_method(run, method or run.train.method)
    if method is not None and method != run.train.method:
        raise InputError(f"--method {method}: this run trains {run.train.method!r}", out)
    if last.is_file() and (init_from is not None or vit_weights is not None):
        raise InputError("--resume continues from the run's checkpoint, which already holds the weights it "
                         "started from: drop --init-from and --vit-weights", out)
    return run


def run_config_to_resume(out: Path, last: Path) -> RunConfig:
    """The configuration saved in a run folder; a run stopped before its first checkpoint starts again."""
    if not (out / "config.yaml").is_file():
        raise InputError("--resume: no config.yaml in this run folder (nothing to resume)", out)
    run = saved_run_config(out)
    if not last.is_file():
        warnings.warn(f"{out}: stopped before its first checkpoint; starting the run again from step 0",
                      stacklevel=4)
    return run


def saved_run_config(out: Path) -> RunConfig:
    """The configuration a run folder saved (config.yaml), read to resume it: a train field it lacks, written
    before the field existed, takes the value the run started with (`BEFORE_THE_FIELD_EXISTED`), not today's
    default, so that the run continues as it started."""
    path = out / "config.yaml"
    values = read_yaml(path.read_text(), str(path))
    train = values.get("train") if isinstance(values, dict) else None
    if isinstance(train, dict):
        missing = {k: v for k, v in BEFORE_THE_FIELD_EXISTED.items() if k not in train}
        if missing:
            settings = ", ".join(f"{k}: {v}" for k, v in missing.items())
            log.info(f"{path}: saved before train.{' and train.'.join(missing)} existed; resuming with {settings}, "
                     "as it started")
        values = {**values, "train": {**train, **missing}}
    return from_mapping(values, str(path), RunConfig())


def data_module_for(data: Path, out: Path, run: RunConfig, val_subjects: list[str]) -> SliceDataModule:
    """The slices of a run: batches of train.batch_size, an epoch of train.checkpoint_every steps, the run's
    folds and validation subjects, prepared subjects cached in the run folder."""
    return SliceDataModule(data, run.data, batch_size=run.train.batch_size,
                           batches_per_epoch=run.train.checkpoint_every,
                           folds=run.train.folds, test_fold=run.train.test_fold,
                           val_subjects=val_subjects, seed=run.train.seed,
                           split_seed=run.train.split_seed,
                           cache_dir=out / "cache", num_workers=run.train.num_workers,
                           complete_subjects_only=run.train.complete_subjects_only)


def initialise(module: MMHVAEModule, init_from: str | Path | None, vit_weights: str | Path | None,
               run: RunConfig) -> None:
    """Start a fresh run from a model file's weights (`init_from`) and/or an ImageNet ViT checkpoint
    (`vit_weights`, ResViT's transformer), recording where each came from in the module."""
    if init_from is not None:
        module.initialised_from = initialise_from(module, init_from, run)
    if vit_weights is not None:
        if module.initialised_from is not None and "grown" not in module.initialised_from:
            warnings.warn(f"--vit-weights replaces the transformer that {init_from} trained", stacklevel=3)
        module.vit_weights_from = initialise_from_vit(module, vit_weights)


def write_model_file(path: Path, trainer: pl.Trainer, module: MMHVAEModule, run: RunConfig, data: Path,
                     in_sync: bool) -> None:
    """The model file of a run: the EMA weights, the preprocessing, and how they were trained (meta)."""
    save_model_file(path, module.ema, run.data, meta={
        "steps": int(trainer.global_step), "train_minutes": module.wall_minutes(),
        "skipped_updates": module.nonfinite_total, "data": str(data), "config": run.to_dict(),
        "world_size": int(trainer.world_size), "replicas_in_sync": in_sync, "init_from": module.initialised_from,
        "vit_weights": module.vit_weights_from, "method": run.train.method,
        "stop_reason": stop_reason(trainer, run.train),
    })


def replicas_in_sync(model: torch.nn.Module) -> bool:
    """In a distributed run, whether every rank holds bit-identical weights (True when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    mine = weights_checksum(model.state_dict())
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return len(set(every)) == 1

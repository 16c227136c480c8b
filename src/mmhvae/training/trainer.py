"""Training MMHVAE with Lightning: Algorithm 1 of the paper.

One step: a batch of B slices sharing one missingness pattern r; T draws r' ~ p_alpha(. | r); for each r',
fuse only the modalities in r', decode every modality, and score reconstruction (r' ⊂ r observed) and
synthesis (observed in r, not in r') against the harmonised targets, plus the KL of Eq. 19 and, late in
training, the GAN term of Eq. 16. Then one update of the per-modality critics (Algorithm 1, lines 27-35),
whose "real" sample for a modality missing from the batch comes from a memory of recent real images.

Each modality present in the batch is encoded once and its features are reused for the T draws (the
draws are batched into one decoding pass), which is exact: the encoders see only their own modality.

Baselines (`train(..., method=...)`, `mmhvae train --method`, model/registry.py): mopoe, average and
concat-zeros are MMHVAE configurations trained by this same step; the zero-imputation generators (mmgan,
resvit) have their own generator step in `ZeroImputationGANModule`, and the diffusion baseline m2dn its denoising
step in `M2DNModule`; both share everything else (data, critics, memory, EMA, checkpoints, resume, logging).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from mmhvae.config import RunConfig, load_config, save_config, with_method
from mmhvae.errors import InputError
from mmhvae.model.registry import ZERO_IMPUTATION_NETWORKS
from mmhvae.model_file import save_model_file
from mmhvae.training.baseline_modules import M2DNModule, ZeroImputationGANModule
from mmhvae.training.data import SliceDataModule
from mmhvae.training.folds import validation_subjects
from mmhvae.training.initialisation import initialise_from, initialise_from_vit
from mmhvae.training.module import MMHVAEModule

MODEL_FILE = "model.pt"
LAST_CHECKPOINT = "last.ckpt"


def atomic_checkpoint_io():
    """Lightning's checkpoint writer, but through a temporary file and a rename: a crash or SIGKILL while
    saving leaves the previous checkpoint intact, never a truncated one."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    from mmhvae.io.files import atomic_path

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            try:
                with atomic_path(path) as tmp:
                    torch.save(checkpoint, tmp)
            except OSError as exc:  # full disk, quota, read-only folder: stop, keeping the last good checkpoint
                reason = exc.strerror or str(exc).splitlines()[0]
                raise InputError(f"cannot write the checkpoint ({reason}); training stopped, the previous "
                                 f"checkpoint is intact: free space, then continue with --resume", path) from None

    return AtomicCheckpointIO()


def is_not_a_lightning_tip(record: logging.LogRecord) -> bool:
    """Lightning's "💡 Tip" lines advertise its cloud services, on every run of a tool that works offline."""
    return not str(record.msg).startswith("💡")


def build_trainer(out: Path, run: RunConfig, devices: int = 1, nodes: int = 1, accelerator: str = "auto",
                  progress: bool = True, stop_at_step: int | None = None, session: int = 0,
                  validates: bool = True) -> pl.Trainer:
    """The Lightning trainer; each call of `train` on a run folder logs to logs/session-<n>/metrics.csv.

    `validates` False (no validation subjects) turns validation off, which Lightning would otherwise run on an
    empty loader with a warning that means nothing to the user.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    train = run.train
    use_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = train.precision if train.precision != "auto" else ("bf16-mixed" if use_gpu else "32-true")
    strategy = "auto"
    if devices > 1 or nodes > 1:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=True, process_group_backend=None if use_gpu else "gloo")
    checkpoints = ModelCheckpoint(dirpath=out / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
                                  every_n_epochs=1, save_on_train_epoch_end=True, save_top_k=1, save_last=True)
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
        callbacks=[checkpoints],
        plugins=[atomic_checkpoint_io()],
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
          vit_weights: str | Path | None = None) -> Path:
    """Train on a data folder; write the run folder (config, logs, checkpoints, model file). Returns the model.

    `method` (model/registry.py METHODS; default: the config's train.method, "mmhvae") picks MMHVAE or a
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
    # Lightning's DDP launcher re-runs this command in each extra process (LOCAL_RANK/NODE_RANK > 0): those
    # follow the same settings and must neither refuse rank 0's fresh run folder nor rewrite its config.
    launched_replica = os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"
    if launched_replica:
        run = load_config(out / "config.yaml" if resume else config)
    elif resume:
        if not (out / "config.yaml").is_file():
            raise InputError("--resume: no config.yaml in this run folder (nothing to resume)", out)
        run = load_config(out / "config.yaml")
        if not last.is_file():
            warnings.warn(f"{out}: stopped before its first checkpoint; starting the run again from step 0",
                          stacklevel=2)
    else:
        if (out / "config.yaml").exists():
            raise InputError("run folder already holds a run (use --resume, or another --out)", out)
        run = load_config(config)
    if resume:
        if method is not None and method != run.train.method:
            raise InputError(f"--method {method}: this run trains {run.train.method!r}", out)
        if last.is_file() and (init_from is not None or vit_weights is not None):
            raise InputError("--resume continues from the run's checkpoint, which already holds the weights it "
                             "started from: drop --init-from and --vit-weights", out)
    else:
        run = with_method(run, method or run.train.method)
    changes = {k: v for k, v in {"max_steps": max_steps, "max_minutes": max_minutes, **(overrides or {})}.items()
               if v is not None}
    run = RunConfig(run.model, run.data, replace(run.train, **changes))
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(run.train.seed, workers=True, verbose=False)
    val_subjects = validation_subjects(data, run)
    datamodule = SliceDataModule(data, run.data, batch_size=run.train.batch_size,
                                 batches_per_epoch=run.train.checkpoint_every,
                                 folds=run.train.folds, test_fold=run.train.test_fold,
                                 val_subjects=val_subjects, seed=run.train.seed,
                                 cache_dir=out / "cache", num_workers=run.train.num_workers)
    module = module_for(run)
    starting_fresh = not (resume and last.is_file())
    if init_from is not None and starting_fresh:
        module.initialised_from = initialise_from(module, init_from, run)
    if vit_weights is not None and starting_fresh:
        if module.initialised_from is not None and "grown" not in module.initialised_from:
            warnings.warn(f"--vit-weights replaces the transformer that {init_from} trained", stacklevel=2)
        module.vit_weights_from = initialise_from_vit(module, vit_weights)
    if not launched_replica:  # only now: a run refused above leaves no config.yaml, so the folder can be reused
        save_config(run, out / "config.yaml")
    session = len(list((out / "logs").glob("session-*")))
    trainer = build_trainer(out, run, devices, nodes, accelerator, progress, stop_at_step, session,
                            validates=bool(val_subjects))
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume and last.is_file() else None)
    in_sync = replicas_in_sync(module.model)
    model_path = out / MODEL_FILE
    if trainer.is_global_zero:
        save_model_file(model_path, module.ema, run.data, meta={
            "steps": int(trainer.global_step), "train_minutes": module.wall_minutes(),
            "skipped_updates": module.nonfinite_total, "data": str(data), "config": run.to_dict(),
            "world_size": int(trainer.world_size), "replicas_in_sync": in_sync, "init_from": module.initialised_from,
            "vit_weights": module.vit_weights_from, "method": run.train.method,
        })
    return model_path


def replicas_in_sync(model: torch.nn.Module) -> bool:
    """In a distributed run, whether every rank holds bit-identical weights (True when not distributed)."""
    import torch.distributed as dist

    from mmhvae.model_file import weights_checksum

    if not (dist.is_available() and dist.is_initialized()):
        return True
    mine = weights_checksum(model.state_dict())
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return len(set(every)) == 1

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

import copy
import hashlib
import logging
import os
import time
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmhvae.config import RunConfig, from_mapping, load_config, save_config
from mmhvae.data.datamodule import SliceDataModule
from mmhvae.data.dataset import cross_validation_split, stratified_folds
from mmhvae.errors import InputError
from mmhvae.io import SubjectFiles
from mmhvae.modalities import ModalitySet, Subset, SubsetSampler, subset_from_code
from mmhvae.model import critic as critics
from mmhvae.model.registry import ZERO_IMPUTATION_NETWORKS, build_network, network_config_for_method, recipe_on_switch
from mmhvae.model.zero_imputation import ZeroImputationGenerator
from mmhvae.model_file import save_model_file

MODEL_FILE = "model.pt"
LAST_CHECKPOINT = "last.ckpt"


class NonFiniteLossError(RuntimeError):
    """Training produced too many non-finite losses or gradients in a row."""


def kl_weight(step: int, config) -> float:
    """KL weight with a linear warm-up over the first `kl_warmup` fraction of training."""
    warmup = config.kl_warmup * config.max_steps
    return config.kl_weight * (1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup))


def gan_weight(step: int, config) -> float:
    """0 for the first `gan_start` fraction of training, then `gan_weight` (Section 4.2)."""
    return config.gan_weight if config.gan_weight > 0 and step >= config.gan_start * config.max_steps else 0.0


def image_error(prediction: Tensor, target: Tensor, kind: str) -> Tensor:
    """Per-sample, per-modality mean error over pixels: [N, M]."""
    error = (prediction - target) ** 2 if kind == "l2" else (prediction - target).abs()
    return error.flatten(2).mean(dim=2)


def freeze_all_but(model: torch.nn.Module, parts: Sequence[str]) -> None:
    """Train only the named top-level parts of `model` (`train.trainable`; every part when empty)."""
    if not parts:
        return
    known = dict(model.named_children())
    unknown = [name for name in parts if name not in known]
    if unknown:
        raise InputError(f"train.trainable: no part named {', '.join(unknown)} in this network "
                         f"(parts: {', '.join(known)})")
    model.requires_grad_(False)
    for name in parts:
        known[name].requires_grad_(True)


def trained_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class MMHVAEModule(pl.LightningModule):
    """MMHVAE, its per-modality critics, the memory of real images and an EMA copy for inference."""

    def __init__(self, run: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters({"run": run})
        self.run_config = from_mapping(run, "<checkpoint>", RunConfig())
        cfg, train = self.run_config.model, self.run_config.train
        self.modalities = ModalitySet(tuple(cfg.modalities))
        self.model = build_network(cfg.to_dict())  # MMHVAE, or a zero-imputation generator (ZeroImputationGANModule)
        if train.activation_checkpointing and hasattr(self.model, "recompute_levels"):
            self.model.recompute_levels(train.activation_checkpointing)
        freeze_all_but(self.model, train.trainable)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        if train.compile and hasattr(self.model, "compile_blocks"):
            self.model.compile_blocks()  # after the copy: the EMA weights stay a plain module
        self.critics = critics.ModalityCritics(self.modalities.keys)
        self.memory = critics.RealImageMemory(self.modalities.keys, train.memory_size)
        self.memory_generator = torch.Generator().manual_seed(train.seed)
        self.subset_sampler = SubsetSampler(train.mixture)
        self.image_loss_weights = torch.tensor(self.modalities.weights(train.image_loss_weights))
        self.rng = np.random.default_rng(train.seed)
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.minutes_before_this_session = 0.0  # training wall time of earlier sessions (restored on resume)
        self.session_started = time.monotonic()
        self.initialised_from: dict[str, Any] | None = None  # --init-from provenance, kept across resumes
        self.vit_weights_from: dict[str, Any] | None = None  # --vit-weights provenance (ResViT), likewise
        self._latent_generator: torch.Generator | None = None
        self._latent_generator_state: Tensor | None = None
        self.automatic_optimization = False

    def setup(self, stage: str) -> None:
        """Each rank of a distributed run draws its own subsets r' and latents (its batches differ too)."""
        self.rng = np.random.default_rng([self.run_config.train.seed, self.global_rank])
        self._latent_generator = None
        self._latent_generator_state = None

    def latent_generator(self, device: torch.device) -> torch.Generator:
        """The generator of the latent samples: our own, so Lightning's use of the global RNG (data loader
        seeds, validation) cannot shift it, and a resumed run draws exactly what an uninterrupted one would."""
        if self._latent_generator is None or self._latent_generator.device != device:
            self._latent_generator = torch.Generator(device=device)
            self._latent_generator.manual_seed(self.run_config.train.seed * 1009 + self.global_rank)
            if self._latent_generator_state is not None:
                self._latent_generator.set_state(self._latent_generator_state)
        return self._latent_generator

    def on_train_epoch_start(self) -> None:
        """New batches each epoch, reproducibly: Lightning sets the epoch of samplers, not of batch samplers."""
        batch_sampler = getattr(self.trainer.train_dataloader, "batch_sampler", None)
        if hasattr(batch_sampler, "set_epoch"):
            batch_sampler.set_epoch(self.current_epoch)

    # ----- optimisers -----------------------------------------------------------------------------

    def configure_optimizers(self):
        train = self.run_config.train
        generator = torch.optim.Adamax(trained_parameters(self.model), lr=train.lr)
        critic = torch.optim.Adam(self.critics.parameters(), lr=train.critic_lr, betas=(0.5, 0.999))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(generator, T_max=max(1, train.max_steps),
                                                            eta_min=train.lr_final)
        return [generator, critic], [{"scheduler": cosine, "interval": "step"}]

    # ----- one step of Algorithm 1 --------------------------------------------------------------------

    def draw_subsets(self, present: Tensor) -> Tensor:
        """T input subsets for the batch's pattern r, as a [T, M] bool mask (line 10)."""
        observed = self.modalities.from_indicator([int(b) for b in present[0].tolist()])
        draws = self.sample_input_subsets(observed, self.run_config.train.passes)
        return torch.tensor([self.modalities.indicator(d) for d in draws], dtype=torch.bool, device=present.device)

    def sample_input_subsets(self, observed: Subset, passes: int) -> list[Subset]:
        """T draws r' ~ p_alpha(. | r) of the mixture (Eq. 7-8)."""
        return self.subset_sampler.sample(observed, self.rng, size=passes)

    def decode_passes(self, batch: dict[str, Tensor], subsets: Tensor, **decode_options: Any) -> tuple[Any, Tensor]:
        """Encode each present modality once and decode it for each of the T subsets (Algorithm 1, lines 11-13).

        Returns the network output for the T x B rows (pass-major) and the batch sample of each row.
        """
        inputs, present = batch["inputs"], batch["present"].bool()
        passes, size = subsets.shape[0], inputs.shape[0]
        features = self.model.encode(inputs, present)
        rows = torch.arange(size, device=inputs.device).repeat(passes)
        return self.model.decode(features.index(rows), subsets.repeat_interleave(size, dim=0), **decode_options), rows

    def generator_losses(self, batch: dict[str, Tensor], subsets: Tensor) -> dict[str, Tensor]:
        """Eq. 19 averaged over the batch and the T draws, plus the GAN term of Eq. 16."""
        train = self.run_config.train
        inputs, targets, present = batch["inputs"], batch["targets"], batch["present"].bool()
        output, rows = self.decode_passes(batch, subsets, temperature=1.0,
                                          generator=self.latent_generator(inputs.device))
        observed = present[rows]
        errors = image_error(output.images, targets[rows], train.image_loss) * self.image_loss_weights.to(inputs)
        image = (errors * observed).sum(dim=1).mean()  # sum over modalities observed in r (Eq. 9)
        pixels = inputs.shape[-1] * inputs.shape[-2] * len(self.modalities)
        kl = output.kl_total.mean() / pixels  # nats per image pixel, as the authors normalise
        losses = {"image": image, "kl": kl, "kl_weight": torch.tensor(kl_weight(self.global_step, train))}
        losses["total"] = image + losses["kl_weight"] * kl
        weight = gan_weight(self.global_step, train)
        if weight > 0:  # Eq. 16: every modality's synthesis should look real to its critic
            losses["gan"] = sum(critics.generator_loss(self.critics(key, output.images[:, j]), train.gan_loss)
                                for j, key in enumerate(self.modalities))
            losses["total"] = losses["total"] + weight * losses["gan"]
        losses["fake"] = output.images.detach()
        return losses

    def critic_step(self, batch: dict[str, Tensor], fake: Tensor) -> Tensor | None:
        """Algorithm 1, lines 27-35: real (or remembered real) against synthesised, per modality."""
        targets, present = batch["targets"], batch["present"][0].bool()
        kind = self.run_config.train.gan_loss
        loss = None
        for j, key in enumerate(self.modalities):
            real = targets[:, j] if present[j] else self.memory.sample(key, targets.shape[0], self.memory_generator)
            if real is None:  # nothing remembered yet for a modality no batch has shown
                continue
            term = critics.critic_loss(self.critics(key, real), self.critics(key, fake[:, j]), kind)
            loss = term if loss is None else loss + term
        if loss is None:
            return None
        optimiser = self.optimizers()[1]
        optimiser.zero_grad()
        self.manual_backward(loss)
        # Stepping the wrapped optimiser directly: Lightning counts every LightningOptimizer.step as a
        # training step, and the step count must follow the generator only (max_steps, schedules).
        optimiser.optimizer.step()
        return loss.detach()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        train = self.run_config.train
        step = self.global_step  # the step this batch updates (logged explicitly: Lightning's own column
        # can shift by one after a resume under manual optimisation)
        generator = self.optimizers()[0]
        losses = self.generator_losses(batch, self.draw_subsets(batch["present"]))
        self.remember_real_images(batch)
        if not torch.isfinite(losses["total"]):
            return self.skip_update("loss")
        generator.zero_grad()
        self.manual_backward(losses["total"])
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), train.grad_clip)
        if not torch.isfinite(grad_norm):
            generator.zero_grad()
            return self.skip_update("gradient")
        generator.step()
        self.lr_schedulers().step()
        self.update_ema()
        self.nonfinite_in_a_row = 0
        logged = {k: v.detach() for k, v in losses.items() if k not in ("fake", "total") and v.ndim == 0}
        logged["loss"] = losses["total"].detach()
        if gan_weight(self.global_step, train) > 0:
            critic = self.critic_step(batch, losses["fake"])
            if critic is not None:
                logged["critic"] = critic
        logged["skipped"] = float(self.nonfinite_total)
        logged["train_step"] = float(step)
        logged["wall_minutes"] = self.wall_minutes()
        shown = {k: v for k, v in logged.items() if k in ("loss", "image", "kl", "gan", "critic")}
        self.log_dict(shown, prog_bar=True, on_step=True, batch_size=batch["inputs"].shape[0])
        self.log_dict({k: v for k, v in logged.items() if k not in shown}, on_step=True,
                      batch_size=batch["inputs"].shape[0])

    def remember_real_images(self, batch: dict[str, Tensor]) -> None:
        """Algorithm 1, line 30: keep real images of observed modalities for batches that miss them."""
        present = batch["present"][0].bool()
        for j, key in enumerate(self.modalities):
            if present[j]:
                self.memory.push(key, batch["targets"][:, j])

    def skip_update(self, what: str) -> None:
        """A non-finite loss or gradient: skip this update, count it, abort after too many in a row."""
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        limit = self.run_config.train.max_nonfinite_in_a_row
        if self.nonfinite_in_a_row >= limit:
            raise NonFiniteLossError(
                f"{self.nonfinite_in_a_row} non-finite {what}s in a row at step {self.global_step}: training "
                f"diverged; lower train.lr or check the data (mmhvae check)")

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = self.run_config.train.ema_decay
        step = self.global_step
        decay = min(decay, (1 + step) / (10 + step))  # short warm-up so early EMA weights are usable
        for ema, live in zip(self.ema.parameters(), self.model.parameters()):
            ema.lerp_(live.detach(), 1 - decay)
        for ema, live in zip(self.ema.buffers(), self.model.buffers()):
            ema.copy_(live)

    # ----- validation: EMA model, temperature 0.5, all observed inputs and each single input -------------

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        inputs, targets, present = batch["inputs"], batch["targets"], batch["present"].bool()
        features = self.ema.encode(inputs, present)
        for name, subset in (("all", present), ("single", first_present_only(present))):
            output = self.ema.decode(features, subset, temperature=0.5)
            mse = ((output.images - targets) ** 2).flatten(2).mean(2)
            mse = mse[present].clamp_min(1e-10)
            psnr = (10 * torch.log10(4.0 / mse)).mean()  # data range 2 on the network's scale
            self.log(f"val_psnr_{name}", psnr, batch_size=inputs.shape[0], prog_bar=(name == "all"))

    # ----- exact resume: everything not in the modules' state ---------------------------------------------

    def on_train_start(self) -> None:
        self.session_started = time.monotonic()

    def wall_minutes(self) -> float:
        """Training wall time so far, over all sessions of the run (the x axis of a time-to-quality curve)."""
        return self.minutes_before_this_session + (time.monotonic() - self.session_started) / 60

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mmhvae"] = {
            "wall_minutes": self.wall_minutes(),
            "numpy_rng": self.rng.bit_generator.state,
            "latent_generator": None if self._latent_generator is None else self._latent_generator.get_state(),
            "memory": self.memory.state_dict(),
            "memory_generator": self.memory_generator.get_state(),
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "nonfinite_total": self.nonfinite_total,
            "init_from": self.initialised_from,
            "vit_weights": self.vit_weights_from,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["mmhvae"]
        self.rng.bit_generator.state = state["numpy_rng"]
        if self.global_rank > 0:  # the checkpoint holds rank 0's state; derive a distinct stream per rank
            self.rng = np.random.default_rng([int(self.rng.integers(2**62)), self.global_rank])
        self._latent_generator = None
        self._latent_generator_state = state["latent_generator"] if self.global_rank == 0 else None
        self.memory.load_state_dict(state["memory"])
        self.memory_generator.set_state(state["memory_generator"])
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]
        self.nonfinite_total = state["nonfinite_total"]
        self.minutes_before_this_session = state.get("wall_minutes", 0.0)
        self.initialised_from = state.get("init_from")
        self.vit_weights_from = state.get("vit_weights")


class ZeroImputationGANModule(MMHVAEModule):
    """The zero-imputation GANs, MM-GAN (Sharma & Hamarneh, IEEE TMI 2019) and ResViT (Dalmaz et al., IEEE TMI
    2022), trained with the machinery of `MMHVAEModule`: same data module, per-modality critics and their
    update, memory of real images, EMA, checkpoints, exact resume, logging and validation. Only the network,
    the generator's optimiser and the generator step differ.

    One step: T = train.passes draws of a random non-empty subset of the batch's observed modalities (MM-GAN's
    random input dropping, uniform over the subsets; T draws so that every method sees as many (slice, input
    subset) pairs per step), zeros for the dropped modalities; loss (1 - w) L1 + w LSGAN with w =
    train.gan_weight (MM-GAN: lambda = 0.9 on L1, 0.1 adversarial; ResViT: 100 on L1, 1 adversarial; both
    from the first step), the L1 averaged over every observed modality (synthesised and reconstructed, as
    ResViT's unified model), the adversarial term over all modalities. Then the critics' update of Algorithm 1
    (lines 27-35), as for MMHVAE.
    """

    adam_betas = (0.5, 0.999)  # MM-GAN's and ResViT's

    def __init__(self, run: dict[str, Any]):
        super().__init__(run)
        if not isinstance(self.model, ZeroImputationGenerator):
            raise ValueError("ZeroImputationGANModule needs a run whose model section is a zero-imputation "
                             f"generator (variant: {' or '.join(ZERO_IMPUTATION_NETWORKS)})")

    def configure_optimizers(self):
        train = self.run_config.train
        # The method's Adam (MM-GAN and ResViT: betas (0.5, 0.999)) for the generator (MMHVAE: Adamax); the critic
        # optimiser and the step-wise cosine schedule (constant when lr_final == lr) are MMHVAE's.
        generator = torch.optim.Adam(trained_parameters(self.model), lr=train.lr, betas=self.adam_betas)
        critic = torch.optim.Adam(self.critics.parameters(), lr=train.critic_lr, betas=(0.5, 0.999))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(generator, T_max=max(1, train.max_steps),
                                                            eta_min=train.lr_final)
        return [generator, critic], [{"scheduler": cosine, "interval": "step"}]

    def sample_input_subsets(self, observed: Subset, passes: int) -> list[Subset]:
        """T input subsets, each uniform over the non-empty subsets of the batch's observed modalities."""
        codes = self.rng.integers(1, 2 ** len(observed), size=passes)
        return [subset_from_code(observed, code) for code in codes.tolist()]

    def generator_losses(self, batch: dict[str, Tensor], subsets: Tensor) -> dict[str, Tensor]:
        """The generator loss, (1 - w) L1 + w LSGAN, averaged over the batch and the T input subsets."""
        train = self.run_config.train
        targets, present = batch["targets"], batch["present"].bool()
        output, rows = self.decode_passes(batch, subsets)
        observed = present[rows]
        errors = image_error(output.images, targets[rows], train.image_loss) * self.image_loss_weights.to(targets)
        # Mean over every observed (slice, modality), as MM-GAN's L1Loss over the synthesised channels.
        image = (errors * observed).sum() / observed.sum().clamp(min=1)
        losses = {"image": image, "total": image}
        weight = gan_weight(self.global_step, train)
        if weight > 0:
            # critic.py's LSGAN carries a factor 1/2 that MM-GAN's and ResViT's MSELoss do not; their single
            # critic averages over channels, so the per-modality terms are averaged.
            losses["gan"] = sum(2 * critics.generator_loss(self.critics(key, output.images[:, j]), train.gan_loss)
                                for j, key in enumerate(self.modalities)) / len(self.modalities)
            losses["total"] = (1 - weight) * image + weight * losses["gan"]
        losses["fake"] = output.images.detach()
        return losses


class M2DNModule(ZeroImputationGANModule):
    """M2DN (model/m2dn.py) trained with the same machinery: T = train.passes random non-empty subsets of the
    batch's observed modalities per step, as for MM-GAN; for each (slice, subset) one denoising task at a random
    step of the Brownian bridge, scored by the L1 between the predicted and the harmonised images of the
    observed modalities. No adversarial term (its recipe sets train.gan_weight 0, so the critics rest)."""

    adam_betas = (0.9, 0.999)  # torch's default, as BBDM's

    def generator_losses(self, batch: dict[str, Tensor], subsets: Tensor) -> dict[str, Tensor]:
        train = self.run_config.train
        inputs, targets, present = batch["inputs"], batch["targets"], batch["present"].bool()
        passes, size = subsets.shape[0], inputs.shape[0]
        rows = torch.arange(size, device=inputs.device).repeat(passes)
        observed = present[rows]
        # The bridge needs an x_0 for every modality: 0 where the slice has no image (never scored).
        x0 = torch.where(observed[:, :, None, None], targets[rows], torch.zeros_like(targets[rows]))
        # Inputs outside a row's subset are replaced by noise (M2DN.bridge_end), absent ones included.
        prediction = self.model.training_prediction(inputs[rows], subsets.repeat_interleave(size, dim=0), x0,
                                                    generator=self.latent_generator(inputs.device))
        errors = image_error(prediction, targets[rows], train.image_loss) * self.image_loss_weights.to(targets)
        image = (errors * observed).sum() / observed.sum().clamp(min=1)
        return {"image": image, "total": image, "fake": prediction.detach()}


def first_present_only(present: Tensor) -> Tensor:
    """For each sample, a mask with only its first present modality."""
    first = present.float().argmax(dim=1)
    return F.one_hot(first, present.shape[1]).bool() & present


# ----------------------------------------------------------------------------------------------------
# The `mmhvae train` job
# ----------------------------------------------------------------------------------------------------


def fold_subjects(data: Path, run: RunConfig) -> tuple[list[SubjectFiles], list[SubjectFiles]]:
    """(training candidates, test subjects) of a run: the test fold is left out when `train.folds` is set."""
    return cross_validation_split(data, run.data.modality_set, run.train.folds, run.train.test_fold, run.train.seed)


def validation_subjects(data: Path, run: RunConfig) -> list[str]:
    """A stratified `val_fraction` of the training subjects (at least one when there are 5 or more)."""
    subjects, _ = fold_subjects(data, run)
    if run.train.val_fraction <= 0 or len(subjects) < 5:
        return []
    folds = min(len(subjects), max(2, round(1 / run.train.val_fraction)))
    fold_of = stratified_folds([s.indicator(run.data.modality_set) for s in subjects], folds, run.train.seed)
    return [s.name for s, f in zip(subjects, fold_of) if f == 0]


def atomic_checkpoint_io():
    """Lightning's checkpoint writer, but through a temporary file and a rename: a crash or SIGKILL while
    saving leaves the previous checkpoint intact, never a truncated one."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    from mmhvae.files import atomic_path

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


def with_method(run: RunConfig, method: str) -> RunConfig:
    """The run configuration of `method` (model/registry.py): its network and its training recipe.

    The recipe (registry.METHOD_TRAIN_RECIPES) is applied only when `run` is switched to another method (as
    `--method` does). A config that already names `method` is taken as written (config.from_mapping gave it
    the recipe under its own values), so a saved run's or a study variant's settings are never overwritten."""
    try:
        model = network_config_for_method(method, run.model)
    except ValueError as exc:
        raise InputError(f"--method {method}: {exc}") from None
    train = replace(run.train, method=method, **recipe_on_switch(run.train.method, method))
    return RunConfig(model, run.data, train)


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


def initialise_from(module: MMHVAEModule, path: str | Path, run: RunConfig) -> dict[str, Any]:
    """Copy a model file's weights into the live and EMA networks; returns its provenance for the new model file.

    The architectures must match, except in parts the run trains (`train.trainable`): those parts start fresh
    where the model file's tensors do not fit them (a wider image decoder, say), and the frozen rest is the
    model file's. A part that only gained tensors keeps every tensor it had and starts the new ones fresh: ResViT
    from its Res-CNN (the same network without transformer branches), as ResViT's authors train it.
    """
    from mmhvae.model_file import load_model_file, weights_checksum

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
    from mmhvae.model.resvit import ResViT

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

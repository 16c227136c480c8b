"""The Lightning module of MMHVAE: one step of Algorithm 1, validation, and the state an exact resume needs.

One step: a batch of B slices sharing one missingness pattern r; T draws r' ~ p_alpha(. | r); for each r',
fuse only the modalities in r', decode every modality, and score reconstruction (r' ⊂ r observed) and
synthesis (observed in r, not in r') against the harmonised targets, plus the KL of Eq. 19 and, late in
training, the GAN term of Eq. 16 (the maths: objective.py). Then one update of the per-modality critics
(Algorithm 1, lines 27-35), whose "real" sample for a modality missing from the batch comes from a memory of
recent real images.

Each modality present in the batch is encoded once and its features are reused for the T draws (the
draws are batched into one decoding pass), which is exact: the encoders see only their own modality.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmhvae.config import RunConfig, from_mapping
from mmhvae.errors import InputError
from mmhvae.modalities import ModalitySet, Subset, SubsetSampler
from mmhvae.model.critic import ModalityCritics, critic_loss
from mmhvae.model.registry import build_network
from mmhvae.training.memory import RealImageMemory
from mmhvae.training.objective import gan_weight, kl_weight, mmhvae_losses, with_adversarial_term


class NonFiniteLossError(RuntimeError):
    """Training produced too many non-finite losses or gradients in a row."""


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
        self.critics = ModalityCritics(self.modalities.keys)
        self.memory = RealImageMemory(self.modalities.keys, train.memory_size)
        self.memory_generator = torch.Generator().manual_seed(train.seed)
        self.subset_sampler = SubsetSampler(train.mixture)
        self.image_loss_weights = torch.tensor(self.modalities.weights(train.image_loss_weights))
        self.rng = np.random.default_rng(train.seed)
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.minutes_before_this_session = 0.0  # of earlier training sessions (calls of `train` on the run)
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
        """T draws r' ~ p_alpha(. | r) of the mixture (Eq. 7-8): the MMHVAE family's own scheme, and every
        method's with `train.subset_sampling: mixture`."""
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
        """Eq. 19 averaged over the batch and the T draws, plus the GAN term of Eq. 16 once its weight is on
        (objective.py); "fake" holds the decoded images for the critics' update."""
        train = self.run_config.train
        output, rows = self.decode_passes(batch, subsets, temperature=1.0,
                                          generator=self.latent_generator(batch["inputs"].device))
        losses = mmhvae_losses(output.images, batch["targets"][rows], batch["present"].bool()[rows],
                               output.kl_total, self.image_loss_weights, train.image_loss,
                               kl_weight(self.global_step, train), train.kl_normalisation)
        weight = gan_weight(self.global_step, train)
        if weight > 0:
            losses = with_adversarial_term(losses, self.critic_scores(output.images), train.gan_loss, weight)
        losses["fake"] = output.images.detach()
        return losses

    def critic_scores(self, images: Tensor) -> list[Tensor]:
        """Each modality's critic's scores of the images [N, M, H, W] decoded for it."""
        return [self.critics(key, images[:, j]) for j, key in enumerate(self.modalities)]

    def critic_step(self, batch: dict[str, Tensor], fake: Tensor) -> Tensor | None:
        """Algorithm 1, lines 27-35: real (or remembered real) against synthesised, per modality."""
        targets, present = batch["targets"], batch["present"][0].bool()
        kind = self.run_config.train.gan_loss
        loss = None
        for j, key in enumerate(self.modalities):
            real = targets[:, j] if present[j] else self.memory.sample(key, targets.shape[0], self.memory_generator)
            if real is None:  # nothing remembered yet for a modality no batch has shown
                continue
            term = critic_loss(self.critics(key, real), self.critics(key, fake[:, j]), kind)
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
        """val_psnr_all and val_psnr_single, and val_loss (early stopping's criterion, the same for every
        method): the mean squared error over the observed images on the network's scale, averaged over the
        predictions from all observed inputs and from the first one alone."""
        inputs, targets, present = batch["inputs"], batch["targets"], batch["present"].bool()
        features = self.ema.encode(inputs, present)
        errors = []
        for name, subset in (("all", present), ("single", first_present_only(present))):
            output = self.ema.decode(features, subset, temperature=0.5)
            mse = ((output.images - targets) ** 2).flatten(2).mean(2)[present]
            psnr = (10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean()  # data range 2 on the network's scale
            self.log(f"val_psnr_{name}", psnr, batch_size=inputs.shape[0], prog_bar=(name == "all"))
            errors.append(mse.mean())
        self.log("val_loss", torch.stack(errors).mean(), batch_size=inputs.shape[0])

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


def first_present_only(present: Tensor) -> Tensor:
    """For each sample, a mask with only its first present modality."""
    first = present.float().argmax(dim=1)
    return F.one_hot(first, present.shape[1]).bool() & present

"""The MMHVAE network: M unimodal encoders, a hierarchical top-down latent path fused by a product of
experts at every level, and M image decoders (Sections 3.1, 3.4 and 4.2 of Dorent et al.).

Indexing: the paper numbers latent groups z_1 (finest, one 8-vector per pixel) to z_L (a global
vector). Here the network works on spatial levels s = 0 .. num_pool-1 (resolution image_size / 2**s,
paper group l = s + 1) plus the global group l = num_pool + 1 computed from the coarsest map.

`MMHVAE` has the interface of every synthesis network (model/interface.py): `encode` once, then `decode` any
subsets of the encoded modalities ("encode once, fuse many", what training with T subsets and 15-subset
inference need). Its configuration, `MMHVAEConfig`, is in model/mmhvae_config.py.

Two different "concatenation with zeros" exist here, do not confuse them:
- `encoder: "joint"` (the "Concat. w/ zeros" model of Section 4.4.2, "only one encoder is used", and the
  `concat-zeros` baseline of `mmhvae train --method`): ONE encoder reads the M images stacked as channels,
  zeros for the modalities outside r'. Its features depend on r', so `encode` only keeps the images and
  `decode` runs the joint encoder on each row's subset-masked images.
- `fusion: "concat_zeros"` (a feature-level fusion ablation): M per-modality encoders as usual, and at each
  level the expert reads the M feature maps concatenated, zeros for the modalities outside r'.
"""

from __future__ import annotations

import os
import shutil
from functools import partial

import torch
from torch import Tensor, nn

from mmhvae.errors import InputError
from mmhvae.model.blocks import (
    DecoderCell,
    Downsample,
    EncoderCell,
    Upsample,
    conv1x1,
    conv3x3,
    expert_head,
    image_decoder,
    run_block,
)
from mmhvae.model.distributions import Gaussian, LatentSampler, RowNoise, inverse_std_fusion, product_of_experts
from mmhvae.model.interface import (
    EncodedImages,
    EncodedModalities,
    MMHVAEOutput,
    SynthesisNetwork,
    zero_outside,
)
from mmhvae.model.mmhvae_config import KL_MODES, MMHVAEConfig


class ModalityEncoder(nn.Module):
    """Bottom-up encoder of one modality: stem, then per level [residual cell -> skip, stride-2 conv].

    With `in_channels` = M it is the joint encoder of `encoder: "joint"` (all modalities stacked).
    """

    def __init__(self, config: MMHVAEConfig, in_channels: int = 1):
        super().__init__()
        c = config.features
        self.stem = conv3x3(in_channels, c(0))
        self.cells = nn.ModuleList(EncoderCell(c(s), config.norm) for s in range(config.num_pool))
        self.downs = nn.ModuleList(Downsample(c(s), c(s + 1)) for s in range(config.num_pool))
        self.bottom = EncoderCell(c(config.num_pool), config.norm)
        self.recomputed_levels = 0  # activation checkpointing of the finest levels (MMHVAE.recompute_levels)

    def forward(self, image: Tensor) -> tuple[list[Tensor], Tensor]:
        """image [N, in_channels, H, W] -> (skips per level, flattened coarsest map [N, D])."""
        x = self.stem(image)
        skips = []
        for s, (cell, down) in enumerate(zip(self.cells, self.downs)):
            x = run_block(cell, x, recompute=s < self.recomputed_levels)
            skips.append(x)
            x = down(x)
        return skips, self.bottom(x).flatten(1)


class MMHVAE(SynthesisNetwork):
    """Multi-modal hierarchical VAE with a hierarchical mixture of products of experts."""

    config_class = MMHVAEConfig
    cpu_inference_channels_last = True

    def __init__(self, config: MMHVAEConfig):
        super().__init__()
        self.config = config
        c = config.features
        num_modalities = len(config.modalities)
        levels = range(config.num_pool)
        stochastic = set(config.stochastic_groups)
        self.stochastic_levels = tuple(s for s in levels if s + 1 in stochastic)
        joint = config.encoder == "joint"
        product_fusion = config.fusion in ("poe", "inverse_std")
        heads_per_level = num_modalities if product_fusion and config.heads == "per_modality" and not joint else 1
        # How many modality feature maps a head sees next to the top-down state.
        skip_copies = num_modalities if config.fusion == "concat_zeros" else 1

        if joint:  # one encoder on the M stacked images (Section 4.4.2, "Concat. w/ zeros")
            self.encoders = nn.ModuleList([ModalityEncoder(config, in_channels=num_modalities)])
        else:
            self.encoders = nn.ModuleList(ModalityEncoder(config) for _ in config.modalities)

        # Global group z_L: Eq. 13 writes h_phi_L without a modality index, so one Linear is shared.
        bottom_dim = c(config.num_pool) * config.bottom_size**2
        self.global_experts = nn.ModuleList([nn.Linear(skip_copies * bottom_dim, 2 * config.global_latent)])
        self.global_to_state = nn.Linear(config.global_latent, bottom_dim)

        self.upsample = nn.ModuleList(Upsample(c(s + 1), c(s)) for s in levels)
        self.cells = nn.ModuleList(
            DecoderCell(c(s), config.expansion, config.expand_kernel, config.norm) for s in levels
        )
        # Per stochastic level: the conditional prior p(z_l | z_>l), the experts h, and (except for
        # z_1, which goes straight to the image decoders) the map from z_l back into the state.
        self.priors = nn.ModuleDict()
        self.experts = nn.ModuleDict()
        self.z_to_state = nn.ModuleDict()
        for s in self.stochastic_levels:
            z = config.latent_channels[s]
            self.priors[str(s)] = conv1x1(c(s), 2 * z)
            self.experts[str(s)] = nn.ModuleList(
                expert_head((1 + skip_copies) * c(s), c(s) // 2, z) for _ in range(heads_per_level)
            )
            if s > 0:
                self.z_to_state[str(s)] = conv1x1(z, c(s))

        z1_stochastic = 0 in self.stochastic_levels
        decoder_in = config.latent_channels[0] if z1_stochastic else c(0)
        width = config.decoder_features or config.base_features
        self.decoders = nn.ModuleList(
            image_decoder(decoder_in, width, config.decoder_blocks, config.norm) for _ in config.modalities
        )
        self.recomputed_levels = 0

    def recompute_levels(self, levels: int) -> MMHVAE:
        """Activation checkpointing of the `levels` finest levels (encoder cells, top-down cells and, from one
        level on, the image decoders) while training: the same outputs and gradients for less memory."""
        self.recomputed_levels = int(levels)
        for encoder in self.encoders:
            encoder.recomputed_levels = int(levels)
        return self

    def compile_blocks(self) -> MMHVAE:
        """torch.compile, in place, the convolutional stacks: encoders, top-down cells and image decoders (nearly
        all the MACs). The fusion, whose expert selection depends on the data, stays eager. State-dict keys do
        not change, so checkpoints and model files are unaffected. Pays off on GPUs (docs/performance.md says what
        it does on a CPU).

        Blocks of one class share a forward function, and torch compiles a function anew for each input shape
        and channel count it meets, up to `torch._dynamo.config.recompile_limit` (8) times; past that it
        silently runs the rest eagerly. The limit is raised, for the whole process, to 8 per block.
        """
        import torch._dynamo

        # torch compiles the generated kernels with the system's C++ compiler, on CPUs and GPUs alike; without one
        # it fails only at the first forward pass, deep inside a run, with a page of traceback
        compilers = (os.environ.get("CXX", ""), "g++", "clang++", "c++")
        if not any(shutil.which(name) for name in compilers if name):
            raise InputError("torch.compile needs a C++ compiler (g++ or clang++, or $CXX) and this machine has "
                             "none: install one, or leave out --compile / train.compile")
        blocks = (*self.encoders, *self.cells, *self.decoders)
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, 8 * len(blocks))
        for block in blocks:
            block.compile()
        return self

    # ----- bottom-up ----------------------------------------------------------------------------

    def encode(self, images: Tensor, present: Tensor) -> EncodedModalities:
        """Run each modality's encoder on the samples where that modality is present.

        images: [B, M, H, W] in config.modalities order (values of absent modalities are ignored,
        they may be anything, NaN included); present: [B, M] bool.

        With `encoder: "joint"` the features depend on the subset fused, so nothing is encoded here: the
        images are kept (absent ones zeroed) and `decode` runs the joint encoder on each subset.
        """
        present = self._check_inputs(images, present)
        if self.config.encoder == "joint":
            return EncodedImages.from_images(images, present)

        per_modality_skips, per_modality_bottom = [], []
        for j, encoder in enumerate(self.encoders):
            rows = present[:, j].nonzero(as_tuple=True)[0]
            if rows.numel() == images.shape[0]:
                skips, bottom = encoder(images[:, j].unsqueeze(1))
            else:
                skips, bottom = self._zero_features(images)
                if rows.numel() > 0:
                    found_skips, found_bottom = encoder(images[rows, j].unsqueeze(1))
                    # index_copy (out of place) keeps the scatter differentiable; zeros take the features'
                    # dtype, which autocast may have made bf16.
                    skips = [zero.to(f.dtype).index_copy(0, rows, f) for zero, f in zip(skips, found_skips)]
                    bottom = bottom.to(found_bottom.dtype).index_copy(0, rows, found_bottom)
            per_modality_skips.append(skips)
            per_modality_bottom.append(bottom)
        skips_by_level = [torch.stack(level, dim=1) for level in zip(*per_modality_skips)]
        return EncodedModalities(skips_by_level, torch.stack(per_modality_bottom, dim=1), present)

    def _encode_joint(self, features: EncodedModalities, subset: Tensor) -> tuple[EncodedModalities, Tensor]:
        """Joint encoder on the images of r' (zeros elsewhere): features of one pseudo-modality, [B, 1, ...].

        The returned mask [B, 1] is False for an empty subset, whose row then samples from the prior, as
        with per-modality encoders.
        """
        if not isinstance(features, EncodedImages):
            raise ValueError("encoder 'joint' needs features from its own `encode` (they hold the images)")
        skips, bottom = self.encoders[0](zero_outside(features.images, subset))
        any_input = subset.any(dim=1, keepdim=True)
        joint = EncodedModalities([s.unsqueeze(1) for s in skips], bottom.unsqueeze(1), any_input)
        return joint, any_input

    def _zero_features(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        cfg, batch = self.config, images.shape[0]
        skips = [
            images.new_zeros(batch, cfg.features(s), cfg.image_size // 2**s, cfg.image_size // 2**s)
            for s in range(cfg.num_pool)
        ]
        bottom = images.new_zeros(batch, cfg.features(cfg.num_pool) * cfg.bottom_size**2)
        return skips, bottom

    # ----- top-down -----------------------------------------------------------------------------

    def decode(
        self,
        features: EncodedModalities,
        subset: Tensor,
        temperature: float = 1.0,
        sample: bool = True,
        kl: str | None = None,
        generator: torch.Generator | RowNoise | None = None,
    ) -> MMHVAEOutput:
        """Sample z_L, ..., z_1 from the fused posterior q(z | x_r') of Eq. 13 and decode all images.

        subset: [B, M] bool, the modalities r' fused for each sample (must be encoded: subset <=
        features.present). Samples of one batch may use different subsets. An all-False row samples
        from the prior. temperature scales the posterior standard deviations (0 or sample=False: use
        the means). kl: "analytic" or "sample" (Eq. 19), default config.kl.

        With `encoder: "joint"` the joint encoder first runs here on the images masked by each row's
        subset (zeros outside r'), and its features act as a single expert per level.
        """
        subset = self._check_subset(features, subset)
        if self.config.encoder == "joint":
            features, subset = self._encode_joint(features, subset)
        kl_mode = self.config.kl if kl is None else kl
        if kl_mode not in KL_MODES:
            raise ValueError(f"kl must be one of {KL_MODES}, got {kl!r}")
        sampler = LatentSampler(temperature if sample else 0.0, generator, kl_mode)

        h, global_kl = self._sample_global_group(features, subset, sampler)
        decoder_input, z1_mean, kls = self._sample_spatial_groups(h, features, subset, sampler)
        images = torch.cat([run_block(decoder, decoder_input, recompute=self.recomputed_levels > 0)
                            for decoder in self.decoders], dim=1)
        kls = [*reversed(kls), global_kl]  # finest group first, as in the paper's numbering
        return MMHVAEOutput(images=images, kl=kls, kl_groups=self.config.stochastic_groups, z1_mean=z1_mean)

    def _sample_global_group(self, features: EncodedModalities, subset: Tensor, sampler: LatentSampler
                             ) -> tuple[Tensor, Tensor]:
        """z_L with the fixed prior N(0, I) (Eq. 5, Eq. 13 first factor): the coarsest top-down state and the KL."""
        cfg, batch = self.config, features.batch_size
        prior = Gaussian.standard_like(features.bottom.new_zeros(batch, cfg.global_latent))
        q = self._posterior(prior, self.global_experts, features.bottom, None, subset)
        z, kl = sampler.draw(q, prior)
        return self.global_to_state(z).view(batch, cfg.features(cfg.num_pool), cfg.bottom_size, cfg.bottom_size), kl

    def _sample_spatial_groups(self, h: Tensor, features: EncodedModalities, subset: Tensor,
                               sampler: LatentSampler) -> tuple[Tensor, Tensor | None, list[Tensor]]:
        """The top-down path from the coarsest state h, coarsest level first: z_l ~ q(z_l | x_r', z_>l) of Eq. 13
        at the stochastic levels, the deterministic state elsewhere.

        Returns the image decoders' input (z_1, or the finest state if z_1 is not stochastic), the posterior
        mean of z_1 (or None) and the KL of each stochastic group, coarsest first.
        """
        kls: list[Tensor] = []
        z1_mean, decoder_input = None, h
        for s in reversed(range(self.config.num_pool)):
            recompute = s < self.recomputed_levels
            state = run_block(partial(self._top_down_state, s), h, recompute=recompute)
            if s not in self.stochastic_levels:
                h = decoder_input = state
                continue
            prior_and_posterior = run_block(partial(self._prior_and_posterior, s, subset), state,
                                            features.skips[s], recompute=recompute)
            prior, q = Gaussian(*prior_and_posterior[:2]), Gaussian(*prior_and_posterior[2:])
            z, kl = sampler.draw(q, prior)
            kls.append(kl)
            if s == 0:
                z1_mean, decoder_input = q.mean, z
            elif self.config.topdown == "full":
                h = state + self.z_to_state[str(s)](z)
            else:
                h = self.z_to_state[str(s)](z)
        return decoder_input, z1_mean, kls

    def _top_down_state(self, s: int, h: Tensor) -> Tensor:
        """The deterministic top-down state at level s from the coarser state h (upsampling, then a cell)."""
        return self.cells[s](self.upsample[s](h))

    def _prior_and_posterior(self, s: int, subset: Tensor, state: Tensor, skips: Tensor
                             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """p(z_l | z_>l) and q(z_l | x_r', z_>l) of level s as (prior mean, prior log-variance, posterior mean,
        posterior log-variance): plain tensors, so that activation checkpointing can recompute the experts and
        the fusion, whose full-resolution activations dominate the memory at the finest levels."""
        prior = Gaussian.from_params(self.priors[str(s)](state), self.config.soft_clamp)
        q = self._posterior(prior, self.experts[str(s)], skips, state, subset)
        return prior.mean, prior.logvar, q.mean, q.logvar

    # ----- fusion -------------------------------------------------------------------------------

    def _posterior(
        self,
        prior: Gaussian,
        heads: nn.ModuleList,
        skips: Tensor,
        state: Tensor | None,
        subset: Tensor,
    ) -> Gaussian:
        """q(z_l | x_r', z_>l) for one group: prior times the fused experts of the modalities in r'.

        skips: [B, M, ...] modality features at this level; state: top-down state [B, C, H, W] (None
        for the global group, whose experts see the image features only).
        """
        fusion = self.config.fusion
        if fusion in ("poe", "inverse_std"):
            params = self._run_experts(heads, skips, state, subset, 2 * prior.mean.shape[1])
            experts = Gaussian.from_params(params, self.config.soft_clamp, dim=2)
            fuse = product_of_experts if fusion == "poe" else inverse_std_fusion
            return fuse(prior, experts.mean, experts.logvar, subset)

        # Ablations: merge the features deterministically, then one expert times the prior (Eq. 12).
        mask = subset.reshape(subset.shape + (1,) * (skips.ndim - 2))
        kept = torch.where(mask, skips, torch.zeros_like(skips))
        if fusion == "average":
            merged = kept.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        else:  # concat_zeros
            merged = kept.flatten(1, 2)
        head_input = merged if state is None else torch.cat([state, merged], dim=1)
        expert = Gaussian.from_params(heads[0](head_input), self.config.soft_clamp)
        always = torch.ones_like(subset[:, :1])
        return product_of_experts(prior, expert.mean.unsqueeze(1), expert.logvar.unsqueeze(1), always)

    def _run_experts(
        self, heads: nn.ModuleList, skips: Tensor, state: Tensor | None, subset: Tensor, out_channels: int
    ) -> Tensor:
        """Evaluate expert heads only on the (sample, modality) pairs in `subset`.

        Returns [B, M, out_channels, ...]; entries outside `subset` are zeros and are masked out by
        the fusion. With shared heads all pairs go through the one head in a single batch.
        """
        batch, num_modalities = subset.shape
        spatial = skips.shape[3:]
        rows, cols = subset.nonzero(as_tuple=True)
        outputs, out_rows, out_cols = [], [], []
        if len(heads) == 1:  # shared head: every (sample, modality) pair in one batch
            groups = [(heads[0], torch.ones_like(cols, dtype=torch.bool))]
        else:  # one head per modality j (Eq. 12's phi_l^j)
            groups = [(head, cols == j) for j, head in enumerate(heads)]
        for head, selected in groups:
            if not bool(selected.any()):
                continue
            r, m = rows[selected], cols[selected]
            x = skips[r, m]
            if state is not None:
                x = torch.cat([state[r], x], dim=1)
            outputs.append(head(x))
            out_rows.append(r)
            out_cols.append(m)
        if not outputs:
            return skips.new_zeros(batch, num_modalities, out_channels, *spatial)
        values = torch.cat(outputs)  # its dtype, not the skips', under autocast
        full = values.new_zeros(batch, num_modalities, out_channels, *spatial)
        return full.index_put((torch.cat(out_rows), torch.cat(out_cols)), values)

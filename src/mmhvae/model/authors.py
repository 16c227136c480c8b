"""The authors' released network (ReubenDo/MMHVAE, `MHVAE2D`), rebuilt to load their checkpoints.

This is a compatibility architecture, the `authors` variant: it computes exactly what their network
computes, and its state_dict has their key names (`first_conv.us.weight`,
`conv_blocks_context.us.0.conv_0.weight`, `qz.0.last_conv.parametrizations.weight.original0`, ...), so
their `CP_main_1000.pth` loads into it unchanged. Module attributes are therefore named after their
checkpoint keys, not in our usual style; the blocks are in model/authors_blocks.py. It has the interface of
every synthesis network (model/interface.py). For our own training use `MMHVAE` (model/mmhvae.py), whose
defaults follow the paper.

What differs from our MMHVAE (each difference is a named piece below; the rest reuses our code):

- Expert heads and priors output a mean and a log standard deviation (not a log-variance), both
  soft-clamped at 10 (`distributions.gaussian_from_log_scale`).
- Experts are fused with the prior by inverse standard deviation, not Eq. 14's inverse variance
  (`distributions.inverse_std_fusion`, shared with our `fusion: inverse_std` option).
- One posterior head per level, shared by all modalities (`AuthorsPosteriorHead`), applied to
  concat(top-down state, that modality's skip); one Linear for the global group z_L (paper Eq. 13).
- Markov top-down path: the state of a level is built from the sampled latent of the level just above
  only (the paper writes p(z_l | z_>l)).
- The top-down cell normalises its input first (`AuthorsDecoderCell`); the image decoders use
  reflection padding and ReLU (`AuthorsImageDecoder`); the 1x1 convolutions of the priors and heads and
  both Linear layers of z_L are weight-normalised (torch.nn.utils.parametrizations.weight_norm).
- Every output image is masked by the foreground (> -1) of the FIRST input modality: outside it the
  output is the background -1 (`mask_by_first_input`). Their inference passes modalities in the order
  us, t2, cet1, flair, so by default the first modality of the subset in config order is used; the
  `mask_modality` argument of `decode` names another one.

Latent sizes at the paper setting (base 16, max 128, 6 poolings, 192x192): z_7 a 256-vector, z_6..z_4
64 channels at 6, 12, 24 pixels, z_3 32@48, z_2 16@96, z_1 8@192; 13,774,770 parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmhvae.modalities import require_key
from mmhvae.model.authors_blocks import (
    AuthorsDecoderCell,
    AuthorsEncoderCell,
    AuthorsImageDecoder,
    AuthorsPosteriorHead,
    AuthorsUpsample,
    FlattenLinear,
    LinearToMap,
    weight_normed_conv1x1,
)
from mmhvae.model.blocks import conv3x3
from mmhvae.model.distributions import Gaussian, LatentSampler, RowNoise, gaussian_from_log_scale, inverse_std_fusion
from mmhvae.model.interface import EncodedModalities, MMHVAEOutput, PlainDictConfig, SynthesisNetwork, config_checker

VARIANT = "authors"


@dataclass
class AuthorsConfig(PlainDictConfig):
    """Hyper-parameters of the authors' `MHVAE2D`; defaults are their released model (paper setting).

    `modalities` are our keys (what predict and the model file use); `checkpoint_keys` are theirs, in
    the same order, and name the per-modality modules (so the state_dict keys match their checkpoint).
    The order matters: it is the order in which their inference passes the inputs, so it decides which
    input masks the outputs (see `AuthorsMMHVAE.decode`).
    """

    modalities: tuple[str, ...] = ("us", "t2", "t1c", "flair")
    checkpoint_keys: tuple[str, ...] = ("us", "t2", "cet1", "flair")
    image_size: int = 192
    num_pool: int = 6
    base_features: int = 16
    max_features: int = 128
    # Image decoders: width (their nfeat_finalblock) and number of ResNet blocks (their nb_finalblocks).
    decoder_features: int = 8
    decoder_blocks: int = 6
    soft_clamp: float = 10.0
    # Their with_residual / with_se switches (both on in the released model).
    residual: bool = True
    squeeze_excitation: bool = True
    variant: str = VARIANT

    # Read by `mmhvae info`, which describes both architectures.
    topdown: ClassVar[str] = "markov"
    heads: ClassVar[str] = "shared"
    fusion: ClassVar[str] = "inverse_std"

    def __post_init__(self) -> None:
        self.checkpoint_keys = tuple(self.checkpoint_keys)
        check = config_checker(self, VARIANT)
        check(len(self.checkpoint_keys) == len(self.modalities),
              f"checkpoint_keys {self.checkpoint_keys} must name one module per modality {self.modalities}")
        check(self.num_pool >= 1 and self.base_features >= 2 and self.max_features >= 2,
              "num_pool >= 1 and base_features, max_features >= 2 are needed")
        check(self.image_size % 2**self.num_pool == 0 and self.image_size // 2**self.num_pool >= 2,
              f"image_size {self.image_size} must be divisible by 2**num_pool = {2**self.num_pool} "
              "and leave a coarsest map of at least 2x2")

    # ----- derived quantities -------------------------------------------------------------------

    def features(self, level: int) -> int:
        """Encoder channels at spatial level `level` (0 = full resolution, num_pool = coarsest map)."""
        return min(self.base_features * 2**level, self.max_features)

    @property
    def bottom_size(self) -> int:
        return self.image_size // 2**self.num_pool

    @property
    def latent_channels(self) -> tuple[int, ...]:
        """Channels of the spatial latents z_1 .. z_{num_pool}: half the features of their level."""
        return tuple(self.features(s) // 2 for s in range(self.num_pool))

    @property
    def global_latent(self) -> int:
        """Size of the global latent z_L (their 2 * max_features)."""
        return 2 * self.max_features

    @property
    def stochastic_groups(self) -> tuple[int, ...]:
        """Every group is stochastic: z_1 (finest) .. z_{num_pool + 1} (global)."""
        return tuple(range(1, self.num_pool + 2))

    # ----- serialisation ------------------------------------------------------------------------

    @classmethod
    def from_authors_arguments(cls, arguments: Mapping[str, Any]) -> AuthorsConfig:
        """From the constructor arguments of their `MHVAE2D` (names as in their pred.py / train.py).

        Their modality names become our keys (cet1 -> t1c) and are kept as `checkpoint_keys`.
        """
        if arguments.get("last_act", "tanh") != "tanh":
            raise ValueError("AuthorsConfig: only their released output activation 'tanh' is supported")
        if arguments.get("num_feat_img", 1) != 1:
            raise ValueError("AuthorsConfig: only one output channel per modality is supported")
        shape = arguments.get("original_shape", (cls.image_size, cls.image_size))
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"AuthorsConfig: a square 2D original_shape is needed, got {shape}")
        theirs = tuple(arguments["modalities"])
        return cls(
            modalities=tuple(require_key(k) for k in theirs),
            checkpoint_keys=theirs,
            image_size=int(shape[0]),
            num_pool=int(arguments["num_pool"]),
            base_features=int(arguments["base_num_features"]),
            max_features=int(arguments["max_features"]),
            decoder_features=int(arguments.get("nfeat_finalblock", 8)),
            decoder_blocks=int(arguments.get("nb_finalblocks", 6)),
            soft_clamp=float(arguments.get("clamp_value", 10.0)),
            residual=bool(arguments.get("with_residual", True)),
            squeeze_excitation=bool(arguments.get("with_se", True)),
        )


# ----- the output mask ------------------------------------------------------------------------------


def mask_by_first_input(images: Tensor, foreground: Tensor) -> Tensor:
    """Authors' code: outputs outside the first input's foreground are the background value -1.

    images [B, M, H, W] in [-1, 1]; foreground [B, H, W] bool (True where the output is kept).
    """
    return torch.where(foreground.unsqueeze(1), images, torch.full_like(images, -1.0))


# ----- the network ---------------------------------------------------------------------------------


@dataclass
class AuthorsEncoded(EncodedModalities):
    """Our `EncodedModalities` plus each input's foreground [B, M, H, W] (input > -1), for the output mask."""

    foreground: Tensor

    def index(self, rows: Tensor) -> AuthorsEncoded:
        return AuthorsEncoded([s[rows] for s in self.skips], self.bottom[rows], self.present[rows],
                              self.foreground[rows])


class AuthorsMMHVAE(SynthesisNetwork):
    """Their `MHVAE2D`, with their state_dict keys and our inference interface (`encode` / `decode`)."""

    config_class = AuthorsConfig

    def __init__(self, config: AuthorsConfig):
        super().__init__()
        self.config = config
        c = config.features
        keys = config.checkpoint_keys
        switches = {"residual": config.residual, "squeeze_excitation": config.squeeze_excitation}
        top = config.num_pool

        # Registered in their order, so that our state_dict lists the keys as their checkpoint does.
        self.bottleneck_down = FlattenLinear(c(top) * config.bottom_size**2, 2 * config.global_latent)
        self.bottleneck_up = LinearToMap(
            config.global_latent, (config.max_features, config.bottom_size, config.bottom_size)
        )

        # One bottom-up encoder per modality: stem, then per level [cell -> skip, stride-2 conv], then a
        # last cell on the coarsest map.
        self.first_conv = nn.ModuleDict({k: conv3x3(1, c(0)) for k in keys})
        self.conv_blocks_context = nn.ModuleDict(
            {k: nn.ModuleList(AuthorsEncoderCell(c(s), **switches) for s in range(top + 1)) for k in keys}
        )
        self.td = nn.ModuleDict(
            {k: nn.ModuleList(conv3x3(c(s), c(s + 1), stride=2) for s in range(top)) for k in keys}
        )

        # Top-down path, coarsest level first (their index i is our spatial level num_pool - 1 - i).
        levels = list(reversed(range(top)))
        self.conv_blocks_localization = nn.ModuleList(AuthorsDecoderCell(c(s), **switches) for s in levels)
        state_in = [config.max_features] + [config.latent_channels[s] for s in levels[:-1]]
        self.tu = nn.ModuleList(AuthorsUpsample(n_in, c(s)) for n_in, s in zip(state_in, levels))
        self.qz = nn.ModuleList(AuthorsPosteriorHead(2 * c(s), c(s)) for s in levels)
        self.pz = nn.ModuleList(weight_normed_conv1x1(c(s)) for s in levels)

        self.final_blocks = nn.ModuleDict(
            {k: AuthorsImageDecoder(config.latent_channels[0], config.decoder_features, config.decoder_blocks)
             for k in keys}
        )

    # ----- bottom-up ----------------------------------------------------------------------------

    def encode(self, images: Tensor, present: Tensor) -> AuthorsEncoded:
        """Encode each present modality; same contract as `MMHVAE.encode`.

        images: [B, M, H, W] in config.modalities order, on their input scale (background -1); values
        of absent modalities are ignored. present: [B, M] bool.
        """
        cfg = self.config
        present = self._check_inputs(images, present)

        batch = images.shape[0]
        skips = [images.new_zeros(batch, self.num_modalities, cfg.features(s), cfg.image_size // 2**s,
                                  cfg.image_size // 2**s) for s in range(cfg.num_pool)]
        bottom = images.new_zeros(batch, self.num_modalities, cfg.features(cfg.num_pool) * cfg.bottom_size**2)
        for j, key in enumerate(cfg.checkpoint_keys):
            rows = present[:, j].nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            x = self.first_conv[key](images[rows, j].unsqueeze(1))
            cells, downs = self.conv_blocks_context[key], self.td[key]
            for s in range(cfg.num_pool):
                x = cells[s](x)
                skips[s] = skips[s].index_put((rows, torch.full_like(rows, j)), x)
                x = downs[s](x)
            bottom = bottom.index_put((rows, torch.full_like(rows, j)), cells[cfg.num_pool](x).flatten(1))
        foreground = present[:, :, None, None] & (images > -1.0)
        return AuthorsEncoded(skips, bottom, present, foreground)

    # ----- top-down -----------------------------------------------------------------------------

    def decode(
        self,
        features: AuthorsEncoded,
        subset: Tensor,
        temperature: float = 1.0,
        sample: bool = True,
        kl: str | None = None,
        generator: torch.Generator | RowNoise | None = None,
        mask_modality: str | None = None,
    ) -> MMHVAEOutput:
        """Sample z_L, ..., z_1 from the fused posterior of `subset` and decode every modality.

        Same contract as `MMHVAE.decode` (subset [B, M] bool within features.present; temperature
        scales the posterior standard deviations, 0 or sample=False uses the means). The outputs are
        masked by the foreground of the first modality of each row's subset in config order (their
        inference passes us, t2, cet1, flair in that order), or of `mask_modality` (one of
        config.modalities, present in every row) if given. An all-False row samples from the prior and
        is not masked. kl: per group, "analytic" KL(q || p) (default) or the single-sample estimate;
        their training loss also holds KLs against each single-modality posterior, which are not
        computed here.
        """
        cfg = self.config
        subset = self._check_subset(features, subset)
        kl_mode = "analytic" if kl is None else kl
        if kl_mode not in ("analytic", "sample"):
            raise ValueError(f"kl must be 'analytic' or 'sample', got {kl!r}")
        sampler = LatentSampler(temperature if sample else 0.0, generator, kl_mode)
        keep = self._output_mask(features, subset, mask_modality)

        # Global group z_L: prior N(0, I) times the global experts (shared Linear).
        prior = Gaussian.standard_like(features.bottom.new_zeros(features.batch_size, cfg.global_latent))
        experts = self._experts(self.bottleneck_down, features.bottom, None, subset, 2 * cfg.global_latent)
        q = self._posterior(prior, experts, subset)
        z, kl_global = sampler.draw(q, prior)
        kls = [kl_global]
        state_input = self.bottleneck_up(z)

        for i, level in enumerate(reversed(range(cfg.num_pool))):
            state = self.conv_blocks_localization[i](self.tu[i](state_input))
            prior = gaussian_from_log_scale(self.pz[i](state), cfg.soft_clamp)
            experts = self._experts(self.qz[i], features.skips[level], state, subset, cfg.features(level))
            q = self._posterior(prior, experts, subset)
            z, kl_level = sampler.draw(q, prior)
            kls.append(kl_level)
            state_input = z  # Markov: the next level is built from this latent only

        images = torch.cat([self.final_blocks[k](z) for k in cfg.checkpoint_keys], dim=1)
        kls.reverse()  # finest group first, as in the paper's numbering
        return MMHVAEOutput(mask_by_first_input(images, keep), kls, cfg.stochastic_groups, z1_mean=q.mean)

    # ----- helpers ------------------------------------------------------------------------------

    def _output_mask(self, features: AuthorsEncoded, subset: Tensor, mask_modality: str | None) -> Tensor:
        """[B, H, W] bool: the foreground of the input that masks each row's outputs."""
        if mask_modality is None:
            first = subset.to(torch.int8).argmax(dim=1)  # argmax returns the first True
        else:
            if mask_modality not in self.config.modalities:
                raise ValueError(f"mask_modality {mask_modality!r} is not one of {self.config.modalities}")
            j = self.config.modalities.index(mask_modality)
            if not bool(features.present[:, j].all()):
                raise ValueError(f"mask_modality {mask_modality!r} was not encoded for every row")
            first = torch.full_like(subset[:, 0], j, dtype=torch.long)
        rows = torch.arange(subset.shape[0], device=subset.device)
        keep = features.foreground[rows, first]
        if mask_modality is None:
            keep = keep | ~subset.any(dim=1)[:, None, None]  # prior samples: nothing to mask with
        return keep

    def _experts(self, head: nn.Module, inputs: Tensor, state: Tensor | None, subset: Tensor,
                 out_channels: int) -> Gaussian:
        """Run the shared head on every (row, modality) pair of `subset` in one batch.

        inputs: [B, M, ...] per-modality features; state: [B, C, H, W] top-down state, or None for z_L.
        Returns experts [B, M, out_channels / 2, ...]; pairs outside `subset` hold zeros, which the
        fusion ignores.
        """
        rows, cols = subset.nonzero(as_tuple=True)
        full = inputs.new_zeros(*subset.shape, out_channels, *inputs.shape[3:])
        if rows.numel():
            x = inputs[rows, cols]
            if state is not None:
                x = torch.cat([state[rows], x], dim=1)  # their order: top-down state first, then the skip
            full = full.index_put((rows, cols), head(x))
        return gaussian_from_log_scale(full, self.config.soft_clamp, dim=2)

    def _posterior(self, prior: Gaussian, experts: Gaussian, subset: Tensor) -> Gaussian:
        """Authors' fusion: prior and experts weighted by inverse standard deviation (not Eq. 14)."""
        return inverse_std_fusion(prior, experts.mean, experts.logvar, subset)

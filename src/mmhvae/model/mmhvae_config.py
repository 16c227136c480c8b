"""The architecture of an MMHVAE network (Sections 3.4 and 4.2): `MMHVAEConfig`, a dataclass that round-trips
through a plain dict, with the paper's settings as defaults and the options of the ablations (Section 4.4.2)
and of the authors' code (`*_MODES`). The network itself is `MMHVAE` (model/mmhvae.py)."""

from __future__ import annotations

from dataclasses import dataclass

from mmhvae.model.blocks import NORMS
from mmhvae.model.interface import PlainDictConfig, config_checker

TOPDOWN_MODES = ("full", "markov")
HEAD_MODES = ("per_modality", "shared")
FUSION_MODES = ("poe", "inverse_std", "average", "concat_zeros")
KL_MODES = ("analytic", "sample")
ENCODER_MODES = ("per_modality", "joint")


@dataclass
class MMHVAEConfig(PlainDictConfig):
    """Architecture of an MMHVAE network. Round-trips through a plain dict (`to_dict`/`from_dict`).

    Options marked "paper" are the defaults; the alternatives reproduce the authors' code or the
    ablations of Section 4.4.2.
    """

    modalities: tuple[str, ...] = ("us", "t2", "t1c", "flair")
    image_size: int = 64
    # Number of stride-2 downsamplings; the coarsest map is image_size / 2**num_pool (paper: 192 -> 3).
    num_pool: int = 4
    base_features: int = 16
    max_features: int = 128
    # Channels of the spatial latent groups, finest (z_1) first; one entry per level (num_pool).
    latent_channels: tuple[int, ...] = (8, 16, 32, 64)
    # Size of the global latent z_L (a vector, from a Linear on the flattened coarsest map).
    global_latent: int = 256
    # Number L of stochastic groups, the L coarsest ones (None: all num_pool + 1). L=1 is MoPoE-like.
    num_latent_levels: int | None = None
    # Explicit paper group indices (1 = finest, num_pool + 1 = global), e.g. (1, 4, 7) as in Table II;
    # overrides num_latent_levels. Non-stochastic levels are decoded deterministically.
    latent_groups: tuple[int, ...] | None = None
    # "full" (paper, p(z_l | z_>l)): the top-down state accumulates all coarser latents;
    # "markov" (authors' code): the state is built from the latent just above only.
    topdown: str = "full"
    # "per_modality" (paper, Eq. 12: phi_l^j) or "shared" (authors' code: one head per level).
    # Only meaningful for the product fusions; "average"/"concat_zeros" have one head per level.
    heads: str = "per_modality"
    # "poe" (paper, Eq. 14), "inverse_std" (authors' code), "average" / "concat_zeros" (ablations; the
    # latter concatenates per-modality FEATURES, unlike encoder="joint" below).
    fusion: str = "poe"
    # "per_modality" (paper: one encoder per modality, fused by `fusion`) or "joint" (Section 4.4.2's
    # "Concat. w/ zeros": one encoder on the M images concatenated as channels, zeros outside r', then one
    # expert per level times the prior; requires fusion "poe", which with a single expert is just that).
    encoder: str = "per_modality"
    decoder_blocks: int = 5
    # Width of the image decoders (None: base_features).
    decoder_features: int | None = None
    soft_clamp: float = 10.0
    norm: str = "instance"
    expansion: int = 6
    expand_kernel: int = 3
    # Per-level KL reported by `decode`: analytic, or the single-sample estimate of Eq. 19.
    kl: str = "analytic"

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        self.latent_channels = tuple(int(c) for c in self.latent_channels)
        if self.latent_groups is not None:
            self.latent_groups = tuple(sorted({int(g) for g in self.latent_groups}))
        self._validate()

    def _validate(self) -> None:
        check = config_checker(self)
        check(self.num_pool >= 1, "num_pool must be >= 1")
        check(
            self.image_size % 2**self.num_pool == 0 and self.image_size // 2**self.num_pool >= 2,
            f"image_size {self.image_size} must be divisible by 2**num_pool = {2**self.num_pool} "
            "and leave a coarsest map of at least 2x2 (instance norm needs > 1 pixel)",
        )
        check(
            len(self.latent_channels) == self.num_pool,
            f"latent_channels needs one entry per level ({self.num_pool}), got {self.latent_channels}",
        )
        check(self.topdown in TOPDOWN_MODES, f"topdown must be one of {TOPDOWN_MODES}")
        check(self.heads in HEAD_MODES, f"heads must be one of {HEAD_MODES}")
        check(self.fusion in FUSION_MODES, f"fusion must be one of {FUSION_MODES}")
        check(self.kl in KL_MODES, f"kl must be one of {KL_MODES}")
        check(self.encoder in ENCODER_MODES, f"encoder must be one of {ENCODER_MODES}")
        check(
            self.encoder == "per_modality" or self.fusion == "poe",
            f"encoder 'joint' has one expert per level (prior x expert) and needs fusion 'poe', got {self.fusion!r}",
        )
        check(self.norm in NORMS, f"norm must be one of {NORMS}")
        top = self.num_pool + 1
        if self.num_latent_levels is not None:
            check(1 <= self.num_latent_levels <= top, f"num_latent_levels must be in [1, {top}]")
        if self.latent_groups is not None:
            check(
                all(1 <= g <= top for g in self.latent_groups) and top in self.latent_groups,
                f"latent_groups must lie in [1, {top}] and contain the global group {top}",
            )

    # ----- derived quantities -------------------------------------------------------------------

    @property
    def stochastic_groups(self) -> tuple[int, ...]:
        """Paper indices of the stochastic latent groups, finest first (always ends with the global)."""
        top = self.num_pool + 1
        if self.latent_groups is not None:
            return self.latent_groups
        count = top if self.num_latent_levels is None else self.num_latent_levels
        return tuple(range(top - count + 1, top + 1))

    def features(self, level: int) -> int:
        """Feature channels at spatial level `level` (0 = full resolution, num_pool = coarsest map)."""
        return min(self.base_features * 2**level, self.max_features)

    @property
    def bottom_size(self) -> int:
        return self.image_size // 2**self.num_pool

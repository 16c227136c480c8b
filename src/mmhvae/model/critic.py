"""Per-modality critics (discriminators), their losses, and the memory of real images (Section 3.5).

One PatchGAN critic d_psi_j per modality j judges single 2D images of that modality. Because most
batches lack some modalities, Algorithm 1 (lines 28-31) keeps, for every modality, the last real
images seen and uses them as the "real" sample when the modality is missing from the current batch;
`RealImageMemory` is that memory (a ring buffer per modality, saveable for exact resume).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

GAN_LOSSES = ("lsgan", "paper")


class PatchCritic(nn.Module):
    """PatchGAN critic for one modality: [N, H, W] or [N, 1, H, W] -> patch scores [N, 1, h, w].

    Wraps MONAI's PatchDiscriminator with instance norm instead of batch norm, so that real and
    synthetic batches are scored independently of each other's batch statistics.
    """

    def __init__(self, channels: int = 32, num_layers: int = 3):
        super().__init__()
        # Imported here because importing MONAI takes seconds; the memory and losses do not need it.
        from monai.networks.nets.patchgan_discriminator import PatchDiscriminator

        self.net = PatchDiscriminator(
            spatial_dims=2,
            channels=channels,
            in_channels=1,
            out_channels=1,
            num_layers_d=num_layers,
            norm="INSTANCE",
        )

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim == 3:
            images = images.unsqueeze(1)
        # MONAI returns every intermediate feature map (for feature matching); the scores are last.
        return self.net(images)[-1]


class ModalityCritics(nn.Module):
    """One independent critic per modality key: `critics(modality, images)` -> patch scores."""

    def __init__(self, modalities: Sequence[str], channels: int = 32, num_layers: int = 3):
        super().__init__()
        self.modalities = tuple(modalities)
        self.critics = nn.ModuleDict({m: PatchCritic(channels, num_layers) for m in self.modalities})

    def forward(self, modality: str, images: Tensor) -> Tensor:
        return self.critics[modality](images)


def critic_loss(real_scores: Tensor, fake_scores: Tensor, kind: str = "lsgan") -> Tensor:
    """Loss minimised by a critic.

    "lsgan" (default, as the authors' code): 0.5 E[(d(real) - 1)^2] + 0.5 E[d(fake)^2].
    "paper" (Eq. 15, written as a minimisation): E[d(real)] - E[d(fake)]; in this convention the
    critic scores real images LOW. It is unbounded without a Lipschitz constraint on d, which is why
    LSGAN is the default.
    """
    if kind == "lsgan":
        return 0.5 * ((real_scores - 1.0) ** 2).mean() + 0.5 * (fake_scores**2).mean()
    if kind == "paper":
        return real_scores.mean() - fake_scores.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; expected one of {GAN_LOSSES}")


def generator_loss(fake_scores: Tensor, kind: str = "lsgan") -> Tensor:
    """Adversarial term added to the synthesis model's loss for one modality (Eq. 16 per j).

    "lsgan": 0.5 E[(d(fake) - 1)^2]; "paper": E[d(fake)] (Eq. 16, minimised: look real = score low).
    """
    if kind == "lsgan":
        return 0.5 * ((fake_scores - 1.0) ** 2).mean()
    if kind == "paper":
        return fake_scores.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; expected one of {GAN_LOSSES}")

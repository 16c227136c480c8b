"""Per-modality critics (discriminators), their losses, and the memory of real images (Section 3.5).

One PatchGAN critic d_psi_j per modality j judges single 2D images of that modality. Because most
batches lack some modalities, Algorithm 1 (lines 28-31) keeps, for every modality, the last real
images seen and uses them as the "real" sample when the modality is missing from the current batch;
`RealImageMemory` is that memory (a ring buffer per modality, saveable for exact resume).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
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


class RealImageMemory:
    """Ring buffer of the last `capacity` real 2D images of each modality (Algorithm 1, lines 28-31).

    Images are detached and stored on the device they come from. `state_dict()` holds plain tensors
    only, so it can go into a Lightning checkpoint and be restored exactly.
    """

    def __init__(self, modalities: Sequence[str], capacity: int = 64):
        if capacity < 1:
            raise ValueError("RealImageMemory capacity must be >= 1")
        self.modalities = tuple(modalities)
        self.capacity = capacity
        self._images: dict[str, Tensor | None] = {m: None for m in self.modalities}
        self._count = {m: 0 for m in self.modalities}
        self._next = {m: 0 for m in self.modalities}

    def __len__(self) -> int:
        return sum(self._count.values())

    def count(self, modality: str) -> int:
        return self._count[modality]

    def push(self, modality: str, images: Tensor) -> None:
        """Store real images [N, H, W] (or [N, 1, H, W]) of `modality`, overwriting the oldest ones."""
        images = images.detach()
        if images.ndim == 4 and images.shape[1] == 1:
            images = images[:, 0]
        if images.ndim != 3:
            raise ValueError(f"RealImageMemory.push expects [N, H, W], got {tuple(images.shape)}")
        buffer = self._images[modality]
        if buffer is None:
            buffer = images.new_zeros((self.capacity, *images.shape[1:]))
            self._images[modality] = buffer
        elif buffer.shape[1:] != images.shape[1:]:
            raise ValueError(
                f"RealImageMemory[{modality}] holds {tuple(buffer.shape[1:])} images, "
                f"got {tuple(images.shape[1:])}"
            )
        for image in images[-self.capacity :]:
            buffer[self._next[modality]] = image
            self._next[modality] = (self._next[modality] + 1) % self.capacity
            self._count[modality] = min(self._count[modality] + 1, self.capacity)

    def sample(self, modality: str, n: int, generator: torch.Generator | None = None) -> Tensor | None:
        """n stored images drawn uniformly with replacement ([n, H, W]); None if none stored yet.

        `generator` must be a CPU generator (the draw of indices happens on the CPU).
        """
        count = self._count[modality]
        if count == 0:
            return None
        buffer = self._images[modality]
        assert buffer is not None
        index = torch.randint(count, (n,), generator=generator)
        return buffer[index.to(buffer.device)].clone()

    def state_dict(self) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {"capacity": torch.tensor(self.capacity)}
        for m in self.modalities:
            buffer = self._images[m]
            if buffer is None:
                continue
            state[f"{m}.images"] = buffer[: self._count[m]].clone()
            state[f"{m}.next"] = torch.tensor(self._next[m])
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        capacity = int(state["capacity"])
        if capacity != self.capacity:
            raise ValueError(f"RealImageMemory capacity {self.capacity} != saved capacity {capacity}")
        for m in self.modalities:
            self._images[m], self._count[m], self._next[m] = None, 0, 0
            if f"{m}.images" not in state:
                continue
            stored = state[f"{m}.images"]
            buffer = stored.new_zeros((self.capacity, *stored.shape[1:]))
            buffer[: stored.shape[0]] = stored
            self._images[m] = buffer
            self._count[m] = stored.shape[0]
            self._next[m] = int(state[f"{m}.next"])

"""The memory of recent real images that the critics of Algorithm 1 (lines 28-31) draw their "real" samples
from when a batch's pattern misses their modality; saved in checkpoints so that a resumed run draws the same."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


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

"""Reusable 2D building blocks of the MMHVAE network (Section 4.2).

The paper uses NVAE-style cells [25]: residual cells with squeeze-excitation and Swish (SiLU)
activations; MobileNetV2-like inverted residual cells in the top-down decoder; ResNet blocks in the
image decoders. Every cell here keeps the spatial size and the channel count, so cells can be
stacked freely; resolution changes are done by `Downsample` / `Upsample`. The expert heads
(`expert_head`, Eq. 12) and the image decoders (`image_decoder`, Eq. 6) are assembled from them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

NORMS = ("instance", "instance_affine", "group", "none")


class InstanceNorm2d(nn.InstanceNorm2d):
    """nn.InstanceNorm2d (batch statistics only), computed by torch's group-norm kernel on CPUs.

    Instance norm is group norm with one channel per group. torch computes instance norm by reshaping
    to [1, B*C, H, W] and calling batch norm, which makes this network's forward pass about 14 % slower
    on CPUs (docs/performance.md); same maths, same parameters and state-dict keys. Other devices keep
    torch's kernel until measured there (`benchmarks/bench_kernels.py`): CUDA autocast would also run
    group norm, unlike batch norm, in float32.
    """

    group_norm_devices: tuple[str, ...] = ("cpu",)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type in self.group_norm_devices:
            return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)
        return super().forward(x)


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation layer by name.

    "instance" (the authors' choice: InstanceNorm2d without affine parameters) and "group" both
    normalise each sample on its own, so samples of one batch never influence each other; this is
    what makes batching different input subsets in one batch exact. Batch norm is deliberately absent.
    """
    if kind == "instance":
        return InstanceNorm2d(channels, affine=False)
    if kind == "instance_affine":
        return InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1)


class SqueezeExcitation(nn.Module):
    """Channel attention of Hu et al. [45]: global pool, bottleneck MLP, sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 4):
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class EncoderCell(nn.Module):
    """Pre-activation residual cell of the bottom-up encoders:
    x + SE(conv3x3(SiLU(norm(conv3x3(SiLU(norm(x))))))).
    """

    def __init__(self, channels: int, norm: str = "instance"):
        super().__init__()
        self.body = nn.Sequential(
            make_norm(norm, channels),
            nn.SiLU(),
            conv3x3(channels, channels),
            make_norm(norm, channels),
            nn.SiLU(),
            conv3x3(channels, channels),
            SqueezeExcitation(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class DecoderCell(nn.Module):
    """MobileNetV2-like inverted residual cell of the top-down path [44]:
    x + conv1x1(SE(SiLU(norm(dwconv5x5(SiLU(norm(expand(x)))))))), expansion C -> 6C.

    The depthwise 5x5 convolution gives a large receptive field cheaply. `expand_kernel` 3 matches
    the parameter budget of the authors' network; 1 is the lighter NVAE choice.
    """

    def __init__(self, channels: int, expansion: int = 6, expand_kernel: int = 3, norm: str = "instance"):
        super().__init__()
        hidden = channels * expansion
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=expand_kernel, padding=expand_kernel // 2),
            make_norm(norm, hidden),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, kernel_size=5, padding=2, groups=hidden),
            make_norm(norm, hidden),
            nn.SiLU(),
            SqueezeExcitation(hidden),
            conv1x1(hidden, channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNetBlock(nn.Module):
    """Classic ResNet block of image-to-image generators: x + norm(conv(SiLU(norm(conv(x)))))."""

    def __init__(self, channels: int, norm: str = "instance"):
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(channels, channels),
            make_norm(norm, channels),
            nn.SiLU(),
            conv3x3(channels, channels),
            make_norm(norm, channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Downsample(nn.Sequential):
    """Halve the resolution with a stride-2 3x3 convolution (encoder)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(conv3x3(in_channels, out_channels, stride=2))


class Upsample(nn.Sequential):
    """Double the resolution: bilinear x2 then a 3x3 convolution (top-down path).

    Bilinear + conv avoids the checkerboard artefacts of transposed convolutions.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            conv3x3(in_channels, out_channels),
        )


def run_block(block: Callable[..., Any], *inputs: Tensor, recompute: bool) -> Any:
    """`block(*inputs)`, or with activation checkpointing when `recompute` and gradients are on: only the inputs
    are kept and the block's activations are recomputed in the backward pass (less memory, about one more
    forward). `block` may be any function of tensors that returns tensors, e.g. a whole latent group's fusion."""
    if recompute and torch.is_grad_enabled():
        return checkpoint(block, *inputs, use_reentrant=False)
    return block(*inputs)


def expert_head(in_channels: int, hidden: int, latent_channels: int) -> nn.Sequential:
    """Residual expert h_phi (Eq. 12): features -> (mean, log-variance) of a spatial latent group."""
    return nn.Sequential(
        nn.SiLU(),
        conv1x1(in_channels, hidden),
        nn.SiLU(),
        conv3x3(hidden, 2 * latent_channels),
    )


def image_decoder(in_channels: int, width: int, blocks: int, norm: str) -> nn.Sequential:
    """mu_theta_j^x (Eq. 6): z_1 -> one image in [-1, 1] through `blocks` ResNet blocks."""
    return nn.Sequential(
        conv3x3(in_channels, width),
        *(ResNetBlock(width, norm) for _ in range(blocks)),
        make_norm(norm, width),
        nn.SiLU(),
        conv3x3(width, 1),
        nn.Tanh(),
    )

"""The building blocks of the authors' released network (model/authors.py): their cells, upsampling, posterior
heads, the Linear layers of the global group and the image decoders, each computing what their `MHVAE2D`
computes.

Attribute names are their checkpoint's key names (`bn_0`, `conv_0`, `se.0`, ...), so that their
`CP_main_1000.pth` loads unchanged; where a block does our blocks' maths (model/blocks.py), its docstring says
so, and what differs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from mmhvae.model.blocks import conv1x1, conv3x3, make_norm


class LinearSqueezeExcitation(nn.Module):
    """Squeeze-excitation as our `SqueezeExcitation` (same maths), with Linear layers (`se.0`, `se.2`)."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(channels // 16, 4)
        self.se = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        gate = self.se(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class AuthorsEncoderCell(nn.Module):
    """Encoder cell: the maths of our `EncoderCell`, x + SE(conv3x3(SiLU(norm(conv3x3(SiLU(norm(x))))))),
    with their residual and squeeze-excitation switches."""

    def __init__(self, channels: int, residual: bool = True, squeeze_excitation: bool = True):
        super().__init__()
        self.residual, self.squeeze_excitation = residual, squeeze_excitation
        self.bn_0 = make_norm("instance", channels)
        self.conv_0 = conv3x3(channels, channels)
        self.bn_1 = make_norm("instance", channels)
        self.conv_1 = conv3x3(channels, channels)
        self.se = LinearSqueezeExcitation(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_0(nn.functional.silu(self.bn_0(x)))
        out = self.conv_1(nn.functional.silu(self.bn_1(out)))
        if self.squeeze_excitation:
            out = self.se(out)
        return x + out if self.residual else out


class AuthorsDecoderCell(nn.Module):
    """Top-down cell. Differs from our `DecoderCell` by a leading instance norm (no activation) before
    the 3x3 expansion: x + conv1x1(SE(SiLU(norm(dw5x5(SiLU(norm(conv3x3(norm(x))))))))), C -> 6C -> C."""

    def __init__(self, channels: int, residual: bool = True, squeeze_excitation: bool = True, expansion: int = 6):
        super().__init__()
        hidden = channels * expansion
        self.residual, self.squeeze_excitation = residual, squeeze_excitation
        self.bn_0 = make_norm("instance", channels)
        self.conv_0 = conv3x3(channels, hidden)
        self.bn_1 = make_norm("instance", hidden)
        self.dw_conv_1 = nn.Conv2d(hidden, hidden, kernel_size=5, padding=2, groups=hidden)
        self.bn_2 = make_norm("instance", hidden)
        self.se_2 = LinearSqueezeExcitation(hidden)
        self.conv_2 = conv1x1(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_0(self.bn_0(x))
        out = nn.functional.silu(self.bn_2(self.dw_conv_1(nn.functional.silu(self.bn_1(out)))))
        if self.squeeze_excitation:
            out = self.se_2(out)
        out = self.conv_2(out)
        return x + out if self.residual else out


class AuthorsUpsample(nn.Module):
    """Our `Upsample` (bilinear x2, then conv3x3) with a bias-free convolution named `conv_1`."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv_1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        up = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv_1(up)


def weight_normed_conv1x1(channels: int) -> nn.Conv2d:
    """A bias-free 1x1 convolution with weight normalisation w = g v / |v| (their priors and heads)."""
    return weight_norm(nn.Conv2d(channels, channels, kernel_size=1, bias=False), name="weight", dim=0)


class AuthorsPosteriorHead(nn.Module):
    """Residual expert h of one level, shared by all modalities (the paper has one per modality, Eq. 12).

    concat(state, skip) [2C] -> norm, SiLU, conv3x3 -> C -> norm, SiLU, conv3x3 -> SE -> weight-normed
    conv1x1 -> C = (mean, log standard deviation) of a C/2-channel latent.
    """

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.bn_0 = make_norm("instance", in_channels)
        self.conv_0 = conv3x3(in_channels, channels)
        self.bn_1 = make_norm("instance", channels)
        self.conv_1 = conv3x3(channels, channels)
        self.se = LinearSqueezeExcitation(channels)
        self.last_conv = weight_normed_conv1x1(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_0(nn.functional.silu(self.bn_0(x)))
        out = self.conv_1(nn.functional.silu(self.bn_1(out)))
        return self.last_conv(self.se(out))


class FlattenLinear(nn.Module):
    """Global expert of z_L (paper Eq. 13): flattened coarsest map -> weight-normed Linear."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = weight_norm(nn.Linear(in_features, out_features), name="weight", dim=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


class LinearToMap(nn.Module):
    """z_L -> the first top-down state: weight-normed Linear, reshaped to [C, h, w]."""

    def __init__(self, in_features: int, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = shape
        self.linear = weight_norm(nn.Linear(in_features, shape[0] * shape[1] * shape[2]), name="weight", dim=0)

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z).view(z.shape[0], *self.shape)


class ReflectResNetBlock(nn.Module):
    """The ResNet block of their image decoders: x + norm(conv3x3(ReLU(norm(conv3x3(x))))) with
    reflection padding; our `ResNetBlock` pads with zeros and uses SiLU. Layers sit at the indices of
    their checkpoint (`conv_block.1`, `conv_block.5`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            make_norm("instance", channels),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            make_norm("instance", channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class AuthorsImageDecoder(nn.Module):
    """z_1 -> one image in [-1, 1] (their 6 ResNet blocks; the paper says 5).

    [conv1x1 to `width` if z_1 has another width] -> blocks x ReflectResNetBlock -> conv7x7 (reflect),
    norm, LeakyReLU(0.2) -> conv7x7 (reflect) to 1 channel -> tanh.
    """

    def __init__(self, in_channels: int, width: int, blocks: int):
        super().__init__()
        widen = [] if in_channels == width else [nn.Conv2d(in_channels, width, kernel_size=1)]
        self.res = nn.Sequential(*widen, *(ReflectResNetBlock(width) for _ in range(blocks)))
        self.convt2 = nn.Conv2d(width, width, kernel_size=7, padding=3, padding_mode="reflect")
        self.norm2 = make_norm("instance", width)
        self.convt3 = nn.Conv2d(width, 1, kernel_size=7, padding=3, padding_mode="reflect")

    def forward(self, z: Tensor) -> Tensor:
        out = self.convt2(self.res(z))
        out = nn.functional.leaky_relu(self.norm2(out), 0.2)
        return torch.tanh(self.convt3(out))

"""ResViT baseline (Dalmaz, Yurt & Cukur, "ResViT: Residual vision transformers for multimodal medical image
synthesis", IEEE TMI 2022), the "ResViT [15]" row of the paper's Table I: "The original ResViT architecture was
directly adopted. The unification strategy in ResViT uses zero-imputation as MM-GAN" (Section 4.3).

The generator, as in the authors' code (icon-lab/ResViT, `models/residual_transformers.py`):
- encoder: 7x7 convolution to `base_features` (ngf) channels, then two stride-2 3x3 convolutions (ngf -> 2 ngf
  -> 4 ngf), each with a normalisation and ReLU; convolutions without bias except the last one of the network;
- bottleneck: 9 "aggregated residual transformer" (ART) blocks at a quarter of the resolution. Every block
  ends with a ResNet block (two 3x3 convolutions, no activation after the sum). Blocks 1 and 6 first run a
  transformer branch: two stride-2 convolutions (4 ngf -> 8 ngf -> 16 ngf, a sixteenth of the resolution), a
  1x1 patch embedding to `hidden_size` plus a learnt position embedding (dropout), a pre-norm ViT encoder
  (`transformer_layers` layers, GELU MLP, final LayerNorm) that both blocks SHARE, two stride-2 transposed
  convolutions back (hidden -> 8 ngf -> 4 ngf), concatenation with the block's input and a "channel
  compression" residual block (3x3, 3x3, 1x1 projection skip) back to 4 ngf;
- decoder: two stride-2 transposed convolutions (4 ngf -> 2 ngf -> ngf) and a 7x7 convolution to the M
  images, tanh.

As for MM-GAN (`model/baselines/mmgan.py`), the generator reads all M modalities, zeros where missing, and
returns all M: the unified ResViT of its authors (their issue #17 on GitHub: missing channels set to the
background value, every modality generated, sources also reconstructed with an L1 term), trained by
`ZeroImputationGANModule` (training/baseline_modules.py) with ResViT's recipe (`METHOD_TRAIN_RECIPES` in
methods.py). Differences from the original, all deliberate:
- instance normalisation with affine parameters instead of batch normalisation: ResViT trains at batch size
  1, where batch norm normalises every image by its own statistics, which instance norm does at any batch size
  (and samples of a batch mixing input subsets never influence each other);
- trained from scratch by default: no ImageNet-21k ViT weights are downloaded. A user who has the file ResViT
  starts from (`R50+ViT-B_16.npz`, or Google's `ViT-B_16.npz`) loads its transformer with `mmhvae train
  --method resvit --config paper --vit-weights FILE.npz` (`ResViT.load_vit_weights`, as ResViT's `load_from`);
  their Res-CNN pre-training stage is this network with `transformer_blocks: []`, whose model file `--init-from`
  accepts for the full ResViT (docs/training.md, "ResViT's two-stage recipe");
- our per-modality PatchGAN critics (`model/critic.py`), not their conditional PatchGAN.

Sizes: `ResViTConfig()` is the original (ngf 64, ViT-B: hidden 768, 12 layers, 12 heads, MLP 3072), which
`like` gives at the paper setting; at narrower settings every width shrinks (tiny: a quarter) so that it
trains on a CPU in minutes like the other baselines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmhvae.model.baselines.zero_imputation import ZeroImputationGenerator
from mmhvae.model.blocks import make_norm
from mmhvae.model.interface import PlainDictConfig, config_checker
from mmhvae.model.mmhvae_config import MMHVAEConfig

VARIANT = "resvit"

# MMHVAE's base width at the paper setting, where `like` returns the original ResViT.
PAPER_BASE_FEATURES = 16


@dataclass
class ResViTConfig(PlainDictConfig):
    """Architecture of the ResViT generator; defaults are the original's (Res-ViT-B_16). Round-trips through a
    plain dict whose `variant` is "resvit"."""

    modalities: tuple[str, ...] = ("us", "t2", "t1c", "flair")
    image_size: int = 192
    base_features: int = 64  # ngf; the bottleneck has 4 ngf channels, the transformer branch reaches 16 ngf
    art_blocks: int = 9
    transformer_blocks: tuple[int, ...] = (1, 6)  # which ART blocks (1-based) run the shared transformer
    hidden_size: int = 768
    transformer_layers: int = 12
    heads: int = 12
    mlp_size: int = 3072
    # ViT-B: 0.1 on the embeddings and in the MLPs; torch's encoder layer also drops attention weights (ViT-B: 0)
    dropout: float = 0.1
    variant: str = VARIANT

    def __post_init__(self) -> None:
        check = config_checker(self, VARIANT)
        self.transformer_blocks = tuple(int(b) for b in self.transformer_blocks)
        check(self.image_size % 16 == 0 and self.image_size >= 32,
              f"image_size {self.image_size} must be a multiple of 16 (the transformer works at 1/16), at least 32")
        check(min(self.base_features, self.art_blocks, self.hidden_size, self.transformer_layers, self.heads,
                  self.mlp_size) > 0, "widths, block and layer counts must be positive")
        check(self.hidden_size % self.heads == 0, f"hidden_size {self.hidden_size} must divide by heads {self.heads}")
        check(all(1 <= b <= self.art_blocks for b in self.transformer_blocks)
              and len(set(self.transformer_blocks)) == len(self.transformer_blocks),
              f"transformer_blocks {self.transformer_blocks} must be distinct ART blocks 1..{self.art_blocks}")
        check(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")

    @property
    def token_grid(self) -> int:
        """Side of the transformer's token grid (one token per position of the 1/16 map, patch size 1)."""
        return self.image_size // 16

    @classmethod
    def like(cls, config: MMHVAEConfig, **overrides: Any) -> ResViTConfig:
        """The ResViT for an MMHVAE configuration: same modalities and grid; the original widths at the paper
        setting (base_features 16), every width times (base_features / 16)^2 below it (tiny: ngf 16, hidden 192,
        3 heads, MLP 768), 12 layers throughout."""
        scale = (config.base_features / PAPER_BASE_FEATURES) ** 2
        heads = max(1, round(12 * scale))
        settings: dict[str, Any] = dict(
            modalities=config.modalities, image_size=config.image_size,
            base_features=max(4, round(64 * scale)), hidden_size=heads * 64, heads=heads, mlp_size=heads * 256)
        settings.update(overrides)
        return cls(**settings)


def conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free convolution (a normalisation follows), reflect-padded like ResViT's stride-1 convolutions."""
    padding_mode = "reflect" if stride == 1 else "zeros"
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False,
                     padding_mode=padding_mode)


def norm(channels: int) -> nn.Module:
    return make_norm("instance_affine", channels)


def conv_norm_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(conv(in_channels, out_channels, kernel, stride), norm(out_channels), nn.ReLU(inplace=True))


def up_norm_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """Stride-2 3x3 transposed convolution (exact doubling), normalisation, ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=False),
        norm(out_channels), nn.ReLU(inplace=True))


class ResnetBlock(nn.Module):
    """x + (conv3x3, norm, ReLU, conv3x3, norm)(x): ResViT's residual CNN block."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_norm_relu(channels, channels, 3), conv(channels, channels, 3), norm(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ChannelCompression(nn.Module):
    """ReLU((conv3x3, norm, ReLU, conv3x3, norm)(x) + norm(conv1x1(x))): ResViT's 2C -> C fusion block."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_norm_relu(in_channels, out_channels, 3), conv(out_channels, out_channels, 3),
                                  norm(out_channels))
        self.skip = nn.Sequential(conv(in_channels, out_channels, 1), norm(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class TransformerBranch(nn.Module):
    """The transformer path of an ART block, around a ViT encoder it may share with other blocks."""

    def __init__(self, config: ResViTConfig, encoder: nn.TransformerEncoder):
        super().__init__()
        c = 4 * config.base_features
        self.down = nn.Sequential(conv_norm_relu(c, 2 * c, 3, stride=2), conv_norm_relu(2 * c, 4 * c, 3, stride=2))
        self.embed = nn.Conv2d(4 * c, config.hidden_size, kernel_size=1)  # patches of 1x1 on the 1/16 map
        # Learnt, zero at the start (as ResViT's before its ImageNet weights are loaded).
        self.position = nn.Parameter(torch.zeros(1, config.token_grid**2, config.hidden_size))
        self.embed_dropout = nn.Dropout(config.dropout)
        self.encoder = encoder
        self.up = nn.Sequential(up_norm_relu(config.hidden_size, 2 * c), up_norm_relu(2 * c, c))
        self.compress = ChannelCompression(2 * c, c)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(self.down(x))
        side = tokens.shape[-1]
        sequence = self.embed_dropout(tokens.flatten(2).transpose(1, 2) + self.position)  # [B, N, hidden]
        encoded = self.encoder(sequence).transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
        return self.compress(torch.cat([x, self.up(encoded)], dim=1))


class ARTBlock(nn.Module):
    """Aggregated residual transformer block: (transformer branch, then) a ResNet block."""

    def __init__(self, channels: int, branch: TransformerBranch | None = None):
        super().__init__()
        self.branch = branch
        self.resnet = ResnetBlock(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.resnet(x if self.branch is None else self.branch(x))


def vit_encoder(config: ResViTConfig) -> nn.TransformerEncoder:
    """ViT-style encoder: pre-norm layers (LayerNorm eps 1e-6), GELU MLP, a final LayerNorm."""
    layer = nn.TransformerEncoderLayer(
        d_model=config.hidden_size, nhead=config.heads, dim_feedforward=config.mlp_size, dropout=config.dropout,
        activation="gelu", layer_norm_eps=1e-6, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, config.transformer_layers, norm=nn.LayerNorm(config.hidden_size, eps=1e-6),
                                 enable_nested_tensor=False)


class ResViT(ZeroImputationGenerator):
    """ResViT generator: [B, M, H, W] with zeros for missing modalities -> all M images in [-1, 1]."""

    config_class = ResViTConfig
    cpu_inference_channels_last = False  # slower on CPUs (docs/performance.md)

    def __init__(self, config: ResViTConfig):
        super().__init__()
        self.config = config
        m, f = len(config.modalities), config.base_features
        self.encoder = nn.Sequential(conv_norm_relu(m, f, 7), conv_norm_relu(f, 2 * f, 3, stride=2),
                                     conv_norm_relu(2 * f, 4 * f, 3, stride=2))
        shared = vit_encoder(config)  # one module in several blocks: its weights are shared (ResViT)
        self.blocks = nn.Sequential(*(
            ARTBlock(4 * f, TransformerBranch(config, shared) if index in config.transformer_blocks else None)
            for index in range(1, config.art_blocks + 1)))
        self.decoder = nn.Sequential(up_norm_relu(4 * f, 2 * f), up_norm_relu(2 * f, f),
                                     nn.Conv2d(f, m, 7, padding=3, padding_mode="reflect"))

    def generate(self, inputs: Tensor, subset: Tensor, generator=None) -> Tensor:
        return torch.tanh(self.decoder(self.blocks(self.encoder(inputs))))

    @torch.no_grad()
    def load_vit_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Load a Google-format ViT checkpoint (the arrays of an ImageNet-21k `ViT-B_16.npz` or
        `R50+ViT-B_16.npz`) into the shared transformer encoder, as ResViT's `load_from` does: every encoder
        layer and the final LayerNorm, and the position embedding of every transformer branch (class token
        dropped, grid resized bilinearly from the checkpoint's to this network's, corners aligned as
        scipy.ndimage.zoom order 1). The convolutions and the 1x1 patch embeddings keep their own weights.
        Raises ValueError (naming the array), the network unchanged, when the checkpoint lacks an array or does
        not fit the network."""
        c = self.config
        encoder = self.shared_encoder
        if encoder is None:
            raise ValueError("this ResViT has no transformer blocks to load a ViT into")
        arrays = ViTArrays(weights)
        layers, width, heads, mlp = arrays.vit_size(c.heads)
        if (layers, width, heads, mlp) != (c.transformer_layers, c.hidden_size, c.heads, c.mlp_size):
            raise ValueError(f"the checkpoint's ViT has {layers} layers of width {width}, {heads} heads and MLP "
                             f"{mlp}; this ResViT has {c.transformer_layers}, {c.hidden_size}, {c.heads} and "
                             f"{c.mlp_size} (the original ViT-B's: --config paper)")
        for index, layer in enumerate(encoder.layers):
            queue_encoder_layer(arrays, layer, f"Transformer/encoderblock_{index}", c.hidden_size, c.mlp_size)
        arrays.copy(encoder.norm.weight, "Transformer/encoder_norm/scale")
        arrays.copy(encoder.norm.bias, "Transformer/encoder_norm/bias")
        name = "Transformer/posembed_input/pos_embedding"
        position = resized_position_embedding(arrays.array(name), c.token_grid)
        for block in self.blocks:
            if block.branch is not None:
                arrays.copy(block.branch.position, name, position)
        arrays.apply()

    @property
    def shared_encoder(self) -> nn.TransformerEncoder | None:
        """The ViT encoder that every transformer branch runs (None without transformer blocks)."""
        return next((block.branch.encoder for block in self.blocks if block.branch is not None), None)


def resized_position_embedding(embedding: Tensor, grid: int) -> Tensor:
    """A ViT position embedding [1, 1 + g*g, D] (class token first) or [1, g*g, D] as [1, grid*grid, D]: the
    class token dropped and the g x g grid resized bilinearly, corners aligned."""
    if embedding.dim() != 3 or embedding.shape[0] != 1:
        raise ValueError(f"position embedding of shape {tuple(embedding.shape)}: expected [1, tokens, D]")
    tokens = embedding.shape[1]
    if round(tokens**0.5) ** 2 != tokens:  # a class token first
        embedding, tokens = embedding[:, 1:], tokens - 1
    side = round(tokens**0.5)
    if side * side != tokens:
        raise ValueError(f"position embedding of shape {tuple(embedding.shape)}: its tokens form no square grid")
    square = embedding[0].reshape(side, side, -1).permute(2, 0, 1)[None]  # [1, D, g, g]
    if side != grid:
        square = F.interpolate(square, size=(grid, grid), mode="bilinear", align_corners=True)
    return square[0].permute(1, 2, 0).reshape(1, grid * grid, -1)


class ViTArrays:
    """The arrays of a Google-format ViT checkpoint, read as float32 tensors. `copy` only queues a copy into
    the network, checked; `apply` makes them all, so that a checkpoint that fails a check changes nothing."""

    def __init__(self, weights: Mapping[str, np.ndarray]):
        self.weights = weights
        self.pending: list[tuple[Tensor, Tensor]] = []

    def array(self, name: str) -> Tensor:
        if name not in self.weights:
            raise ValueError(f"no array {name!r}: not a ViT checkpoint of the ViT-B_16 kind")
        try:
            return torch.as_tensor(np.asarray(self.weights[name], dtype=np.float32))
        except (TypeError, ValueError) as error:
            raise ValueError(f"array {name!r} is not numeric ({error})") from error

    def vit_size(self, default_heads: int) -> tuple[int, int, int, int]:
        """(layers, width, heads, MLP width) of the checkpoint's ViT; `default_heads` when its kernels are 2D."""
        layers = len({name.split("/")[1] for name in self.weights if name.startswith("Transformer/encoderblock_")})
        width = self.array("Transformer/encoder_norm/scale").numel()
        query = self.array("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel")
        heads = query.shape[1] if query.dim() == 3 else default_heads  # [D, heads, head_dim]; 2D kernels fix none
        mlp = self.array("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel").shape[-1]
        return layers, width, heads, mlp

    def linear_weight(self, name: str, in_features: int) -> Tensor:
        """A Flax kernel as a torch Linear weight: Flax kernels are [in, ...out] (query [D, heads, head_dim], out
        [heads, head_dim, D]); torch's Linear weights are [out, in]."""
        kernel = self.array(name)
        if kernel.numel() % in_features:
            raise ValueError(f"array {name!r} of shape {tuple(kernel.shape)} has no {in_features} inputs")
        return kernel.reshape(in_features, -1).t()

    def copy(self, target: Tensor, name: str, source: Tensor | None = None) -> None:
        """Queue the copy of array `name` (or of `source`, made from it) into `target`, once its size is checked."""
        source = self.array(name) if source is None else source
        if source.numel() != target.numel():
            raise ValueError(f"array {name!r} has {source.numel()} values where {tuple(target.shape)} were expected")
        self.pending.append((target, source.reshape(target.shape)))

    def apply(self) -> None:
        for target, source in self.pending:
            target.copy_(source)


def queue_encoder_layer(arrays: ViTArrays, layer: nn.TransformerEncoderLayer, root: str, width: int,
                        mlp_size: int) -> None:
    """Queue the copies of one ViT encoder block (`root`, e.g. Transformer/encoderblock_0) into a torch layer."""
    attention = f"{root}/MultiHeadDotProductAttention_1"
    qkv = ("query", "key", "value")  # stacked in this order in torch's in_proj
    arrays.copy(layer.self_attn.in_proj_weight, f"{attention}/query|key|value/kernel",
                torch.cat([arrays.linear_weight(f"{attention}/{p}/kernel", width) for p in qkv]))
    arrays.copy(layer.self_attn.in_proj_bias, f"{attention}/query|key|value/bias",
                torch.cat([arrays.array(f"{attention}/{p}/bias").reshape(-1) for p in qkv]))
    name = f"{attention}/out/kernel"
    arrays.copy(layer.self_attn.out_proj.weight, name, arrays.linear_weight(name, width))
    arrays.copy(layer.self_attn.out_proj.bias, f"{attention}/out/bias")
    arrays.copy(layer.norm1.weight, f"{root}/LayerNorm_0/scale")
    arrays.copy(layer.norm1.bias, f"{root}/LayerNorm_0/bias")
    arrays.copy(layer.norm2.weight, f"{root}/LayerNorm_2/scale")
    arrays.copy(layer.norm2.bias, f"{root}/LayerNorm_2/bias")
    name = f"{root}/MlpBlock_3/Dense_0/kernel"
    arrays.copy(layer.linear1.weight, name, arrays.linear_weight(name, width))
    arrays.copy(layer.linear1.bias, f"{root}/MlpBlock_3/Dense_0/bias")
    name = f"{root}/MlpBlock_3/Dense_1/kernel"
    arrays.copy(layer.linear2.weight, name, arrays.linear_weight(name, mlp_size))
    arrays.copy(layer.linear2.bias, f"{root}/MlpBlock_3/Dense_1/bias")

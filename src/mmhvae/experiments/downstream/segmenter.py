"""The ultrasound tumour segmenter of Table IV: a 2D MONAI UNet (or a fold ensemble of them), its training on
labelled ultrasound slices, its verified file format, and the segmentation of one volume
(`mmhvae segment apply`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from mmhvae import __version__
from mmhvae.errors import InputError, refuse_to_overwrite
from mmhvae.experiments.downstream.labelled_ultrasound import (
    TUMOUR_CORE_LABELS,
    LabelledVolume,
    check_spacing,
    ultrasound_intensities,
)
from mmhvae.inference.device import resolve_device
from mmhvae.io.files import atomic_path
from mmhvae.io.volumes import read_volume, write_volume
from mmhvae.model_file import load_verified_payload, weights_checksum
from mmhvae.preprocessing.grid import centre_pad_crop

DEFAULT_STEPS = 1000  # about 1.5 min per network at 64 x 64 on one CPU core (0.09 s per step of 16 slices)
FORMAT = "mmhvae-segmentation"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "config", "state_dicts", "checksums")
FOREGROUND_SHARE = 1 / 3  # nnU-Net's foreground oversampling: most sweep slices show no tumour
GAMMA_RANGE = (0.7, 1.5)  # the two probes differ in dynamic range (55 vs 45 dB): another grey-level curve


# ----------------------------------------------------------------------------------------------------
# The network and its file
# ----------------------------------------------------------------------------------------------------


@dataclass
class SegmenterConfig:
    """What is needed to rebuild and apply a segmentation network; saved in its file."""

    spacing_mm: tuple[float, ...]  # in-plane voxel size it was trained at
    labels: tuple[int, ...] = TUMOUR_CORE_LABELS  # which labels of seg.nii.gz it segments
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    trained_on: str = ""

    @property
    def multiple(self) -> int:
        """In-plane sizes must be multiples of this (the UNet's total downsampling)."""
        return math.prod(self.strides)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> SegmenterConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def build_unet(config: SegmenterConfig) -> UNet:
    """2D MONAI UNet, one ultrasound channel in, background and tumour out."""
    return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=config.channels, strides=config.strides,
                num_res_units=config.num_res_units)


@dataclass
class Segmenter:
    """An ensemble of networks (one per fold) whose tumour probabilities are averaged."""

    config: SegmenterConfig
    networks: list[UNet]
    meta: dict = field(default_factory=dict)


def save_segmenter(path: str | Path, segmenter: Segmenter) -> Path:
    """One `.pt` of tensors and plain values only (loadable with `weights_only=True`), written atomically."""
    states = [{k: v.detach().cpu().clone() for k, v in n.state_dict().items()} for n in segmenter.networks]
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mmhvae_version": __version__,
        "config": segmenter.config.to_dict(),
        "state_dicts": states,
        "checksums": [weights_checksum(s) for s in states],
        "meta": segmenter.meta,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> Segmenter:
    """Load and verify a segmentation network file; any problem is an InputError naming the file."""
    path = Path(path)
    payload = load_verified_payload(path, "segmentation network file", FORMAT, FORMAT_VERSION, REQUIRED_KEYS)
    if [weights_checksum(s) for s in payload["state_dicts"]] != payload["checksums"]:
        raise InputError("the weights do not match their checksums (file damaged or edited)", path)
    try:
        config = SegmenterConfig.from_dict(payload["config"])
        networks = []
        for state in payload["state_dicts"]:
            network = build_unet(config)
            network.load_state_dict(state)
            networks.append(network.to(device).eval())
    except (ValueError, TypeError, RuntimeError) as exc:
        raise InputError(f"the weights do not match the configuration ({str(exc).splitlines()[0]})", path) from None
    if not networks:
        raise InputError("the file holds no network", path)
    return Segmenter(config, networks, payload.get("meta", {}))


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


@dataclass
class SliceSet:
    """2D training slices: ultrasound [N, H, W] in [0, 1], tumour masks [N, H, W], the subject of each slice."""

    images: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray

    def without(self, names: Sequence[str]) -> SliceSet:
        keep = ~np.isin(self.subjects, list(names))
        return SliceSet(self.images[keep], self.labels[keep], self.subjects[keep])


def padded_size(shape: Sequence[int], multiple: int) -> tuple[int, int]:
    """The smallest in-plane size >= `shape` that the UNet accepts."""
    return tuple(int(math.ceil(n / multiple) * multiple) for n in shape[:2])


def training_slices(volumes: Sequence[LabelledVolume], multiple: int) -> SliceSet:
    """Every slice with field of view of every volume, centre-padded to one in-plane size."""
    size = padded_size(np.max([v.image.shape[:2] for v in volumes], axis=0), multiple)
    images, labels, subjects = [], [], []
    for v in volumes:
        ks = np.flatnonzero(v.fov.any(axis=(0, 1)))
        images.append(np.moveaxis(centre_pad_crop(v.image[..., ks], size, fill=0.0, axes=(0, 1)), -1, 0))
        labels.append(np.moveaxis(centre_pad_crop(v.tumour[..., ks], size, fill=False, axes=(0, 1)), -1, 0))
        subjects += [v.subject] * len(ks)
    return SliceSet(np.concatenate(images).astype(np.float32), np.concatenate(labels).astype(np.uint8),
                    np.array(subjects))


def draw_batch(count: int, positive: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Slice indices: a third from slices with tumour (if any), the rest from all slices."""
    n_positive = int(round(FOREGROUND_SHARE * batch_size)) if len(positive) else 0
    return np.concatenate([rng.choice(positive, n_positive), rng.integers(0, count, batch_size - n_positive)])


def augment_batch(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Lateral mirroring (the fan is symmetric about the beam axis) and a random gamma per slice."""
    mirror = rng.random(len(images)) < 0.5
    images = np.where(mirror[:, None, None], images[:, ::-1, :], images)
    labels = np.where(mirror[:, None, None], labels[:, ::-1, :], labels)
    gamma = np.exp(rng.uniform(np.log(GAMMA_RANGE[0]), np.log(GAMMA_RANGE[1]), len(images)))
    return (images ** gamma[:, None, None]).astype(np.float32), np.ascontiguousarray(labels)


def train_network(data: SliceSet, config: SegmenterConfig, steps: int, seed: int = 0, batch_size: int = 16,
                  learning_rate: float = 1e-3, augment: bool = True, device: str | torch.device = "cpu"
                  ) -> tuple[UNet, list[float]]:
    """Train one UNet for `steps` Adam steps on random batches of `data`; returns it (eval mode) and each step's loss.

    Deterministic for a seed: the weights are initialised from a forked torch stream (the global one is left
    alone) and batches and augmentations come from a numpy Generator.
    """
    if steps < 1:
        raise InputError(f"the number of training steps must be at least 1 (got {steps})")
    if len(data.images) == 0:
        raise InputError("no training slice (no volume has a field of view)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_unet(config).to(device)
    # batch=True: Dice over the whole batch, so slices without tumour do not give a 0/0 Dice each (nnU-Net)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    positive = np.flatnonzero(data.labels.any(axis=(1, 2)))
    losses = []
    network.train()
    for _ in range(steps):
        index = draw_batch(len(data.images), positive, batch_size, rng)
        images, labels = data.images[index], data.labels[index]
        if augment:
            images, labels = augment_batch(images, labels, rng)
        x = torch.from_numpy(np.ascontiguousarray(images[:, None])).to(device)
        y = torch.from_numpy(labels[:, None].astype(np.int64)).to(device)
        optimiser.zero_grad(set_to_none=True)
        loss = loss_function(network(x), y)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return network.eval(), losses


def subject_folds(names: Sequence[str], folds: int, seed: int = 0) -> list[list[str]]:
    """Subjects held out by each fold (a seeded shuffle split into `folds` parts); one fold holds none out."""
    if folds < 1:
        raise InputError(f"the number of folds must be at least 1 (got {folds})")
    names = sorted(set(names))
    if folds == 1:
        return [[]]
    if folds > len(names):
        raise InputError(f"{folds} folds need at least {folds} training subjects (got {len(names)})")
    order = np.random.default_rng(seed).permutation(len(names))
    return [[names[i] for i in part] for part in np.array_split(order, folds)]


def common_spacing(volumes: Sequence[LabelledVolume]) -> tuple[float, float]:
    """The in-plane voxel size all training volumes share (an InputError if they do not)."""
    if not volumes:
        raise InputError("no training volume with a tumour (low-grade phantoms have no tumour core)")
    first = volumes[0].spacing_mm
    for v in volumes[1:]:
        check_spacing(v.spacing_mm, first, None, f"training subject '{v.subject}'")
    return (float(first[0]), float(first[1]))


def train_segmenter(volumes: Sequence[LabelledVolume], steps: int, seed: int = 0, folds: int = 1,
                    batch_size: int = 16, learning_rate: float = 1e-3, trained_on: str = "",
                    labels: Sequence[int] = TUMOUR_CORE_LABELS, device: str | torch.device = "cpu"
                    ) -> tuple[Segmenter, list[dict]]:
    """A segmenter trained on `volumes` (the paper's fold ensemble when `folds` > 1: network k never sees the
    subjects of fold k), and the loss log rows (fold, step, loss)."""
    config = SegmenterConfig(common_spacing(volumes), tuple(labels), trained_on=trained_on)
    data = training_slices(volumes, config.multiple)
    networks, log = [], []
    for fold, held_out in enumerate(subject_folds([v.subject for v in volumes], folds, seed)):
        network, losses = train_network(data.without(held_out), config, steps, seed + fold, batch_size,
                                        learning_rate, device=device)
        networks.append(network)
        log += [{"fold": fold, "step": i + 1, "loss": loss} for i, loss in enumerate(losses)]
    meta = {"steps": steps, "seed": seed, "folds": folds, "batch_size": batch_size, "learning_rate": learning_rate,
            "training_subjects": sorted({v.subject for v in volumes}), "training_slices": int(len(data.images))}
    return Segmenter(config, networks, meta), log


# ----------------------------------------------------------------------------------------------------
# Inference and metrics
# ----------------------------------------------------------------------------------------------------


@torch.inference_mode()
def segment_volume(segmenter: Segmenter, image: np.ndarray, fov: np.ndarray, slice_batch: int = 32) -> np.ndarray:
    """Tumour mask [H, W, S] of an ultrasound volume in [0, 1]: slice by slice, ensemble-averaged softmax > 0.5,
    inside the field of view."""
    device = next(segmenter.networks[0].parameters()).device
    size = padded_size(image.shape, segmenter.config.multiple)
    probability = np.zeros(image.shape, np.float32)
    ks = np.flatnonzero(fov.any(axis=(0, 1)))
    for start in range(0, len(ks), slice_batch):
        chunk = ks[start:start + slice_batch]
        padded = np.moveaxis(centre_pad_crop(image[..., chunk], size, fill=0.0, axes=(0, 1)), -1, 0)
        x = torch.from_numpy(np.ascontiguousarray(padded[:, None], dtype=np.float32)).to(device)
        tumour = sum(torch.softmax(n(x), dim=1)[:, 1] for n in segmenter.networks) / len(segmenter.networks)
        back = centre_pad_crop(np.moveaxis(tumour.cpu().numpy(), 0, -1), image.shape[:2], fill=0.0, axes=(0, 1))
        probability[..., chunk] = back
    return (probability > 0.5) & fov


def segment_ultrasound(network: str | Path, image: str | Path, out: str | Path, overwrite: bool = False,
                       device: str = "cpu") -> Path:
    """Segment the tumour in one acquired ultrasound volume; writes a uint8 mask (1 tumour) on its grid."""
    out = Path(out)
    refuse_to_overwrite(out, overwrite, problem="the output file already exists")
    segmenter = load_segmenter(network, resolve_device(device))
    volume = read_volume(image)
    check_spacing(volume.zooms, segmenter.config.spacing_mm, volume.path, "ultrasound volume")
    try:
        us, fov = ultrasound_intensities(volume.array)
    except InputError as exc:
        raise InputError(exc.problem, volume.path) from None
    mask = segment_volume(segmenter, us, fov)
    return write_volume(out, mask.astype(np.uint8), volume, dtype=np.uint8)

"""Shared test helpers: small synthetic NIfTI subjects with oblique geometry."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker: two workers with two threads each on two cores thrash (10x slower steps)
    torch.set_num_threads(1)


def oblique_affine(zooms=(1.5, 1.5, 2.0), angle_deg=12.0, origin=(-40.3, 25.1, -7.7)) -> np.ndarray:
    """A voxel-to-RAS affine with a rotation about two axes, non-uniform zooms and an odd origin."""
    a, b = np.deg2rad(angle_deg), np.deg2rad(angle_deg / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(zooms)
    affine[:3, 3] = origin
    return affine


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None, qform_code=1, sform_code=2,
                dtype=np.float32) -> Path:
    affine = oblique_affine() if affine is None else affine
    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    image.header.set_qform(affine, code=qform_code)
    image.header.set_sform(affine, code=sform_code)
    image.header.set_xyzt_units(xyz="mm", t="sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def huge_header_file(path, shape=(20000, 20000, 400)):
    """A .nii whose header claims a grid far too large for memory, followed by a few bytes of data only."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_qform(np.eye(4), code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\x00" * 4 + b"\x00" * 1024)
    return path


def odd_oblique_subject(folder: Path, modalities=("us", "t2", "flair"), shape=(37, 29, 5)) -> Path:
    """An odd in-plane grid on an oblique header (sform code 4, qform code 1), foreground in slices 1-3."""
    rng = np.random.default_rng(0)
    affine = oblique_affine(zooms=(1.1, 0.9, 2.3), angle_deg=23.0)
    for key in modalities:
        image = np.zeros(shape, np.float32)
        image[5:30, 4:shape[1] - 4, 1:4] = 50 + 20 * rng.random((25, shape[1] - 8, 3))
        nifti = nib.Nifti1Image(image, affine)
        nifti.header.set_qform(affine, code=1)
        nifti.header.set_sform(affine, code=4)
        nifti.header.set_xyzt_units("mm", "sec")
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nifti, str(folder / f"{key}.nii.gz"))
    return folder


def brain_like(shape=(20, 18, 6), seed=0) -> np.ndarray:
    """Background 0 with a textured positive blob, so foreground and percentiles are meaningful."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    radius = np.sqrt(sum(((g - c) / (s / 2.2)) ** 2 for g, c, s in zip(grid, centre, shape)))
    image = np.where(radius < 1.0, 100 + 50 * rng.random(shape), 0.0)
    return image.astype(np.float32)


def make_subject(folder: Path, modalities=("us", "t2"), shape=(20, 18, 6), affine=None, seed=0, names=None):
    """A canonical-layout subject folder with the given modalities (file names from `names` if given)."""
    for i, key in enumerate(modalities):
        name = (names or {}).get(key, key)
        write_nifti(folder / f"{name}.nii.gz", brain_like(shape, seed + i), affine)
    return folder


@pytest.fixture
def subject_factory(tmp_path):
    def factory(name="s1", **kwargs):
        return make_subject(tmp_path / "data" / name, **kwargs)

    return factory


SHAPE = (24, 20, 8)


def phantom_subject(folder, modalities, seed=0, with_targets=False):
    """Tissue labels, an ultrasound 'fan' covering slices 2..6, MR images of three tissues."""
    rng = np.random.default_rng(seed)
    tissue = np.zeros(SHAPE)
    tissue[3:21, 3:17] = 2
    tissue[6:18, 6:14] = 3
    tissue[10:13, 9:11] = 1
    write_nifti(folder / "tissue.nii.gz", tissue)
    fov = np.zeros(SHAPE, bool)
    fov[2:22, 2:18, 2:7] = True
    means = {"t2": (0, 150, 90, 60), "t1c": (0, 30, 80, 120), "flair": (0, 20, 100, 70), "t1": (0, 30, 80, 120)}
    for key in modalities:
        if key == "us":
            image = np.where(fov, 1 + rng.rayleigh(1.0, SHAPE), 0.0)
        else:
            image = np.vectorize(dict(enumerate(means[key])).get)(tissue.astype(int)) + rng.normal(0, 2, SHAPE) + 5
            image *= rng.uniform(0.5, 2.0)
        write_nifti(folder / f"{key}.nii.gz", image)
        if with_targets and key != "us":
            write_nifti(folder / "targets" / f"{key}.nii.gz", np.where(fov, image / image[fov].max(), 0))
    return folder


MIXED_PATTERNS = [("us", "t2", "t1c", "flair"), ("us", "t1c"), ("us", "t2", "t1c"), ("us", "t1c"), ("us",),
                  ("us", "t2", "t1c"), ("us", "t1c"), ("us", "t2", "t1c")]


def small_cohort(root, patterns=MIXED_PATTERNS):
    for i, mods in enumerate(patterns):
        phantom_subject(root / f"sub{i:02d}", mods, seed=i, with_targets=(i == 0))
    return root


# A run configuration small enough for a few CPU training steps in a test (32x32, 4 latent groups).
SMALL_CONFIG = """
base: tiny
model:
  image_size: 32
  num_pool: 3
  latent_channels: [2, 4, 4]
  global_latent: 8
  base_features: 4
  max_features: 8
  decoder_blocks: 1
train:
  batch_size: 4
  checkpoint_every: 2
  log_every: 1
  validate_every: 2
  gan_start: 0.5
  max_steps: 4
"""


def vit_checkpoint(layers: int, hidden: int, heads: int, mlp: int, grid: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random arrays named and shaped as in Google's ViT .npz checkpoints (Flax kernels [in, ...out]; a class
    token before the grid x grid position embeddings), as ResViT's ImageNet-21k file holds them."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    head = hidden // heads
    arrays = {"Transformer/posembed_input/pos_embedding": normal(1, 1 + grid * grid, hidden, scale=0.5),
              "Transformer/encoder_norm/scale": 1 + normal(hidden), "Transformer/encoder_norm/bias": normal(hidden),
              "embedding/kernel": normal(16, 16, 3, hidden), "embedding/bias": normal(hidden),
              "cls": normal(1, 1, hidden)}
    for index in range(layers):
        root = f"Transformer/encoderblock_{index}"
        for part in ("query", "key", "value"):
            arrays[f"{root}/MultiHeadDotProductAttention_1/{part}/kernel"] = normal(hidden, heads, head)
            arrays[f"{root}/MultiHeadDotProductAttention_1/{part}/bias"] = normal(heads, head)
        arrays[f"{root}/MultiHeadDotProductAttention_1/out/kernel"] = normal(heads, head, hidden)
        arrays[f"{root}/MultiHeadDotProductAttention_1/out/bias"] = normal(hidden)
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            arrays[f"{root}/{norm}/scale"], arrays[f"{root}/{norm}/bias"] = 1 + normal(hidden), normal(hidden)
        for dense, (inputs, outputs) in (("Dense_0", (hidden, mlp)), ("Dense_1", (mlp, hidden))):
            arrays[f"{root}/MlpBlock_3/{dense}/kernel"] = normal(inputs, outputs)
            arrays[f"{root}/MlpBlock_3/{dense}/bias"] = normal(outputs)
    return arrays


@pytest.fixture
def non_canonical_subject(tmp_path):
    """A factory of subject folders of four MR sequences (t1, t1c, t2, flair) and a tumour label map, on an odd
    grid (23 x 31 x 19) stored in no canonical axis order (axes towards superior, left and posterior), oblique by
    17 degrees, with unequal zooms and sform code 4 / qform code 1: what `mmhvae prepare` must bring back."""
    def factory(name="case", shape=(23, 31, 19), zooms=(1.1, 0.9, 1.3), seed=0):
        a = np.deg2rad(17.0)
        rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        axes = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # array axes -> S, L, P
        affine = np.eye(4)
        affine[:3, :3] = rotation @ axes @ np.diag(zooms)
        affine[:3, 3] = (12.3, -40.1, 7.9)
        folder = tmp_path / "data" / name
        rng = np.random.default_rng(seed)
        grid = np.indices(shape).astype(float)
        centre = (np.array(shape) - 1) / 2
        radius = np.sqrt(sum(((g - c) / (s / 2.4)) ** 2 for g, c, s in zip(grid, centre, shape)))
        brain = radius < 1.0
        seg = ((grid[0] - centre[0] - 2) ** 2 + (grid[1] - centre[1]) ** 2 + (grid[2] - centre[2]) ** 2 < 9) & brain
        for i, key in enumerate(("t1", "t1c", "t2", "flair")):
            image = np.where(brain, 60 + 30 * np.sin(grid[0] / (2 + i)) + 10 * rng.random(shape), 0.0)
            image[seg] += 40 * (i + 1)
            write_nifti(folder / f"{key}.nii.gz", image, affine, qform_code=1, sform_code=4)
        write_nifti(folder / "seg.nii.gz", seg.astype(np.uint8), affine, qform_code=1, sform_code=4, dtype=np.uint8)
        return folder

    return factory

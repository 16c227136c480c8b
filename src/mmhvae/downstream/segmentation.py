"""Tumour segmentation in ultrasound learnt from synthetic ultrasound: the downstream task of Sections 4.4.3
and 5.3 (Table IV).

The paper's protocol and ours:

- Training data (paper: UPenn-GBM, MR with tumour labels and no ultrasound, cropped to virtual ultrasound
  sweeps): an MR-only cohort with complete MR and label maps. Phantom cohorts (`mmhvae.data.phantom`) serve:
  their MR is already cropped to the probe's fan (the "virtual sweep"); their simulated ultrasound is
  ignored.
- Each synthesis method synthesises ultrasound from every non-empty subset of a subject's MR sequences (7 for
  t2, t1c, flair: "all combinations of possible input MR data", Section 5.3), giving one paired set of
  synthetic ultrasound and tumour labels per method.
- Paper: a 5-fold nnU-Net ensemble per method. Here: a 2D MONAI UNet on the ultrasound slices (DiceCE loss,
  Adam, a fixed number of steps, a third of each batch drawn from slices with tumour as nnU-Net does,
  lateral mirroring and a random gamma), optionally an ensemble over `folds` subject folds (probabilities
  averaged).
- Fully supervised baseline (paper: nnU-Net trained on RESECT-SEG): the same network trained on a few
  acquired, labelled ultrasound volumes.
- Test sets (paper: RESECT-SEG and ReMIND): acquired ultrasound of labelled cohorts, e.g. a phantom cohort
  of the default probe and one simulated with `us_probe="alt"` (the domain-shift analogue of RESECT-SEG).
- Metrics: Dice and average symmetric surface distance (ASSD, mm) per subject in 3D (MONAI), reported as
  median [interquartile range] per method and test set.

Label: the tumour core, i.e. labels 1 (necrosis) and 3 (enhancing) of `seg.nii.gz`, as the BraTS tumour core
of UPenn-GBM; oedema (2) is not tumour. Low-grade phantoms have no tumour core (their solid tumour shares
label 2 with oedema), so subjects whose tumour core is empty are left out of training and testing (UPenn-GBM
holds glioblastomas only; Dice and ASSD are undefined without a reference tumour); the table says how many.

Intensities: the synthesis models learnt ultrasound as the normalised input (Section 4.4.1) and
`mmhvae.predict.to_intensities` maps their output to [0, 1]; acquired ultrasound gets the same two steps, so
synthetic training images and acquired test images share one scale.

Grid: networks work on 2D slices along the third axis (the sweep) and remember the in-plane voxel size they
were trained at; a volume of another voxel size is refused (resample it first).
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import compute_average_surface_distance, compute_dice
from monai.networks.nets import UNet

from mmhvae import __version__
from mmhvae.data import harmonize
from mmhvae.data.dataset import centre_pad_crop
from mmhvae.errors import InputError
from mmhvae.evaluate import method_names
from mmhvae.files import atomic_path, write_csv_atomic, write_text_atomic
from mmhvae.io import Subject, SubjectFiles, discover_subjects, load_subject, read_volume, write_volume
from mmhvae.modalities import ULTRASOUND, ModalitySet, Subset, non_empty_subsets, subset_label
from mmhvae.model_file import LoadedModel, load_model_file, load_verified_payload, weights_checksum
from mmhvae.predict import (
    DEFAULT_TEMPERATURE,
    back_to_grid,
    prepare_for_model,
    resolve_device,
    synthesise,
    to_intensities,
)

TUMOUR_CORE_LABELS: tuple[int, ...] = (1, 3)  # seg.nii.gz: 1 necrosis, 2 oedema, 3 enhancing
SUPERVISED_METHOD = "fully supervised"
DEFAULT_STEPS = 1000  # about 1.5 min per network at 64 x 64 on one CPU core (0.09 s per step of 16 slices)
FORMAT = "mmhvae-segmentation"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "config", "state_dicts", "checksums")
FOREGROUND_SHARE = 1 / 3  # nnU-Net's foreground oversampling: most sweep slices show no tumour
GAMMA_RANGE = (0.7, 1.5)  # the two probes differ in dynamic range (55 vs 45 dB): another grey-level curve
SPACING_TOLERANCE = 0.02  # relative in-plane voxel size difference accepted between training and use
CSV_FIELDS = ("method", "test_set", "subject", "dice", "assd_mm", "empty_prediction", "predicted_voxels",
              "reference_voxels")


# ----------------------------------------------------------------------------------------------------
# Labels, intensities, volumes
# ----------------------------------------------------------------------------------------------------


def tumour_core(seg: np.ndarray, labels: Sequence[int] = TUMOUR_CORE_LABELS) -> np.ndarray:
    """The tumour mask of a label map: necrosis and enhancing tumour by default (the tumour core)."""
    return np.isin(np.rint(seg).astype(np.int64), list(labels))


def ultrasound_intensities(us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An acquired B-mode volume on the scale of synthetic ultrasound ([0, 1] in its FOV, 0 outside), and the FOV."""
    fov = harmonize.ultrasound_fov_mask(us)
    return to_intensities(harmonize.normalise_input(us, fov), fov), fov


@dataclass
class LabelledVolume:
    """One ultrasound volume (acquired or synthetic) in [0, 1], its tumour mask and field of view, [H, W, S]."""

    subject: str
    image: np.ndarray
    tumour: np.ndarray
    fov: np.ndarray
    spacing_mm: tuple[float, ...]
    source: str = ""  # e.g. the MR subset it was synthesised from


def header_spacing(path: Path) -> tuple[float, ...]:
    """Voxel size (mm) from a NIfTI header, without reading the voxels."""
    try:
        return tuple(float(z) for z in nib.load(str(path)).header.get_zooms()[:3])
    except Exception as exc:  # nibabel raises many types for damaged files
        raise InputError(f"cannot read the NIfTI header ({str(exc).splitlines()[0] if str(exc) else exc!r})",
                         path) from None


def check_spacing(spacing_mm: Sequence[float], expected_mm: Sequence[float], path: Path | None, what: str) -> None:
    """Refuse an in-plane voxel size that differs from the one a network was (or will be) trained at."""
    if not np.allclose(spacing_mm[:2], expected_mm[:2], rtol=SPACING_TOLERANCE, atol=0.0):
        raise InputError(f"{what}: in-plane voxel size {tuple(round(s, 3) for s in spacing_mm[:2])} mm differs "
                         f"from {tuple(round(s, 3) for s in expected_mm[:2])} mm (the segmentation network's); "
                         "resample it first", path)


def load_labelled_ultrasound(folder: Path, labels: Sequence[int] = TUMOUR_CORE_LABELS
                             ) -> tuple[list[LabelledVolume], list[str]]:
    """Acquired ultrasound and tumour mask of every subject in `folder`; subjects without tumour are returned
    by name only (left out: Dice and ASSD need a reference tumour)."""
    volumes, left_out = [], []
    for files in discover_subjects(folder):
        if ULTRASOUND not in files.modalities:
            raise InputError(f"subject '{files.name}' has no ultrasound image (us.nii.gz)", Path(folder) / files.name)
        if files.seg is None:
            raise InputError(f"subject '{files.name}' has no label map (seg.nii.gz)", files.modalities[ULTRASOUND])
        us, seg = read_volume(files.modalities[ULTRASOUND]), read_volume(files.seg)
        if not us.same_grid(seg):
            raise InputError(f"subject '{files.name}': the label map is not on the ultrasound's grid", files.seg)
        try:
            image, fov = ultrasound_intensities(us.array)
        except InputError as exc:
            raise InputError(exc.problem, us.path) from None
        tumour = tumour_core(seg.array, labels) & fov
        if not tumour.any():
            left_out.append(files.name)
            continue
        volumes.append(LabelledVolume(files.name, image, tumour, fov, us.zooms, "acquired"))
    return volumes, left_out


def mr_only(files: SubjectFiles, modalities: ModalitySet) -> SubjectFiles:
    """The subject's files without its ultrasound: training data is MR with labels only (Section 4.4.3)."""
    mr = {k: p for k, p in files.modalities.items() if k != ULTRASOUND and k in modalities}
    if not mr:
        raise InputError(f"subject '{files.name}' has none of the model's MR sequences "
                         f"{[k for k in modalities if k != ULTRASOUND]}", next(iter(files.modalities.values())))
    if files.seg is None:
        raise InputError(f"subject '{files.name}' has no label map (seg.nii.gz)", next(iter(mr.values())))
    return replace(files, modalities=mr)


def synthetic_ultrasound(loaded: LoadedModel, subject: Subject, temperature: float = DEFAULT_TEMPERATURE,
                         seed: int = 0) -> tuple[list[Subset], list[np.ndarray], np.ndarray]:
    """Ultrasound synthesised from every non-empty subset of the subject's MR sequences (Section 5.3), as [0, 1]
    intensities on the subject's grid, and the field of view. One `synthesise` call: each MR is encoded once."""
    modalities = ModalitySet(loaded.modalities)
    mr = modalities.ordered(k for k in subject.volumes if k != ULTRASOUND)
    subsets = non_empty_subsets(mr)
    prepared = prepare_for_model(subject, loaded, inputs=mr)
    results = synthesise(loaded.model, prepared, subsets, temperature, generator_seed=seed)
    grid, us = subject.reference.shape, modalities.index(ULTRASOUND)
    fov = back_to_grid(prepared.fov, grid, fill=False)
    images = [back_to_grid(to_intensities(r.mean[us], prepared.fov), grid, fill=0.0) for r in results]
    return subsets, images, fov


def synthetic_training_volumes(loaded: LoadedModel, subjects: Sequence[SubjectFiles],
                               temperature: float = DEFAULT_TEMPERATURE, seed: int = 0,
                               labels: Sequence[int] = TUMOUR_CORE_LABELS) -> tuple[list[LabelledVolume], list[str]]:
    """Synthetic ultrasound volumes (one per MR subset) with tumour masks for the MR-only cohort, and the names of
    the subjects left out (no tumour)."""
    modalities = ModalitySet(loaded.modalities)
    volumes, left_out = [], []
    for files in subjects:
        subject = load_subject(mr_only(files, modalities), modalities)
        tumour = tumour_core(subject.seg.array, labels)
        if not tumour.any():
            left_out.append(files.name)
            continue
        subsets, images, fov = synthetic_ultrasound(loaded, subject, temperature, seed)
        spacing = subject.reference.zooms
        volumes += [LabelledVolume(files.name, image, tumour & fov, fov, spacing, subset_label(subset))
                    for subset, image in zip(subsets, images)]
    return volumes, left_out


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


def worst_case_distance(shape: Sequence[int], spacing_mm: Sequence[float]) -> float:
    """The grid's diagonal in mm: no surface distance inside the volume is larger."""
    return float(np.linalg.norm(np.array(shape[:3]) * np.array(spacing_mm[:3])))


def segmentation_scores(prediction: np.ndarray, reference: np.ndarray, spacing_mm: Sequence[float]) -> dict:
    """Dice and average symmetric surface distance (mm) of one 3D prediction, with MONAI (Section 4.4.3).

    An empty prediction has Dice 0 and no surface, so its ASSD is undefined (MONAI gives inf): it is scored as
    the grid's diagonal (`worst_case_distance`) and flagged `empty_prediction`. The reference must hold a tumour.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    if not reference.any():
        raise InputError("the reference has no tumour: Dice and ASSD are undefined")
    y_pred = torch.from_numpy(np.asarray(prediction, bool))[None, None].float()
    y = torch.from_numpy(np.asarray(reference, bool))[None, None].float()
    dice = float(compute_dice(y_pred, y, include_background=True)[0, 0])
    empty = not prediction.any()
    if empty:
        assd = worst_case_distance(prediction.shape, spacing_mm)
    else:
        with warnings.catch_warnings():  # MONAI 1.5-1.6 warn about an argument they pass to themselves
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            assd = float(compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True,
                                                          spacing=[float(s) for s in spacing_mm[:3]])[0, 0])
    return {"dice": dice, "assd_mm": assd, "empty_prediction": empty,
            "predicted_voxels": int(np.count_nonzero(prediction)), "reference_voxels": int(np.count_nonzero(reference))}


def evaluate_segmenter(segmenter: Segmenter, method: str, test_sets: dict[str, Sequence[LabelledVolume]]
                       ) -> list[dict]:
    """Long-table rows: one per test subject of each test set."""
    rows = []
    for test_set, volumes in test_sets.items():
        for v in volumes:
            check_spacing(v.spacing_mm, segmenter.config.spacing_mm, None, f"test set '{test_set}', '{v.subject}'")
            scores = segmentation_scores(segment_volume(segmenter, v.image, v.fov), v.tumour, v.spacing_mm)
            rows.append({"method": method, "test_set": test_set, "subject": v.subject, **scores})
    return rows


# ----------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------


def median_iqr(values: Sequence[float], scale: float = 1.0) -> str:
    """'median [Q1 - Q3]' as in Table IV."""
    q1, median, q3 = np.percentile(np.asarray(values, float) * scale, [25, 50, 75])
    return f"{median:.1f} [{q1:.1f} - {q3:.1f}]"


def markdown_table(rows: Sequence[dict]) -> str:
    """Table IV layout: rows methods, columns Dice (%) and ASSD (mm) per test set, median [IQR] over subjects.

    An ASSD cell says how many of its predictions were empty (scored as the grid diagonal)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    test_sets = list(dict.fromkeys(r["test_set"] for r in rows))
    header = ["method"] + [f"{t} {m}" for t in test_sets for m in ("Dice (%)", "ASSD (mm)")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        cells = [method]
        for test_set in test_sets:
            cell = [r for r in rows if r["method"] == method and r["test_set"] == test_set]
            if not cell:
                cells += ["", ""]
                continue
            empty = sum(bool(r["empty_prediction"]) for r in cell)
            note = f" ({empty}/{len(cell)} empty)" if empty else ""
            cells += [median_iqr([r["dice"] for r in cell], 100.0), median_iqr([r["assd_mm"] for r in cell]) + note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)




def file_stem(method: str) -> str:
    """A file name for a method name ('mmhvae (phantom-tiny)' -> 'mmhvae-phantom-tiny')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", method).strip("-") or "method"


# ----------------------------------------------------------------------------------------------------
# Entries: the experiment, training one network, segmenting one volume
# ----------------------------------------------------------------------------------------------------


def load_synthesis_models(models: Sequence[str | Path], device: torch.device) -> tuple[list[LoadedModel], list[str]]:
    """The synthesis models and their table names; each must synthesise ultrasound from some MR sequence."""
    paths = [Path(m) for m in models]
    loaded = [load_model_file(p, device) for p in paths]
    for path, each in zip(paths, loaded):
        if ULTRASOUND not in each.modalities or len(each.modalities) < 2:
            raise InputError(f"the model's modalities {list(each.modalities)} need ultrasound and an MR sequence",
                             path)
    return loaded, method_names(paths, loaded)


def mr_cohort_spacing(subjects: Sequence[SubjectFiles]) -> tuple[float, ...]:
    """The voxel size every subject of the MR cohort shares (read from headers), or an InputError."""
    spacing = None
    for files in subjects:
        path = next((p for k, p in files.modalities.items() if k != ULTRASOUND), None)
        if path is None:
            raise InputError(f"subject '{files.name}' has no MR sequence", next(iter(files.modalities.values())))
        this = header_spacing(path)
        if spacing is None:
            spacing = this
        check_spacing(this, spacing, path, f"MR cohort subject '{files.name}'")
    return spacing


def left_out_note(left_out: Sequence[str]) -> str:
    return f"; left out without tumour core: {', '.join(left_out)}" if left_out else ""


def load_test_sets(test_cohorts: dict[str, Path], spacing_mm: Sequence[float]
                   ) -> tuple[dict[str, list[LabelledVolume]], list[str]]:
    """Every test cohort's labelled acquired ultrasound (on the training voxel size), and a note per test set."""
    if not test_cohorts:
        raise InputError("at least one test cohort is needed")
    test_sets, notes = {}, []
    for name, folder in test_cohorts.items():
        volumes, left_out = load_labelled_ultrasound(folder)
        if not volumes:
            raise InputError(f"test set '{name}': no subject with a tumour core", folder)
        for v in volumes:
            check_spacing(v.spacing_mm, spacing_mm, Path(folder) / v.subject, f"test set '{name}', '{v.subject}'")
        test_sets[name] = volumes
        notes.append(f"test set '{name}': {len(volumes)} subject(s) of {folder}{left_out_note(left_out)}")
    return test_sets, notes


def segmentation_experiment(models: Sequence[Path], mr_cohort: Path, test_cohorts: dict[str, Path],
                            supervised_cohort: Path | None, out: Path, steps: int = DEFAULT_STEPS, seed: int = 0,
                            temperature: float = DEFAULT_TEMPERATURE, folds: int = 1, batch_size: int = 16,
                            learning_rate: float = 1e-3, device: str = "cpu", overwrite: bool = False) -> list[dict]:
    """Table IV: one segmenter per synthesis method, trained on ultrasound it synthesised from every MR subset of
    `mr_cohort` (Sections 4.4.3, 5.3), plus a fully supervised one trained on the acquired ultrasound of
    `supervised_cohort` (if given); all scored on the acquired ultrasound of each test cohort (name -> folder).

    Writes OUT/segmentation.csv (one row per method, test set and subject), OUT/table.md, OUT/training-loss.csv
    and OUT/networks/<method>.pt (each usable by `segment_ultrasound`). Returns the rows.
    """
    out = Path(out)
    if (out / "table.md").exists() and not overwrite:
        raise InputError("the output folder already has results (use --overwrite)", out)
    if steps < 1:
        raise InputError(f"the number of training steps must be at least 1 (got {steps})")
    # Everything is read and checked before the long synthesis and training.
    torch_device = resolve_device(device)
    loaded, names = load_synthesis_models(models, torch_device)
    if SUPERVISED_METHOD in names:
        raise InputError(f"a synthesis method may not be named '{SUPERVISED_METHOD}'")
    mr_subjects = discover_subjects(mr_cohort)
    spacing = mr_cohort_spacing(mr_subjects)
    test_sets, test_notes = load_test_sets(test_cohorts, spacing)
    supervised, supervised_left_out = [], []
    if supervised_cohort is not None:
        supervised, supervised_left_out = load_labelled_ultrasound(supervised_cohort)
        if not supervised:
            raise InputError("no supervised training subject with a tumour core", supervised_cohort)
        for v in supervised:
            check_spacing(v.spacing_mm, spacing, Path(supervised_cohort) / v.subject, f"supervised '{v.subject}'")

    rows, log, notes = [], [], []
    for each, name in zip(loaded, names):
        started = time.perf_counter()
        volumes, left_out = synthetic_training_volumes(each, mr_subjects, temperature, seed)
        per_subject = (time.perf_counter() - started) / max(len(mr_subjects) - len(left_out), 1)
        print(f"{name}: {len(volumes)} synthetic ultrasound volumes, {per_subject:.1f} s per MR subject")
        segmenter, losses, per_step = train_and_save(volumes, steps, seed, folds, batch_size, learning_rate,
                                                     f"ultrasound synthesised by {name} from {mr_cohort}",
                                                     torch_device, out / "networks" / f"{file_stem(name)}.pt")
        rows += evaluate_segmenter(segmenter, name, test_sets)
        log += [{"method": name, **r} for r in losses]
        notes.append(f"{name}: {len(volumes)} synthetic volume(s) (MR subjects of {mr_cohort} x their MR subsets), "
                     f"{per_subject:.1f} s synthesis per subject, {per_step:.3f} s per training step"
                     f"{left_out_note(left_out)}")
    if supervised:
        segmenter, losses, per_step = train_and_save(supervised, steps, seed, folds, batch_size, learning_rate,
                                                     f"acquired ultrasound of {supervised_cohort}", torch_device,
                                                     out / "networks" / f"{file_stem(SUPERVISED_METHOD)}.pt")
        rows += evaluate_segmenter(segmenter, SUPERVISED_METHOD, test_sets)
        log += [{"method": SUPERVISED_METHOD, **r} for r in losses]
        notes.append(f"{SUPERVISED_METHOD}: {len(supervised)} acquired ultrasound volume(s) of {supervised_cohort}, "
                     f"{per_step:.3f} s per training step{left_out_note(supervised_left_out)}")
    write_experiment_results(out, rows, log, notes + test_notes, steps, folds, seed, worst_case_note(test_sets))
    return rows


def train_and_save(volumes: Sequence[LabelledVolume], steps: int, seed: int, folds: int, batch_size: int,
                   learning_rate: float, trained_on: str, device: torch.device, path: Path
                   ) -> tuple[Segmenter, list[dict], float]:
    """Train, save, and time: returns the segmenter, its loss log and the seconds per training step."""
    started = time.perf_counter()
    segmenter, losses = train_segmenter(volumes, steps, seed, folds, batch_size, learning_rate, trained_on,
                                        device=device)
    seconds = time.perf_counter() - started
    save_segmenter(path, segmenter)
    print(f"  trained {folds} x {steps} steps in {seconds:.0f} s (last loss {losses[-1]['loss']:.3f}) -> {path}")
    return segmenter, losses, seconds / (steps * folds)


def worst_case_note(test_sets: dict[str, Sequence[LabelledVolume]]) -> str:
    distances = sorted({round(worst_case_distance(v.image.shape, v.spacing_mm), 1)
                        for volumes in test_sets.values() for v in volumes})
    return ", ".join(f"{d:g}" for d in distances)


def write_experiment_results(out: Path, rows: list[dict], log: list[dict], notes: list[str], steps: int, folds: int,
                             seed: int, worst_case: str) -> None:
    """segmentation.csv, training-loss.csv and table.md (the table with what it was computed from)."""
    write_csv_atomic(out / "segmentation.csv", rows, CSV_FIELDS)
    write_csv_atomic(out / "training-loss.csv", log, ("method", "fold", "step", "loss"))
    text = (
        "# Tumour segmentation in acquired ultrasound, learnt from synthetic ultrasound (Table IV analogue)\n\n"
        + markdown_table(rows) + "\n\n"
        f"Median [interquartile range] over test subjects, per subject in 3D (MONAI Dice; symmetric average surface "
        f"distance in mm). Label: tumour core (seg labels {', '.join(map(str, TUMOUR_CORE_LABELS))}: necrosis and "
        f"enhancing tumour). An empty prediction scores Dice 0 and ASSD = the grid's diagonal ({worst_case} mm), "
        "the largest distance inside the volume; the ASSD cell counts them. "
        f"Networks: 2D MONAI UNet, {folds} fold(s) x {steps} Adam steps, seed {seed}.\n\n"
        + "".join(f"- {n}\n" for n in notes)
        + f"\nmmhvae {__version__}\n"
    )
    write_text_atomic(out / "table.md", text)
    print(f"wrote {out / 'segmentation.csv'} and {out / 'table.md'}")


def train_segmentation_network(data: Path, out: Path, steps: int = DEFAULT_STEPS, seed: int = 0,
                               model: Path | None = None, temperature: float = DEFAULT_TEMPERATURE, folds: int = 1,
                               batch_size: int = 16, learning_rate: float = 1e-3, device: str = "cpu",
                               overwrite: bool = False) -> Path:
    """One segmentation network file: trained on ultrasound that `model` synthesises from the MR (and labels) of
    `data`, or, without `model`, on the acquired labelled ultrasound of `data` (the fully supervised baseline)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError("the output file already exists (use --overwrite)", out)
    torch_device = resolve_device(device)
    if model is None:
        volumes, _ = load_labelled_ultrasound(data)
        trained_on = f"acquired ultrasound of {data}"
    else:
        (loaded,), (name,) = load_synthesis_models([model], torch_device)
        subjects = discover_subjects(data)
        mr_cohort_spacing(subjects)
        volumes, _ = synthetic_training_volumes(loaded, subjects, temperature, seed)
        trained_on = f"ultrasound synthesised by {name} ({model}) from {data}"
    train_and_save(volumes, steps, seed, folds, batch_size, learning_rate, trained_on, torch_device, out)
    return out


def segment_ultrasound(network: str | Path, image: str | Path, out: str | Path, overwrite: bool = False,
                       device: str = "cpu") -> Path:
    """Segment the tumour in one acquired ultrasound volume; writes a uint8 mask (1 tumour) on its grid."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError("the output file already exists (use --overwrite)", out)
    segmenter = load_segmenter(network, resolve_device(device))
    volume = read_volume(image)
    check_spacing(volume.zooms, segmenter.config.spacing_mm, volume.path, "ultrasound volume")
    try:
        us, fov = ultrasound_intensities(volume.array)
    except InputError as exc:
        raise InputError(exc.problem, volume.path) from None
    mask = segment_volume(segmenter, us, fov)
    return write_volume(out, mask.astype(np.uint8), volume, dtype=np.uint8)

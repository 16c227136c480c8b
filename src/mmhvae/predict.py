"""Inference: any subset of a subject's modalities in, every modality out, on the input grid.

Each present modality is encoded once per slice batch and its features are reused for every requested
subset and sample (the subsets and samples are batched into one decoding pass). At temperature T the
posterior standard deviations are scaled by T (0.5 by default, Section 4.2); `samples` > 1 returns the
mean of the samples and a per-voxel standard deviation map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmhvae.data import harmonize
from mmhvae.data.dataset import PreparedSubject, centre_pad_crop, prepare_subject
from mmhvae.errors import InputError
from mmhvae.import_authors import prepare_subject_authors
from mmhvae.io import Subject, Volume, discover_subjects, load_subject, read_every_subject_first, write_volume
from mmhvae.modalities import ModalitySet, Subset, non_empty_subsets, parse_modality_list, subset_label
from mmhvae.model.distributions import RowNoise
from mmhvae.model.mmhvae import MMHVAE
from mmhvae.model_file import LoadedModel, load_model_file

DEFAULT_TEMPERATURE = 0.5
PRECISIONS = ("auto", "fp32", "bf16")
# Decoding rows per pass, as a pixel budget: large batches of 192x192 activations overflow the CPU caches and
# made one 15-subset run slower than 15 single runs (benchmark); 64x64 still gets 32 rows at once.
DECODE_PIXELS_PER_PASS = 32 * 64 * 64


@dataclass
class Synthesis:
    """Outputs for one subset, on the network's scale: mean (and std) [M, H, W, S]."""

    subset: Subset
    mean: np.ndarray
    std: np.ndarray | None


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" is bf16 autocast on CUDA and float32 on CPU (exact, and the reference for evaluation)."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}' ({', '.join(PRECISIONS)})")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The networks' precision: bf16 autocast (convolutions and matrix products in bf16) or plain float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available on this machine")
    if device not in ("cpu", "cuda", "auto"):
        raise InputError(f"unknown device '{device}' (cpu, cuda or auto)")
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                        ("cpu" if device == "auto" else device))


@torch.inference_mode()
def synthesise(model: MMHVAE, prepared: PreparedSubject, subsets: Sequence[Subset], temperature: float =
               DEFAULT_TEMPERATURE, samples: int = 1, slice_batch: int = 8, max_rows: int | None = None,
               generator_seed: int | None = 0, precision: str = "fp32") -> list[Synthesis]:
    """Every modality from each subset in `subsets`, for every foreground slice of `prepared`.

    Slices without foreground stay at background (-1). Deterministic for a given `generator_seed`: sample s of
    slice k draws its noise from its own stream (RowNoise keyed by slice and sample), so it is the same for every
    subset and whichever subsets, slice batch or device chunking a run uses (`None`: the global RNG instead).
    precision "bf16" runs the networks under bf16 autocast (fast on GPUs and on CPUs with bf16 units).
    """
    modalities = ModalitySet(tuple(model.config.modalities))
    device = next(model.parameters()).device
    masks = torch.tensor([modalities.indicator(s) for s in subsets], dtype=torch.bool, device=device)
    if bool((masks & ~torch.from_numpy(prepared.present).to(device)).any()):
        raise InputError(f"subject '{prepared.name}': a requested input subset includes a missing modality")
    n_sub, n_mod = len(subsets), len(modalities)
    shape = prepared.inputs.shape
    sums = np.full((n_sub, *shape), 0.0, np.float64)
    squares = np.zeros((n_sub, *shape), np.float64) if samples > 1 else None
    present = torch.from_numpy(prepared.present).to(device)
    for start in range(0, len(prepared.slices), slice_batch):
        ks = prepared.slices[start:start + slice_batch]
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(prepared.inputs[..., ks], -1, 0))).to(device)
        with autocast(device, precision):
            features = model.encode(x, present.expand(len(ks), n_mod))
        # rows: for each subset, for each sample, every slice of the chunk
        subset_of_row = torch.arange(n_sub, device=device).repeat_interleave(samples * len(ks))
        slice_of_row = torch.arange(len(ks), device=device).repeat(n_sub * samples)
        sample_of_row = torch.arange(samples, device=device).repeat_interleave(len(ks)).repeat(n_sub)
        noise_key = torch.as_tensor(ks, device=device)[slice_of_row] * samples + sample_of_row
        images = []
        rows_per_pass = max_rows or max(1, DECODE_PIXELS_PER_PASS // (shape[1] * shape[2]))
        for lo in range(0, len(slice_of_row), rows_per_pass):
            rows = slice(lo, lo + rows_per_pass)
            with autocast(device, precision):
                noise = None if generator_seed is None else RowNoise(noise_key[rows], generator_seed)
                out = model.decode(features.index(slice_of_row[rows]), masks[subset_of_row[rows]], temperature,
                                   generator=noise)
            images.append(out.images.float().cpu())
        images = torch.cat(images).view(n_sub, samples, len(ks), n_mod, *shape[1:3]).double().numpy()
        sums[..., ks] = np.moveaxis(images.sum(axis=1), 1, -1)
        if squares is not None:
            squares[..., ks] = np.moveaxis((images**2).sum(axis=1), 1, -1)
    results = []
    for i, subset in enumerate(subsets):
        mean = sums[i] / samples
        std = None
        if squares is not None:
            std = np.sqrt(np.maximum(squares[i] / samples - mean**2, 0.0) * samples / (samples - 1))
        outside = np.ones(shape, bool)
        outside[..., prepared.slices] = False
        mean[outside] = harmonize.BACKGROUND
        results.append(Synthesis(tuple(subset), mean.astype(np.float32),
                                 None if std is None else std.astype(np.float32)))
    return results


def to_intensities(image: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Network scale (2t - 1) back to harmonised intensities t, 0 outside the field of view."""
    out = harmonize.network_to_target(image)
    out[~fov] = 0.0
    return out


def back_to_grid(array: np.ndarray, grid_shape: tuple[int, ...], fill: float) -> np.ndarray:
    """Undo the centre pad/crop onto the model grid: [H', W', S] -> the subject's [H, W, S]."""
    return centre_pad_crop(array, tuple(grid_shape[:2]), fill=fill, axes=(0, 1))


def prepare_for_model(subject: Subject, loaded: LoadedModel, inputs: Subset | None = None) -> PreparedSubject:
    """Inputs of a subject on the model's grid, restricted to `inputs` (if given) among present modalities."""
    if inputs is not None:
        unknown = [k for k in inputs if k not in subject.volumes]
        if unknown:
            raise InputError(f"--inputs {','.join(inputs)}: subject '{subject.name}' has no {unknown}",
                             subject.reference.path.parent if subject.reference.path else None)
        subject = Subject(subject.name, {k: v for k, v in subject.volumes.items() if k in inputs}, subject.files,
                          subject.seg, subject.tissue, subject.targets)
    if loaded.variant == "authors":  # their network was trained on their own input normalisation
        return prepare_subject_authors(subject, loaded.preprocess)
    return prepare_subject(subject, loaded.preprocess, with_targets=False)


def predict_subject(loaded: LoadedModel, subject: Subject, out_dir: Path, inputs: Subset | None = None,
                    temperature: float = DEFAULT_TEMPERATURE, samples: int = 1, slice_batch: int = 8,
                    precision: str = "fp32", all_subsets: bool = False) -> list[Path]:
    """Write OUT/<subject>/<modality>.nii.gz for every modality of the model (and `_std` maps if samples > 1).

    With `all_subsets`, every non-empty subset of the used modalities is an input set of its own, all decoded in
    one batched run (each modality encoded once), written to OUT/<subject>/<subset>/<modality>.nii.gz. The
    subject is prepared once, as `evaluate` does for Table I: an MR-only subset still sees its images cropped to
    the ultrasound FOV of the subject, where a separate `--inputs t2` run without the ultrasound would not crop.
    """
    modalities = ModalitySet(loaded.modalities)
    prepared = prepare_for_model(subject, loaded, inputs)
    used = modalities.from_indicator(prepared.present.astype(int))
    subsets = non_empty_subsets(used) if all_subsets else [used]
    results = synthesise(loaded.model, prepared, subsets, temperature, samples, slice_batch, precision=precision)
    written = []
    for result in results:
        folder = out_dir / subject.name / subset_label(result.subset) if all_subsets else out_dir / subject.name
        written += write_synthesis(folder, modalities, result.mean, result.std, prepared.fov, subject.reference)
    return written


def write_synthesis(folder: Path, modalities: Sequence[str], mean: np.ndarray, std: np.ndarray | None,
                    fov: np.ndarray, grid: Volume) -> list[Path]:
    """<modality>.nii.gz (and <modality>_std.nii.gz) in `folder`, from network-scale [M, H', W', S] arrays on
    the model grid, back on the subject's grid and header, 0 outside the field of view."""
    fov_on_grid = back_to_grid(fov, grid.shape, fill=False)
    written = []
    for j, key in enumerate(modalities):
        image = back_to_grid(to_intensities(mean[j], fov), grid.shape, fill=0.0)
        written.append(write_volume(folder / f"{key}.nii.gz", np.where(fov_on_grid, image, 0.0), grid))
        if std is not None:
            spread = back_to_grid(std[j] / 2.0, grid.shape, fill=0.0)  # std on the intensity scale t
            written.append(write_volume(folder / f"{key}_std.nii.gz", np.where(fov_on_grid, spread, 0.0), grid))
    return written


def remove_earlier_predictions(folder: Path, written: Sequence[Path], modalities: Sequence[str]) -> list[Path]:
    """After an --overwrite run, delete the predictions an earlier run left in a subject's folder that this run
    did not replace (std maps of a --samples run, the other layout of --all-subsets), so that the folder holds
    one run. Only files named as predict names them are touched; anything else stays."""
    names = {f"{key}{tail}.nii.gz" for key in modalities for tail in ("", "_std")}
    subset_folders = [d for d in folder.iterdir() if d.is_dir() and set(d.name.split("+")) <= set(modalities)]
    kept = {Path(p).resolve() for p in written}
    removed = []
    for where in (folder, *subset_folders):
        for name in names:
            path = where / name
            if path.is_file() and path.resolve() not in kept:
                path.unlink()
                removed.append(path)
        if where != folder and not any(where.iterdir()):
            where.rmdir()
    return removed


def check_sampling(temperature: float, samples: int) -> None:
    """The --temperature and --samples options of predict and evaluate, or an input error."""
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    if not math.isfinite(temperature) or temperature < 0:
        raise InputError(f"--temperature must be a finite number >= 0, got {temperature}")


def predict(model: str | Path, input_dir: str | Path, out: str | Path, temperature: float = DEFAULT_TEMPERATURE,
            samples: int = 1, device: str = "cpu", inputs: str | None = None, overwrite: bool = False,
            resample_to: str | None = None, nan_to_num: bool = False, strict: bool = False,
            precision: str = "auto", compile_network: bool = False, all_subsets: bool = False) -> list[Path]:
    """The `mmhvae predict` job over one subject folder or a data folder (`all_subsets`: see predict_subject)."""
    check_sampling(temperature, samples)
    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    loaded = load_model_file(model, torch_device)
    if compile_network:
        if not hasattr(loaded.model, "compile_blocks"):
            raise InputError(f"--compile: this {loaded.variant} network cannot be compiled block by block", model)
        loaded.model.compile_blocks()
    if loaded.recorded_temperature is not None and loaded.recorded_temperature != temperature:
        print(f"note: this model's authors ran it at temperature {loaded.recorded_temperature:g}; this run uses "
              f"{temperature:g} (set --temperature to change it)")
    subjects = discover_subjects(input_dir)
    out = Path(out)
    wanted = parse_modality_list(inputs) if inputs is not None else None  # '' is refused, not 'every input'
    used = ModalitySet(loaded.modalities).ordered(wanted) if wanted else None
    for files in subjects:
        unknown = sorted(set(files.modalities) - set(loaded.modalities))
        if strict and unknown:
            raise InputError(f"subject '{files.name}' has modalities {unknown} that the model was not trained on "
                             f"({','.join(loaded.modalities)}); drop --strict to ignore them",
                             files.modalities[unknown[0]])
        existing = out / files.name
        if existing.is_dir() and any(existing.iterdir()) and not overwrite:
            raise InputError(f"output for subject '{files.name}' already exists (use --overwrite)", existing)
    read_every_subject_first(subjects, lambda files: prepare_for_model(
        load_subject(files, loaded.modalities, resample_to=resample_to, nan_to_num=nan_to_num), loaded, used))
    written = []
    for files in subjects:
        subject = load_subject(files, loaded.modalities, resample_to=resample_to, nan_to_num=nan_to_num)
        paths = predict_subject(loaded, subject, out, used, temperature, samples, precision=precision,
                                all_subsets=all_subsets)
        if overwrite:
            remove_earlier_predictions(out / files.name, paths, loaded.modalities)
        label = subset_label(used or subject.present(ModalitySet(loaded.modalities)))
        print(f"{files.name}: inputs {'every subset of ' if all_subsets else ''}{label} -> "
              f"{len(paths)} files in {out / files.name}")
        written += paths
    return written

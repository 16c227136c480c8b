"""`mmhvae predict`: a subject's images in, every modality of the model out, on the subject's own grid.

A subject is prepared as the model file says (`prepare_for_model`), synthesised (`synthesis`), and written as
NIfTI on the subject's grid and header: harmonised intensities, 0 outside the field of view. A subject folder
written by `mmhvae prepare` (with its prepared.json) gets its outputs back on the grid and header of its original
volumes. Every subject of a folder is read and checked before anything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmhvae.errors import InputError, refuse_to_overwrite
from mmhvae.inference.calibration import DEFAULT_LEVEL, Calibration, calibration_at, check_level
from mmhvae.inference.device import resolve_device, resolve_precision
from mmhvae.inference.synthesis import DEFAULT_TEMPERATURE, Synthesis, check_sampling, synthesise
from mmhvae.io.layouts import SubjectFiles, discover_subjects, require_modalities_present
from mmhvae.io.subjects import Subject, load_subject, read_every_subject_first
from mmhvae.io.volumes import Volume, write_volume
from mmhvae.modalities import ModalitySet, Subset, non_empty_subsets, parse_modality_list, subset_label
from mmhvae.model_file import LoadedModel, load_model_file
from mmhvae.preprocessing.grid import centre_pad_crop
from mmhvae.preprocessing.intensity import network_to_target
from mmhvae.preprocessing.prepare import PreparedSubject, prepare_subject
from mmhvae.preprocessing.real_volumes import read_grid_record
from mmhvae.preprocessing.reorient import GridRecord

log = logging.getLogger(__name__)


def to_intensities(image: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Network scale (2t - 1) back to harmonised intensities t, 0 outside the field of view."""
    out = network_to_target(image)
    out[~fov] = 0.0
    return out


def back_to_grid(array: np.ndarray, grid_shape: tuple[int, ...], fill: float) -> np.ndarray:
    """Undo the centre pad/crop onto the model grid: [H', W', S] -> the subject's [H, W, S]."""
    return centre_pad_crop(array, tuple(grid_shape[:2]), fill=fill, axes=(0, 1))


def on_subject_grid(image: np.ndarray, fov: np.ndarray, grid_shape: tuple[int, ...]) -> np.ndarray:
    """One predicted modality [H', W', S] on the network's scale as harmonised intensities on the subject's grid
    [H, W, S], 0 outside the field of view."""
    fov_on_grid = back_to_grid(fov, grid_shape, fill=False)
    return np.where(fov_on_grid, back_to_grid(to_intensities(image, fov), grid_shape, fill=0.0), 0.0)


def grid_record(subject: Subject) -> GridRecord | None:
    """The way back to the original grid of a subject prepared by `mmhvae prepare`, checked against its grid."""
    if subject.files.record is None:
        return None
    record = read_grid_record(subject.files.record)
    if not record.describes(subject.reference):
        raise InputError(f"subject '{subject.name}': its images are not on the grid this record describes "
                         "(prepare the original volumes again)", subject.files.record)
    return record


def write_on_grid(path: Path, array: np.ndarray, fov: np.ndarray, grid: Volume, record: GridRecord | None) -> Path:
    """An output on the subject's grid and header, 0 outside the field of view `fov`, or back on its original grid
    and header when it was prepared (the field of view taken back by nearest neighbour, so that interpolation does
    not spread it)."""
    if record is None:
        return write_volume(path, np.where(fov, array, 0.0), grid)
    inside = record.back_to_original(fov.astype(np.float32), "nearest") > 0.5
    return write_volume(path, np.where(inside, record.back_to_original(array), 0.0), record.original_grid())


def prepare_for_model(subject: Subject, loaded: LoadedModel, inputs: Subset | None = None) -> PreparedSubject:
    """Inputs of a subject prepared as the model's preprocessing says (its grid, its input normalisation),
    restricted to `inputs` (if given) among present modalities."""
    if inputs is not None:
        unknown = [k for k in inputs if k not in subject.volumes]
        if unknown:
            raise InputError(f"--inputs {','.join(inputs)}: subject '{subject.name}' has no {unknown}",
                             subject.reference.path.parent if subject.reference.path else None)
        subject = Subject(subject.name, {k: v for k, v in subject.volumes.items() if k in inputs}, subject.files,
                          subject.seg, subject.tissue, subject.targets, subject.mask)
    return prepare_subject(subject, loaded.preprocess, with_targets=False)


def predict_subject(loaded: LoadedModel, subject: Subject, out_dir: Path, inputs: Subset | None = None,
                    temperature: float = DEFAULT_TEMPERATURE, samples: int = 1, slice_batch: int = 8,
                    precision: str = "fp32", all_subsets: bool = False, calibration: Calibration | None = None,
                    level: float = DEFAULT_LEVEL) -> list[Path]:
    """Write OUT/<subject>/<modality>.nii.gz for every modality of the model (and `_std` maps if samples > 1;
    with a `calibration`, the calibrated `_std` and the interval at `level` as `_lo` and `_hi`).

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
    record = grid_record(subject)
    written = []
    for result in results:
        folder = out_dir / subject.name / subset_label(result.subset) if all_subsets else out_dir / subject.name
        std, bounds = result.std, None
        if calibration is not None and std is not None:
            std, bounds = calibrated(result, modalities, calibration, level)
        written += write_synthesis(folder, modalities, result.mean, std, prepared.fov, subject.reference,
                                   record, bounds)
    return written


def calibrated(result: Synthesis, modalities: Sequence[str], calibration: Calibration, level: float
               ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The calibrated sd and the interval (low, high) at `level` of every modality of one subset's synthesis."""
    lows, highs, sds = [], [], []
    for j, key in enumerate(modalities):
        low, high, sd = calibration.interval(result.mean[j], result.std[j], key, result.subset, level)
        lows.append(low)
        highs.append(high)
        sds.append(sd)
    return np.stack(sds), (np.stack(lows), np.stack(highs))


def write_synthesis(folder: Path, modalities: Sequence[str], mean: np.ndarray, std: np.ndarray | None,
                    fov: np.ndarray, grid: Volume, record: GridRecord | None = None,
                    bounds: tuple[np.ndarray, np.ndarray] | None = None) -> list[Path]:
    """<modality>.nii.gz (and <modality>_std.nii.gz, and with `bounds` <modality>_lo/_hi.nii.gz) in `folder`,
    from network-scale [M, H', W', S] arrays on the model grid, back on the subject's grid and header (or, with
    the `record` of `mmhvae prepare`, on its original ones), 0 outside the field of view."""
    fov_on_grid = back_to_grid(fov, grid.shape, fill=False)
    written = []
    for j, key in enumerate(modalities):
        image = on_subject_grid(mean[j], fov, grid.shape)
        written.append(write_on_grid(folder / f"{key}.nii.gz", image, fov_on_grid, grid, record))
        if std is not None:
            spread = back_to_grid(std[j] / 2.0, grid.shape, fill=0.0)  # std on the intensity scale t
            written.append(write_on_grid(folder / f"{key}_std.nii.gz", spread, fov_on_grid, grid, record))
        for tail, bound in zip(("_lo", "_hi"), bounds or ()):
            values = on_subject_grid(bound[j], fov, grid.shape)
            written.append(write_on_grid(folder / f"{key}{tail}.nii.gz", values, fov_on_grid, grid, record))
    return written


def remove_earlier_predictions(folder: Path, written: Sequence[Path], modalities: Sequence[str]) -> list[Path]:
    """After an --overwrite run, delete the predictions an earlier run left in a subject's folder that this run
    did not replace (std maps of a --samples run, the other layout of --all-subsets), so that the folder holds
    one run. Only files named as predict names them are touched; anything else stays."""
    names = {f"{key}{tail}.nii.gz" for key in modalities for tail in ("", "_std", "_lo", "_hi")}
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


def check_outputs(subjects: Sequence[SubjectFiles], modalities: Sequence[str], out: Path, strict: bool,
                  overwrite: bool) -> None:
    """Refuse, before any work, a subject with modalities the model lacks (`strict`) or earlier outputs."""
    for files in subjects:
        unknown = sorted(set(files.modalities) - set(modalities))
        if strict and unknown:
            raise InputError(f"subject '{files.name}' has modalities {unknown} that the model was not trained on "
                             f"({','.join(modalities)}); drop --strict to ignore them", files.modalities[unknown[0]])
        existing = out / files.name
        refuse_to_overwrite(existing, overwrite, exists=existing.is_dir() and any(existing.iterdir()),
                            problem=f"output for subject '{files.name}' already exists")


def predict(model: str | Path, input_dir: str | Path, out: str | Path, temperature: float = DEFAULT_TEMPERATURE,
            samples: int = 1, device: str = "cpu", inputs: str | None = None, overwrite: bool = False,
            resample_to: str | None = None, nan_to_num: bool = False, strict: bool = False,
            precision: str = "auto", compile_network: bool = False, all_subsets: bool = False,
            level: float = DEFAULT_LEVEL) -> list[Path]:
    """The `mmhvae predict` job over one subject folder or a data folder (`all_subsets`: see predict_subject)."""
    check_sampling(temperature, samples)
    check_level(level)
    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    loaded = load_model_file(model, torch_device)
    if compile_network:
        if not hasattr(loaded.model, "compile_blocks"):
            raise InputError(f"--compile: this {loaded.variant} network cannot be compiled block by block", model)
        loaded.model.compile_blocks()
    if loaded.recorded_temperature is not None and loaded.recorded_temperature != temperature:
        log.info(f"note: this model's authors ran it at temperature {loaded.recorded_temperature:g}; this run uses "
                 f"{temperature:g} (set --temperature to change it)")
    calibration = calibration_for(loaded, temperature, samples, level)
    subjects = discover_subjects(input_dir)
    out = Path(out)
    wanted = parse_modality_list(inputs) if inputs is not None else None  # '' is refused, not 'every input'
    used = ModalitySet(loaded.modalities).ordered(wanted) if wanted else None
    require_modalities_present(subjects, loaded.modalities, input_dir, "the modalities of the model",
                               "predict with a model trained on theirs (mmhvae train --modalities {found})")
    check_outputs(subjects, loaded.modalities, out, strict, overwrite)

    def read_and_check(files):
        subject = load_subject(files, loaded.modalities, resample_to=resample_to, nan_to_num=nan_to_num)
        grid_record(subject)
        return prepare_for_model(subject, loaded, used)

    read_every_subject_first(subjects, read_and_check)
    written = []
    for files in subjects:
        subject = load_subject(files, loaded.modalities, resample_to=resample_to, nan_to_num=nan_to_num)
        paths = predict_subject(loaded, subject, out, used, temperature, samples, precision=precision,
                                all_subsets=all_subsets, calibration=calibration, level=level)
        if overwrite:
            remove_earlier_predictions(out / files.name, paths, loaded.modalities)
        label = subset_label(used or subject.present(ModalitySet(loaded.modalities)))
        log.info(f"{files.name}: inputs {'every subset of ' if all_subsets else ''}{label} -> "
                 f"{len(paths)} files in {out / files.name}")
        written += paths
    return written


def calibration_for(loaded: LoadedModel, temperature: float, samples: int, level: float) -> Calibration | None:
    """The model's calibration where it applies to this run (several samples at its temperature), else None,
    saying why; a level the calibration lacks is an input error."""
    if samples < 2:
        return None
    if loaded.calibration is None:
        log.info("note: this model is uncalibrated: <modality>_std is the raw sd of the samples, no interval is "
                 "written (mmhvae calibrate makes calibrated intervals)")
        return None
    calibration = calibration_at(loaded.calibration, temperature)
    if calibration is None:
        log.info(f"note: the model was calibrated at temperature {loaded.calibration['temperature']:g}, not "
                 f"{temperature:g}: <modality>_std is the raw sd of the samples, no interval is written")
        return None
    for scale in calibration.groups.values():
        scale.half_width(np.zeros(1), level)  # a level the calibration lacks fails here, before any output
    if calibration.samples != samples:
        log.info(f"note: calibrated with {calibration.samples} samples, predicting with {samples}: the interval "
                 "assumes a sample sd of similar noise")
    log.info(f"writing the calibrated {level:.0%} interval (<modality>_lo, _hi) and the calibrated <modality>_std")
    return calibration

"""The BraSyn protocol of `mmhvae evaluate --protocol brasyn`: each subject misses one of its sequences, which is
synthesised from the others and scored against the acquired one, inside the brain.

BraSyn is the BraTS 2023 task "Brain MR image synthesis for tumour segmentation" (H. B. Li et al., arXiv:2305.09011):
four skull-stripped sequences (t1n, t1c, t2w, t2f), one dropped at random per test subject. Its conventions, as the
organisers' code has them (github.com/hongweilibran/BraSyn, ssim.py; the same normalisation in the BraTS
inpainting evaluation, github.com/BraTS-inpainting/2023_challenge, evaluation/evaluation_utils.py):

- Normalisation: each volume on its own, the synthesis and the acquired image alike, is clipped to its 0.5th and
  99.5th percentiles over the whole volume as stored (the lower one raised to 0 if negative) and rescaled to [0, 1].
- SSIM is reported in the tumour (seg > 0) and in the rest of the brain apart, as their SSIM_tumor and
  SSIM_non_tumor; PSNR (and MSE) are taken over the voxels of the mask, on the [0, 1] scale (data range 1).

They are computed here with this package's metrics (evaluation/metrics.py): PSNR by `masked_psnr` over the brain's
voxels; SSIM as the mean over axial slices (the third array axis) of `masked_ssim`, the 2D SSIM of a 7 x 7 uniform
window inside the region (eroded by the window's radius), with 0 as black. The organisers' SSIM is torchmetrics' 3D
SSIM (an 11-voxel Gaussian window, sigma 1.5) of the volumes multiplied by the region, so values come close to
theirs without being the leaderboard's. The brain is the subject's mask.nii.gz (`mmhvae prepare` writes one), else
the union of its images' voxels above their minimum (BraTS is skull-stripped). On volumes cropped by `prepare` the
percentiles see less background than on BraTS's 240x240x155 volumes.

Where BraSyn drops one sequence at random, every subject with all of the model's modalities is scored here once per
modality (the leave-one-out cases), so that no draw decides which sequences a subject tests. The unit is the
subject: brasyn.csv lists every subject's scores, brasyn.md their mean and sample sd over subjects per missing
sequence, and per subject averaged over its cases ("any").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmhvae.errors import InputError, refuse_to_overwrite
from mmhvae.evaluation.metrics import masked_psnr, masked_ssim
from mmhvae.evaluation.scoring import method_names
from mmhvae.evaluation.statistics import sample_sd
from mmhvae.evaluation.tables import markdown_lines
from mmhvae.inference.predict import on_subject_grid, prepare_for_model
from mmhvae.inference.synthesis import DEFAULT_TEMPERATURE, check_sampling, synthesise
from mmhvae.io.files import write_csv_atomic, write_text_atomic
from mmhvae.io.layouts import SubjectFiles, discover_subjects
from mmhvae.io.subjects import Subject, load_subject, read_every_subject_first
from mmhvae.modalities import subset_label
from mmhvae.model_file import LoadedModel, load_model_file
from mmhvae.preprocessing.masks import foreground_mask

log = logging.getLogger(__name__)

BRASYN_PERCENTILES = (0.5, 99.5)
METRICS = ("psnr", "ssim", "ssim_tumour", "ssim_healthy")
CSV_FIELDS = ("subject", "method", "missing", "inputs", *METRICS)
ANY = "any"


def brasyn_normalise(volume: np.ndarray) -> np.ndarray:
    """BraSyn's normalisation of one volume: clipped to its 0.5th-99.5th percentiles (the lower one at least 0),
    rescaled to [0, 1]; a constant volume becomes 0."""
    low, high = (float(v) for v in np.percentile(volume, BRASYN_PERCENTILES))
    low = max(low, 0.0)
    if not high > low:
        return np.zeros(volume.shape, np.float32)
    return ((np.clip(volume, low, high) - low) / (high - low)).astype(np.float32)


def mean_slice_ssim(prediction: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """The mean over the axial slices that hold `region` of the 2D SSIM inside it (NaN where no window fits)."""
    values = [masked_ssim(prediction[..., k], truth[..., k], region[..., k], data_range=1.0, black=0.0)
              for k in range(region.shape[2]) if region[..., k].any()]
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def score_case(prediction: np.ndarray, truth: np.ndarray, brain: np.ndarray, tumour: np.ndarray | None) -> dict:
    """PSNR and SSIM of a synthesis against the acquired image after BraSyn's normalisation, inside the brain;
    SSIM also in the tumour and in the rest of the brain when there are tumour labels."""
    prediction, truth = brasyn_normalise(prediction), brasyn_normalise(truth)
    scores = {"psnr": masked_psnr(prediction, truth, brain, data_range=1.0),
              "ssim": mean_slice_ssim(prediction, truth, brain), "ssim_tumour": math.nan, "ssim_healthy": math.nan}
    if tumour is not None and (brain & tumour).any():
        scores["ssim_tumour"] = mean_slice_ssim(prediction, truth, brain & tumour)
        scores["ssim_healthy"] = mean_slice_ssim(prediction, truth, brain & ~tumour)
    return scores


def brain_of(subject: Subject) -> np.ndarray:
    """The subject's mask.nii.gz, else the union of its images' foregrounds."""
    if subject.mask is not None:
        return subject.mask.array > 0.5
    return np.logical_or.reduce([foreground_mask(v.array) for v in subject.volumes.values()])


def synthesised(loaded: LoadedModel, subject: Subject, inputs: tuple[str, ...], missing: str, temperature: float,
                samples: int) -> np.ndarray:
    """The synthesis of `missing` from `inputs` alone, as harmonised intensities on the subject's grid."""
    prepared = prepare_for_model(subject, loaded, inputs)
    (result,) = synthesise(loaded.model, prepared, [inputs], temperature, samples)
    return on_subject_grid(result.mean[loaded.modalities.index(missing)], prepared.fov, subject.reference.shape)


def subject_rows(loaded: LoadedModel, name: str, subject: Subject, temperature: float, samples: int) -> list[dict]:
    """One row per modality of the model: that modality missing, synthesised from all the others."""
    brain = brain_of(subject)
    tumour = None if subject.seg is None else subject.seg.array > 0.5
    rows = []
    for missing in loaded.modalities:
        inputs = tuple(k for k in loaded.modalities if k != missing)
        prediction = synthesised(loaded, subject, inputs, missing, temperature, samples)
        scores = score_case(prediction, subject.volumes[missing].array, brain, tumour)
        rows.append({"subject": subject.name, "method": name, "missing": missing, "inputs": subset_label(inputs),
                     **scores})
    return rows


def complete_subjects(subjects: Sequence[SubjectFiles], loaded: LoadedModel, data: Path) -> list[SubjectFiles]:
    """The subjects with every modality of the model (the others cannot be scored on every case), said."""
    complete = [f for f in subjects if all(k in f.modalities for k in loaded.modalities)]
    if not complete:
        raise InputError(f"no subject has every modality of the model ({', '.join(loaded.modalities)}), which the "
                         "BraSyn protocol drops one at a time", data)
    if len(complete) < len(subjects):
        log.info(f"note: {len(subjects) - len(complete)} of {len(subjects)} subjects lack a modality of the model and "
                 "are left out of the BraSyn protocol")
    return complete


def cell(values: Sequence[float], digits: int) -> str:
    """'mean (sd)' over subjects; '-' where no subject has a value."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "-"
    sd = sample_sd(finite)
    return f"{np.mean(finite):.{digits}f} ({sd:.{digits}f})" if math.isfinite(sd) else f"{np.mean(finite):.{digits}f}"


def per_subject_means(rows: Sequence[dict]) -> list[dict]:
    """Each subject's scores averaged over its cases: the 'any' rows, one per subject."""
    means = []
    for subject in dict.fromkeys(r["subject"] for r in rows):
        mine = [r for r in rows if r["subject"] == subject]
        means.append({m: float(np.nanmean([r[m] for r in mine])) if any(math.isfinite(r[m]) for r in mine)
                      else math.nan for m in METRICS} | {"subject": subject})
    return means


def brasyn_table(rows: Sequence[dict], modalities: Sequence[str]) -> str:
    """Markdown: per method and missing modality, mean (sd) over subjects of every metric; then 'any'."""
    header = ["method", "missing", "inputs", "subjects", "PSNR (dB)", "SSIM brain", "SSIM tumour", "SSIM rest"]
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        groups = [(m, [r for r in mine if r["missing"] == m]) for m in modalities]
        groups.append((ANY, per_subject_means(mine)))
        for missing, members in groups:
            if not members:
                continue
            inputs = members[0].get("inputs", "the others") if missing != ANY else "the others"
            table.append([method, missing, inputs, len(members)]
                         + [cell([r[m] for r in members], 2 if m == "psnr" else 3) for m in METRICS])
    return "\n".join(markdown_lines(header, table))


def brasyn_text(rows: Sequence[dict], modalities: Sequence[str], temperature: float, samples: int) -> str:
    drawn = "one sample" if samples == 1 else f"the mean of {samples} samples"
    return ("# BraSyn protocol: each subject missing one sequence\n\n"
            f"Every subject with all of {', '.join(modalities)} is scored once per sequence, that sequence "
            f"synthesised from the others (temperature {temperature:g}, {drawn}) and compared with the acquired one. "
            "Both volumes are normalised as BraSyn does (clipped to their own 0.5th-99.5th percentiles, scaled to "
            "[0, 1]); PSNR over the brain's voxels; SSIM the mean over axial slices of the 2D SSIM inside the brain, "
            "the tumour (seg > 0) and the rest of the brain. Mean (sample sd) over subjects; 'any': each subject "
            "averaged over its cases first. Every subject's scores: brasyn.csv.\n\n"
            + brasyn_table(rows, modalities) + "\n")


def evaluate_brasyn(model: str | Path | Sequence[str | Path], data: str | Path, out: str | Path,
                    temperature: float = DEFAULT_TEMPERATURE, samples: int = 1, overwrite: bool = False) -> list[dict]:
    """The BraSyn protocol of `mmhvae evaluate`: OUT/brasyn.csv (every subject and case) and OUT/brasyn.md."""
    check_sampling(temperature, samples)
    out, data = Path(out), Path(data)
    refuse_to_overwrite(out, overwrite, exists=(out / "brasyn.csv").exists(),
                        problem="the output folder already has BraSyn results")
    paths = [Path(model)] if isinstance(model, (str, Path)) else [Path(m) for m in model]
    models = [load_model_file(p) for p in paths]
    for path, other in zip(paths[1:], models[1:]):
        if other.modalities != models[0].modalities:
            raise InputError(f"models compared in one BraSyn table need the same modalities as {paths[0]}", path)
    names = method_names(paths, models)
    subjects = complete_subjects(discover_subjects(data), models[0], data)
    read_every_subject_first(subjects, lambda files: load_subject(files, models[0].modalities))
    rows = []
    for files in subjects:
        for name, loaded in zip(names, models):
            subject = load_subject(files, loaded.modalities)
            rows += subject_rows(loaded, name, subject, temperature, samples)
        log.info(f"{files.name}: {len(models[0].modalities)} BraSyn cases per model")
    write_csv_atomic(out / "brasyn.csv", rows, CSV_FIELDS)
    write_text_atomic(out / "brasyn.md", brasyn_text(rows, models[0].modalities, temperature, samples))
    log.info(f"wrote {out / 'brasyn.csv'} and {out / 'brasyn.md'}")
    return rows

"""The embedded default data: a seeded multimodal brain-tumour phantom cohort, in "ultrasound space" or as BraTS.

`simulate_cohort` draws which modalities each subject has (the missingness of `--missing`), simulates every
subject (subject.py: ultrasound, MR, harmonised targets, labels, in the canonical layout; brats.py: the four MR
sequences on BraTS's grid and names, `layout="brats"`) and records the cohort in OUT/cohort.json: its seed,
settings, and each subject's parameters.

Determinism: every random draw comes from a Generator seeded by (seed, subject index, purpose), so a
subject is the same whatever the cohort size, the first index, or the other modalities requested.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mmhvae import __version__
from mmhvae.errors import InputError
from mmhvae.io.files import write_text_atomic
from mmhvae.modalities import ULTRASOUND, parse_modality_list
from mmhvae.phantom.anatomy import AnatomyVariation, TumourVariation
from mmhvae.phantom.brats import (
    BRATS_FIELD_MM,
    BRATS_MODALITIES,
    brats_slices,
    check_brats_modalities,
    simulate_brats_subject,
    write_brats_subject,
)
from mmhvae.phantom.geometry import PAPER_FIELD_MM, ProbePlacement
from mmhvae.phantom.mr_physics import NOMINAL_PROTOCOLS, TISSUE_RELAXATION, SiteVariation
from mmhvae.phantom.preview import write_preview
from mmhvae.phantom.subject import SEG_LABELS, TISSUE_LABELS, simulate_subject, subject_rng, write_subject
from mmhvae.phantom.us_sim import ACOUSTIC_TISSUES, US_ENGINES, get_probe

DEFAULT_MODALITIES: tuple[str, ...] = ("us", "t2", "t1c", "flair")
REMIND_SUBJECTS = 104  # Section 4.1: 98 ceT1, 66 T2 and 21 FLAIR among 104 patients; iUS for all
REMIND_COUNTS: dict[str, int] = {"us": 104, "t1c": 98, "t2": 66, "flair": 21}
MISSING_PRESETS = ("remind", "complete")
LAYOUTS = ("canonical", "brats")
def default_slices(size: int) -> int:
    """Sweep length: three quarters of the in-plane field (48 slices at size 64, 144 at 192)."""
    return max(1, int(round(0.75 * size)))


# ----------------------------------------------------------------------------------------------------
# Missingness
# ----------------------------------------------------------------------------------------------------


def parse_missing(text: str, modalities: Sequence[str]) -> dict[str, float]:
    """Presence probability per modality: 'remind', 'complete', or 'MOD=P,...' (unlisted modalities: 1).

    'remind' uses the ReMIND counts of Section 4.1 (us always; t1c 98/104, t2 66/104, flair 21/104); MR
    keys that ReMIND lacks (t1, pd) are always present.
    """
    modalities = parse_modality_list(modalities)
    spec = text.strip().lower()
    if spec == "complete":
        return {key: 1.0 for key in modalities}
    if spec == "remind":
        return {key: REMIND_COUNTS.get(key, REMIND_SUBJECTS) / REMIND_SUBJECTS for key in modalities}
    probabilities = {key: 1.0 for key in modalities}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--missing '{text}': expected remind, complete or MOD=P,... (e.g. t2=0.6,flair=0.2)")
        key = parse_modality_list([name])[0]
        if key not in probabilities:
            raise InputError(f"--missing '{text}': '{key}' is not among the simulated modalities {list(modalities)}")
        try:
            p = float(value)
        except ValueError:
            raise InputError(f"--missing '{text}': '{value}' is not a probability") from None
        if not 0.0 <= p <= 1.0:
            raise InputError(f"--missing '{text}': the probability of {key} must lie in [0, 1]")
        probabilities[key] = p
    if all(p == 0.0 for p in probabilities.values()):
        raise InputError(f"--missing '{text}': every modality would be missing")
    return probabilities


def draw_present(probabilities: dict[str, float], rng: np.random.Generator) -> tuple[str, ...]:
    """Which modalities a subject has: independent draws; never none (then the likeliest one is kept)."""
    keys = list(probabilities)
    draws = rng.random(len(keys))  # one draw per key, always, so the stream does not depend on outcomes
    present = tuple(k for k, u in zip(keys, draws) if u < probabilities[k])
    if not present:
        present = (max(keys, key=lambda k: probabilities[k]),)
    return present


# ----------------------------------------------------------------------------------------------------
# The cohort
# ----------------------------------------------------------------------------------------------------


def _check_settings(subjects: int, size: int, slices: int, us_engine: str, us_probe: str, first_index: int) -> None:
    if subjects < 1:
        raise InputError(f"--subjects must be at least 1 (got {subjects})")
    if size < 16:
        raise InputError(f"--size must be at least 16 (got {size})")
    if slices < 1:
        raise InputError(f"--slices must be at least 1 (got {slices})")
    if first_index < 0:
        raise InputError(f"the first subject index must be >= 0 (got {first_index})")
    if us_engine not in US_ENGINES:
        raise InputError(f"unknown --us-engine '{us_engine}'; choose one of {', '.join(US_ENGINES)}")
    get_probe(us_probe)


def layout_settings(layout: str, modalities: Sequence[str] | None, missing: str | None, size: int,
                    slices: int | None) -> tuple[tuple[str, ...], str, int]:
    """The modalities, missingness and sweep (or axial) slices of a layout, where the caller left them out."""
    if layout not in LAYOUTS:
        raise InputError(f"unknown --layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
    brats = layout == "brats"
    modalities = parse_modality_list(modalities or (BRATS_MODALITIES if brats else DEFAULT_MODALITIES))
    if brats:
        check_brats_modalities(modalities)
    if slices is None:
        slices = brats_slices(size) if brats else default_slices(size)
    return modalities, missing or ("complete" if brats else "remind"), int(slices)


def simulate_cohort(
    out: Path,
    subjects: int = 20,
    modalities: Sequence[str] | None = None,
    size: int = 64,
    slices: int | None = None,
    seed: int = 0,
    missing: str | None = None,
    us_engine: str = "fast",
    us_probe: str = "default",
    preview: Path | None = None,
    first_index: int = 0,
    field_mm: float = PAPER_FIELD_MM,
    layout: str = "canonical",
) -> dict:
    """Write a phantom cohort to `out` and return the content of its cohort.json.

    `layout` "canonical" (ultrasound and MR in the ultrasound's space, subject.py; default modalities
    us,t2,t1c,flair with ReMIND-like missingness) or "brats" (the four MR sequences as BraTS stores them,
    brats.py; default t1,t1c,t2,flair, every subject complete)."""
    out = Path(out)
    modalities, missing, slices = layout_settings(layout, modalities, missing, size, slices)
    _check_settings(subjects, size, slices, us_engine, us_probe, first_index)
    probabilities = parse_missing(missing, modalities)
    if us_engine == "simus" and ULTRASOUND in modalities:
        try:
            import pymust  # noqa: F401
        except ImportError:
            raise InputError(
                "--us-engine simus needs the optional package pymust (pip install pymust==0.1.9)") from None

    records = []
    for index in range(first_index, first_index + subjects):
        present = draw_present(probabilities, subject_rng(seed, index, "missing"))
        if layout == "brats":
            phantom = simulate_brats_subject(index, seed, modalities, present, size, slices)
            write_brats_subject(out / phantom.name, phantom)
        else:
            phantom = simulate_subject(index, seed, modalities, present, size, slices, us_engine, us_probe, field_mm)
            write_subject(out / phantom.name, phantom)
        records.append(phantom.summary)
    cohort = {
        "generator": f"mmhvae {__version__} mmhvae.phantom.cohort",
        **({"layout": layout} if layout != "canonical" else {}),  # canonical cohort.json files stay as they were
        "seed": int(seed),
        "first_index": int(first_index),
        "subjects": int(subjects),
        "modalities": list(modalities),
        "missing": missing,
        "presence_probability": {k: round(v, 6) for k, v in probabilities.items()},
        "parameters": _parameters(size, slices, BRATS_FIELD_MM[0] if layout == "brats" else field_mm, us_engine,
                                  us_probe, layout),
        "subject_records": records,
    }
    write_text_atomic(out / "cohort.json", json.dumps(cohort, indent=1) + "\n")
    if preview is not None:
        richest = max(records, key=lambda r: (len(r["present"]), -r["index"]))
        write_preview(out / richest["name"], Path(preview))
    return cohort


def _parameters(size: int, slices: int, field_mm: float, us_engine: str, us_probe: str, layout: str) -> dict:
    def plain(value):
        return json.loads(json.dumps(asdict(value), default=float))

    axes = (["towards the left", "towards the back", "towards the top (axial slices)"] if layout == "brats"
            else ["lateral (fan plane)", "axial depth (fan plane)", "sweep"])
    return {
        "size": size,
        "slices": slices,
        "spacing_mm": round(field_mm / size, 6),
        "field_mm": field_mm,
        "axes": axes,
        "us_engine": us_engine,
        "us_probe": plain(get_probe(us_probe)),
        "probe_placement": plain(ProbePlacement()),
        "anatomy": plain(AnatomyVariation()),
        "tumour": plain(TumourVariation()),
        "mr_site": plain(SiteVariation()),
        "mr_protocols": {k: asdict(p) for k, p in NOMINAL_PROTOCOLS.items()},
        "mr_tissues": {k: asdict(t) for k, t in TISSUE_RELAXATION.items()},
        "us_tissues": {k: asdict(t) for k, t in ACOUSTIC_TISSUES.items()},
        "seg_labels": SEG_LABELS,
        "tissue_labels": TISSUE_LABELS,
    }

"""MR image formation for the phantom: relaxation times, signal equations, site effects and noise.

A voxel's signal is the fraction-weighted sum of its tissues' signals (partial volume), each from the
closed-form steady-state equations of a spin echo or an inversion recovery sequence. Gadolinium shortens T1
where the blood-brain barrier is absent (enhancing tumour rim, choroid plexus). Site effects (protocol
jitter, bias field, scale, gamma, noise) apply to the non-harmonised INPUT images only.

Relaxation times at 3 T, rounded, from:
- Wansapura et al., JMRI 1999 (GM/WM T1 and T2 at 3 T), Stanisz et al., MRM 2005 (T1/T2 at 3 T),
  Bojorquez et al., MRI 2017 (review of normal 3 T relaxation times, also fat/scalp);
- Lu et al., JMRI 2005 (CSF T1 about 4.2 s at 3 T);
- proton density as water content relative to CSF (WM about 0.7, GM about 0.8; e.g. Neeb et al. 2006);
- tumour, oedema and necrosis: values inside the ranges reported by quantitative MRI of gliomas
  (longer T1 and T2 than normal tissue; e.g. Blystad et al. 2017). These are our choices, not measurements.
- gadolinium: r1 about 3.7 /mM/s at 3 T (Rohrer et al., Invest Radiol 2005); tissue concentrations invented.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from mmhvae.errors import InputError
from mmhvae.phantom.anatomy import RandomField
from mmhvae.phantom.tissues import ALL_TISSUES

MR_MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair", "pd")


@dataclass(frozen=True)
class Relaxation:
    """Proton density (relative to CSF), T1 and T2 in ms, and gadolinium concentration after injection (mM)."""

    pd: float
    t1_ms: float
    t2_ms: float
    gadolinium_mm: float = 0.0


TISSUE_RELAXATION: dict[str, Relaxation] = {
    "csf_sulcal": Relaxation(1.00, 4300.0, 1800.0),
    "csf_ventricle": Relaxation(1.00, 4300.0, 1800.0),
    "gm": Relaxation(0.80, 1600.0, 95.0),
    "wm": Relaxation(0.69, 950.0, 75.0),
    "choroid": Relaxation(0.85, 1400.0, 100.0, gadolinium_mm=0.3),  # no blood-brain barrier: enhances
    "falx": Relaxation(0.50, 1000.0, 50.0),  # dura: fibrous, short T2 (invented)
    "bone": Relaxation(0.05, 300.0, 1.0),  # cortical bone: almost no visible signal
    "scalp": Relaxation(0.90, 380.0, 130.0),  # fat-dominated (Bojorquez 2017: fat T1 about 370 ms)
    "necrosis": Relaxation(0.90, 2600.0, 400.0),
    "enhancing": Relaxation(0.85, 1800.0, 140.0, gadolinium_mm=0.5),
    "nonenhancing": Relaxation(0.85, 1700.0, 160.0),
    "oedema": Relaxation(0.85, 1500.0, 150.0),
}
GADOLINIUM_R1_PER_MM_PER_S = 3.7


@dataclass(frozen=True)
class Protocol:
    """A sequence's timing in ms; `ti_ms` set means inversion recovery (FLAIR), else spin echo."""

    tr_ms: float
    te_ms: float
    ti_ms: float | None = None
    contrast_agent: bool = False


# Nominal clinical 3 T protocols (typical values; FLAIR TI nulls CSF: TI = T1 ln(2 / (1 + exp(-TR/T1)))).
NOMINAL_PROTOCOLS: dict[str, Protocol] = {
    "t1": Protocol(tr_ms=500.0, te_ms=10.0),
    "t1c": Protocol(tr_ms=500.0, te_ms=10.0, contrast_agent=True),
    "t2": Protocol(tr_ms=5000.0, te_ms=100.0),
    "pd": Protocol(tr_ms=3000.0, te_ms=15.0),
    "flair": Protocol(tr_ms=9000.0, te_ms=120.0, ti_ms=2480.0),
}


def spin_echo(pd, t1, t2, tr, te):
    """Spin echo magnitude: PD (1 - exp(-TR/T1)) exp(-TE/T2) (TE << TR)."""
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


def inversion_recovery(pd, t1, t2, tr, te, ti):
    """Inversion recovery spin echo, magnitude: PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)."""
    return pd * np.abs(1.0 - 2.0 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)


def effective_t1_ms(tissue: Relaxation, contrast_agent: bool) -> float:
    """T1 after gadolinium: R1 = R1_0 + r1 [Gd] (fast-exchange model)."""
    if not contrast_agent or tissue.gadolinium_mm == 0.0:
        return tissue.t1_ms
    r1_per_ms = 1.0 / tissue.t1_ms + GADOLINIUM_R1_PER_MM_PER_S * tissue.gadolinium_mm / 1000.0
    return 1.0 / r1_per_ms


def tissue_signal(tissue: Relaxation, protocol: Protocol) -> float:
    t1 = effective_t1_ms(tissue, protocol.contrast_agent)
    if protocol.ti_ms is None:
        return float(spin_echo(tissue.pd, t1, tissue.t2_ms, protocol.tr_ms, protocol.te_ms))
    return float(inversion_recovery(tissue.pd, t1, tissue.t2_ms, protocol.tr_ms, protocol.te_ms, protocol.ti_ms))


def tissue_signals(protocol: Protocol, tissues: tuple[str, ...] = ALL_TISSUES) -> np.ndarray:
    """Signal of each tissue (in `tissues` order) for a protocol."""
    return np.array([tissue_signal(TISSUE_RELAXATION[name], protocol) for name in tissues], np.float32)


def mix_signal(fractions: np.ndarray, protocol: Protocol) -> np.ndarray:
    """Partial-volume signal: sum over tissues of fraction x tissue signal. fractions: (tissues, ...)."""
    signals = tissue_signals(protocol)
    return np.tensordot(signals, fractions, axes=(0, 0)).astype(np.float32)


def partial_volume_blur(image: np.ndarray, voxel_mm: float, fwhm_mm: float) -> np.ndarray:
    """The acquisition's point-spread function (Gaussian, FWHM in mm), skipped when below a third of a voxel."""
    sigma = fwhm_mm / 2.355 / voxel_mm
    return ndimage.gaussian_filter(image, sigma, truncate=3.0) if sigma >= 0.33 else image


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise (Rician; Rayleigh where the signal is 0)."""
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.hypot(real, imaginary).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Site effects (non-harmonised inputs)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteVariation:
    """Per subject and modality scanner/protocol variation. Ranges from docs/phantom.md; scale/gamma/SNR ours."""

    protocol_jitter: float = 0.15  # TR and TE each x U(1 - j, 1 + j); TI see nulling_error
    # FLAIR's TI is not drawn on its own: a scanner picks the TI that nulls CSF at the chosen TR ("inversion
    # recovery (FLAIR, CSF nulled)"), imperfectly, so the null TI is scaled by U(1 - e, 1 + e). With the TR
    # jitter, TI stays within +-15 % of nominal (2240-2690 ms); CSF is 7 % of WM (median), 19 % at most.
    nulling_error: float = 0.03
    bias_amplitude: tuple[float, float] = (0.10, 0.30)  # peak deviation of the multiplicative bias field
    bias_nodes: int = 4  # control points per axis: the field varies over the whole FOV, not locally
    scale: tuple[float, float] = (200.0, 3000.0)  # arbitrary scanner units, log-uniform
    gamma: tuple[float, float] = (0.8, 1.25)  # log-uniform
    snr: tuple[float, float] = (15.0, 40.0)  # white-matter signal / noise sigma
    target_snr: float = 100.0  # the harmonised targets: nominal protocol, low noise
    psf_fwhm_mm: float = 1.0  # acquisition resolution (1 mm isotropic 3D sequences)


@dataclass(frozen=True)
class SiteEffects:
    protocol: Protocol
    bias_amplitude: float
    bias_field: RandomField
    scale: float
    gamma: float
    snr: float

    def summary(self) -> dict:
        p = self.protocol
        return {"tr_ms": round(float(p.tr_ms), 1), "te_ms": round(float(p.te_ms), 2),
                "ti_ms": None if p.ti_ms is None else round(float(p.ti_ms), 1),
                "bias": round(self.bias_amplitude, 3), "scale": round(self.scale, 2),
                "gamma": round(self.gamma, 3), "snr": round(self.snr, 2)}


def csf_null_inversion_time_ms(tr_ms: float) -> float:
    """The TI that nulls CSF after a repetition time TR: T1 ln(2 / (1 + exp(-TR/T1)))."""
    t1 = TISSUE_RELAXATION["csf_ventricle"].t1_ms
    return float(t1 * np.log(2.0 / (1.0 + np.exp(-tr_ms / t1))))


def jitter_protocol(protocol: Protocol, rng: np.random.Generator, amount: float, nulling_error: float = 0.0
                    ) -> Protocol:
    """A site's protocol: TR and TE jittered; an inversion recovery's TI nulls CSF at that TR, up to nulling_error."""
    factors = rng.uniform(1.0 - amount, 1.0 + amount, 3)
    tr_ms = protocol.tr_ms * factors[0]
    ti_ms = None
    if protocol.ti_ms is not None:
        # The third draw, rescaled to U(-1, 1), so every modality keeps the same draws in the same order.
        spread = (factors[2] - 1.0) / amount if amount > 0 else 0.0
        ti_ms = csf_null_inversion_time_ms(tr_ms) * (1.0 + nulling_error * spread)
    return replace(protocol, tr_ms=tr_ms, te_ms=protocol.te_ms * factors[1], ti_ms=ti_ms)


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def draw_site_effects(modality: str, rng: np.random.Generator, variation: SiteVariation = SiteVariation()
                      ) -> SiteEffects:
    """The same number of draws for every modality, so streams do not depend on which one it is."""
    protocol = jitter_protocol(nominal_protocol(modality), rng, variation.protocol_jitter, variation.nulling_error)
    bias = float(rng.uniform(*variation.bias_amplitude))
    field = RandomField.draw(rng, 1, variation.bias_nodes, np.zeros(3), 1.0)
    return SiteEffects(protocol, bias, field, _log_uniform(rng, variation.scale), _log_uniform(rng, variation.gamma),
                       float(rng.uniform(*variation.snr)))


def nominal_protocol(modality: str) -> Protocol:
    if modality not in NOMINAL_PROTOCOLS:
        raise InputError(f"no MR protocol for modality '{modality}'; MR modalities: {', '.join(MR_MODALITIES)}")
    return NOMINAL_PROTOCOLS[modality]


def bias_field(shape: tuple[int, ...], field: RandomField, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field 1 + a f, with f scaled to peak |f| = 1 over the volume."""
    coarse = [np.linspace(0.0, 1.0, max(2, n // 4)) - 0.5 for n in shape]
    points = np.stack(np.meshgrid(*coarse, indexing="ij"), axis=-1).reshape(-1, 3)
    values = field(points)[0].reshape([len(c) for c in coarse])
    values = values / max(float(np.abs(values).max()), 1e-6)
    zoomed = ndimage.zoom(values, [n / len(c) for n, c in zip(shape, coarse)], order=1, grid_mode=True,
                          mode="nearest")
    return (1.0 + amplitude * zoomed[: shape[0], : shape[1], : shape[2]]).astype(np.float32)


def white_matter_signal(protocol: Protocol) -> float:
    return tissue_signal(TISSUE_RELAXATION["wm"], protocol)


def nominal_image(fractions: np.ndarray, modality: str, voxel_mm: float, rng: np.random.Generator,
                  variation: SiteVariation = SiteVariation()) -> np.ndarray:
    """The harmonised-target physics: nominal protocol, acquisition PSF, low Rician noise (not yet normalised)."""
    protocol = nominal_protocol(modality)
    image = partial_volume_blur(mix_signal(fractions, protocol), voxel_mm, variation.psf_fwhm_mm)
    return add_rician_noise(image, white_matter_signal(protocol) / variation.target_snr, rng)


def site_image(fractions: np.ndarray, site: SiteEffects, voxel_mm: float, rng: np.random.Generator,
               variation: SiteVariation = SiteVariation()) -> np.ndarray:
    """A non-harmonised input: jittered protocol, bias field, Rician noise, then gamma and global scale."""
    image = partial_volume_blur(mix_signal(fractions, site.protocol), voxel_mm, variation.psf_fwhm_mm)
    image = image * bias_field(image.shape, site.bias_field, site.bias_amplitude)
    image = add_rician_noise(image, white_matter_signal(site.protocol) / site.snr, rng)
    # Gamma acts on intensities relative to a robust maximum, so it bends contrast, not units.
    reference = max(float(np.percentile(image, 99.9)), 1e-6)
    return (site.scale * np.power(image / reference, site.gamma)).astype(np.float32)

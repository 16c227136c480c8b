"""Intra-operative B-mode ultrasound for the phantom: a fast convolution model in beam coordinates.

The echo is simulated on a polar grid (angle x depth x sweep slice) whose origin is the probe's virtual
apex, then scan-converted to the Cartesian "ultrasound space" grid:

1. tissue fractions -> echogenicity (scatterer amplitude), acoustic impedance and attenuation maps;
2. fully developed speckle: complex Gaussian scatterers x echogenicity, plus specular reflections where the
   impedance changes along the beam (scaled by how squarely the boundary faces the beam);
3. convolution with a Gaussian point-spread function whose lateral width follows a focused beam
   (narrowest at the focus, widening with depth); axial and elevational widths fixed;
4. envelope detection; two-way frequency-dependent attenuation and transmission losses at impedance steps
   (shadowing behind strong reflectors such as bone), partial time-gain compensation, electronic noise;
5. log compression to the probe's dynamic range, and scan conversion (linear interpolation).

Acoustic properties: speed 1540 m/s assumed everywhere; impedances and attenuation from Duck, "Physical
properties of tissue" (1990) and Azhari, "Basics of biomedical ultrasound for engineers" (2010), rounded.
Echogenicities (relative scattering strengths) are our choices, set to reproduce the look of brain iUS:
anechoic CSF, hyperechoic sulci, falx, choroid plexus and solid tumour, hypoechoic necrosis.

`engine="simus"` replaces steps 2-4 by pymust's SIMUS (a physics-based simulator, optional dependency).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mmhvae.errors import InputError
from mmhvae.phantom.tissues import ALL_TISSUES

SPEED_OF_SOUND_MM_PER_US = 1.54


@dataclass(frozen=True)
class AcousticTissue:
    impedance_mrayl: float
    attenuation_db_cm_mhz: float
    echogenicity: float  # relative amplitude of diffuse scattering (ours)


ACOUSTIC_TISSUES: dict[str, AcousticTissue] = {
    "csf_sulcal": AcousticTissue(1.51, 0.002, 0.9),  # sulcus = CSF + pia-arachnoid + vessels: bright lines
    "csf_ventricle": AcousticTissue(1.51, 0.002, 0.01),  # anechoic
    "gm": AcousticTissue(1.60, 0.60, 0.12),
    "wm": AcousticTissue(1.62, 0.70, 0.16),
    "choroid": AcousticTissue(1.65, 0.80, 1.00),
    "falx": AcousticTissue(1.70, 1.00, 1.30),
    "bone": AcousticTissue(7.80, 20.0, 1.50),
    "scalp": AcousticTissue(1.45, 0.60, 0.50),
    "necrosis": AcousticTissue(1.56, 0.30, 0.04),
    "enhancing": AcousticTissue(1.65, 0.90, 0.80),
    "nonenhancing": AcousticTissue(1.64, 0.80, 0.60),
    "oedema": AcousticTissue(1.60, 0.50, 0.28),
}
COUPLING_SALINE = AcousticTissue(1.50, 0.002, 0.005)  # fills the craniotomy around the probe


@dataclass(frozen=True)
class Probe:
    """A transducer and its scanner settings. Values typical of neurosurgical probes; our choices."""

    name: str
    centre_mhz: float
    convex_radius_mm: float  # 0 for a phased array (point apex)
    axial_fwhm_mm: float  # about two cycles of the pulse
    lateral_fwhm_focus_mm: float  # about wavelength x F-number
    focus_mm: float
    depth_of_field_mm: float  # Rayleigh-like length over which the beam widens by sqrt(2)
    elevation_fwhm_mm: float
    dynamic_range_db: float
    tgc_fraction: float  # share of the expected brain attenuation that time-gain compensation restores
    specular_gain: float
    noise_db: float  # electronic noise relative to brain speckle at the surface


PROBES: dict[str, Probe] = {
    "default": Probe("default", 7.0, 10.0, 0.40, 0.8, 35.0, 25.0, 1.5, 55.0, 0.85, 4.0, -65.0),
    # A second probe for domain-shift experiments: lower frequency, coarser PSF, deeper focus, phased array,
    # narrower dynamic range and weaker time-gain compensation.
    "alt": Probe("alt", 4.0, 2.0, 0.70, 1.4, 50.0, 35.0, 2.5, 45.0, 0.7, 4.0, -55.0),
}
US_ENGINES = ("fast", "simus")


def get_probe(name: str) -> Probe:
    if name not in PROBES:
        raise InputError(f"unknown ultrasound probe '{name}'; choose one of {', '.join(PROBES)}")
    return PROBES[name]


@dataclass(frozen=True)
class FanGeometry:
    """The sector scanned by each sweep slice, in the slice's own mm coordinates.

    The virtual apex of slice k lies at lateral 0, axial `apex_axial_mm[k]`; beams leave it at angles within
    +-opening/2 from the axial direction; samples run from `convex_radius_mm` (the probe face) to
    `convex_radius_mm + depth_mm`.
    """

    opening_deg: float
    depth_mm: float
    convex_radius_mm: float
    apex_axial_mm: np.ndarray  # one per slice

    @property
    def half_opening(self) -> float:
        return np.deg2rad(self.opening_deg) / 2.0

    def polar_axes(self, sample_mm: float) -> tuple[np.ndarray, np.ndarray]:
        """Beam angles (rad) and radii (mm from the virtual apex) of the polar grid."""
        mid_radius = self.convex_radius_mm + self.depth_mm / 2.0
        n_angles = max(16, int(np.ceil(2 * self.half_opening * mid_radius / (1.5 * sample_mm))) + 1)
        n_radii = max(16, int(np.ceil(self.depth_mm / sample_mm)) + 1)
        angles = np.linspace(-self.half_opening, self.half_opening, n_angles)
        radii = self.convex_radius_mm + np.linspace(0.0, self.depth_mm, n_radii)
        return angles, radii

    def polar_points(self, angles: np.ndarray, radii: np.ndarray, sweep_mm: np.ndarray) -> np.ndarray:
        """(n_angles, n_radii, n_slices, 3) points (lateral, axial, sweep) in mm."""
        lateral = np.sin(angles)[:, None, None] * radii[None, :, None]
        axial = np.cos(angles)[:, None, None] * radii[None, :, None] + self.apex_axial_mm[None, None, :]
        shape = (len(angles), len(radii), len(sweep_mm))
        return np.stack(np.broadcast_arrays(lateral, axial, np.broadcast_to(sweep_mm, shape)), axis=-1)

    def to_polar(self, lateral_mm: np.ndarray, axial_mm: np.ndarray, slice_index: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Angle, radius of Cartesian slice points, and whether they lie in the fan."""
        axial_from_apex = axial_mm - self.apex_axial_mm[slice_index]
        radius = np.hypot(lateral_mm, axial_from_apex)
        angle = np.arctan2(lateral_mm, axial_from_apex)
        inside = (np.abs(angle) <= self.half_opening) & (radius >= self.convex_radius_mm) & (
            radius <= self.convex_radius_mm + self.depth_mm)
        return angle, radius, inside


@dataclass
class Echo:
    """Polar-grid results: envelope before log compression (after gains), and the B-mode in [0, 1]."""

    envelope: np.ndarray
    bmode: np.ndarray


def _property_map(fractions: np.ndarray, attribute: str) -> np.ndarray:
    """Fraction-weighted tissue property; the rest of each voxel is coupling saline."""
    values = np.array([getattr(ACOUSTIC_TISSUES[t], attribute) for t in ALL_TISSUES], np.float32)
    covered = fractions.sum(axis=0)
    return (np.tensordot(values, fractions, axes=(0, 0))
            + np.clip(1.0 - covered, 0.0, 1.0) * getattr(COUPLING_SALINE, attribute)).astype(np.float32)


def _lateral_sigma_samples(probe: Probe, angles: np.ndarray, radii: np.ndarray, sample_floor: float
                           ) -> np.ndarray:
    """Per-radius Gaussian sigma along the angle axis (in angle samples) of a focused beam."""
    depth = radii - radii[0]
    width_mm = probe.lateral_fwhm_focus_mm * np.sqrt(1.0 + ((depth - probe.focus_mm) / probe.depth_of_field_mm) ** 2)
    step_rad = angles[1] - angles[0]
    return np.maximum(width_mm / 2.355 / (np.maximum(radii, 1.0) * step_rad), sample_floor)


def _blur_angle_by_depth_bands(field: np.ndarray, sigmas: np.ndarray, bands: int = 6) -> np.ndarray:
    """Filter along axis 0 with a sigma that depends on axis 1 (depth), one Gaussian per depth band."""
    out = np.empty_like(field)
    edges = np.linspace(0, field.shape[1], bands + 1).astype(int)
    for start, stop in zip(edges[:-1], edges[1:]):
        sigma = float(np.mean(sigmas[start:stop]))
        # Filter a margin around the band so its edges see their neighbours, then keep the band.
        lo, hi = max(0, start - 1), min(field.shape[1], stop + 1)
        block = ndimage.gaussian_filter1d(field[:, lo:hi], sigma, axis=0, mode="reflect", truncate=3.0)
        out[:, start:stop] = block[:, start - lo: start - lo + stop - start]
    return out


def _psf_blur(field: np.ndarray, probe: Probe, angles: np.ndarray, radii: np.ndarray, slice_mm: float
              ) -> np.ndarray:
    """Convolve a complex (angle, radius, slice) field with the probe's PSF, unit gain for white noise."""
    sample_mm = radii[1] - radii[0]
    floor = 0.5  # keep the speckle band-limited at the grid's own sampling
    lateral = _lateral_sigma_samples(probe, angles, radii, floor)
    axial = max(probe.axial_fwhm_mm / 2.355 / sample_mm, floor)
    elevation = max(probe.elevation_fwhm_mm / 2.355 / slice_mm, floor) if field.shape[2] > 1 else 0.0
    out = np.empty_like(field)
    for part in ("real", "imag"):
        values = getattr(field, part).astype(np.float32)
        values = ndimage.gaussian_filter1d(values, axial, axis=1, truncate=3.0)
        if elevation > 0:
            values = ndimage.gaussian_filter1d(values, elevation, axis=2, truncate=3.0)
        values = _blur_angle_by_depth_bands(values, lateral)
        if part == "real":
            out.real = values
        else:
            out.imag = values
    # White noise through a Gaussian of sigma s (samples) keeps a variance of 1 / (2 sqrt(pi) s) per axis.
    gain = np.sqrt(2.0 * np.sqrt(np.pi) * axial) * np.sqrt(2.0 * np.sqrt(np.pi) * lateral)[None, :, None]
    if elevation > 0:
        gain = gain * np.sqrt(2.0 * np.sqrt(np.pi) * elevation)
    return out * gain.astype(np.float32)


def _specular_reflection(impedance: np.ndarray, radii: np.ndarray, angles: np.ndarray, slice_mm: float
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Signed reflection amplitude of boundaries facing the beam, and the step reflection coefficients.

    R = dZ / (2 Z) along the beam (per mm, times 1 mm); the share of the impedance gradient that points
    along the beam is the cosine of the incidence angle, squared to favour boundaries facing the probe.
    """
    sample_mm = radii[1] - radii[0]
    smooth = ndimage.gaussian_filter(impedance, (0.7, 0.7, 0.0 if impedance.shape[2] == 1 else 0.7))
    along = np.gradient(smooth, sample_mm, axis=1)
    across = np.gradient(smooth, angles[1] - angles[0], axis=0) / np.maximum(radii, 1.0)[None, :, None]
    elevation = np.gradient(smooth, slice_mm, axis=2) if impedance.shape[2] > 1 else 0.0
    magnitude = np.sqrt(along**2 + across**2 + elevation**2) + 1e-9
    facing = (np.abs(along) / magnitude) ** 2
    specular = along / (2.0 * smooth) * 1.0 * facing
    steps = np.diff(impedance, axis=1) / (impedance[:, 1:] + impedance[:, :-1])
    return specular.astype(np.float32), steps.astype(np.float32)


def simulate_echo(fractions: np.ndarray, angles: np.ndarray, radii: np.ndarray, slice_mm: float,
                  probe: Probe, rng: np.random.Generator) -> Echo:
    """B-mode on the polar grid from tissue fractions of shape (len(ALL_TISSUES), angles, radii, slices)."""
    echogenicity = _property_map(fractions, "echogenicity")
    impedance = _property_map(fractions, "impedance_mrayl")
    attenuation = _property_map(fractions, "attenuation_db_cm_mhz")
    sample_mm = radii[1] - radii[0]
    specular, steps = _specular_reflection(impedance, radii, angles, slice_mm)

    scatterers = (rng.standard_normal(echogenicity.shape, dtype=np.float32)
                  + 1j * rng.standard_normal(echogenicity.shape, dtype=np.float32)) / np.sqrt(2.0)
    field = _psf_blur((scatterers * echogenicity + probe.specular_gain * specular).astype(np.complex64),
                      probe, angles, radii, slice_mm)

    # Two-way losses up to each depth: attenuation (dB) and transmission through impedance steps.
    one_way_db = np.cumsum(attenuation, axis=1) * probe.centre_mhz * sample_mm / 10.0
    transmission = np.cumprod(1.0 - steps**2, axis=1)
    transmission = np.concatenate([np.ones_like(transmission[:, :1]), transmission], axis=1)
    depth_cm = (radii - radii[0]) / 10.0
    tgc_db = probe.tgc_fraction * 2.0 * ACOUSTIC_TISSUES["wm"].attenuation_db_cm_mhz * probe.centre_mhz * depth_cm
    received = field * (10.0 ** (-2.0 * one_way_db / 20.0) * transmission)
    noise_sigma = 10.0 ** (probe.noise_db / 20.0) * ACOUSTIC_TISSUES["wm"].echogenicity
    received += noise_sigma * (rng.standard_normal(field.shape, dtype=np.float32)
                               + 1j * rng.standard_normal(field.shape, dtype=np.float32)) / np.sqrt(2.0)
    envelope = np.abs(received) * 10.0 ** (tgc_db[None, :, None] / 20.0)
    return Echo(envelope.astype(np.float32), log_compress(envelope, probe.dynamic_range_db))


def log_compress(envelope: np.ndarray, dynamic_range_db: float, reference_percentile: float = 99.5) -> np.ndarray:
    """20 log10(envelope / reference), mapped from [-DR, 0] dB to [0, 1] (the sonographer's gain: a percentile)."""
    reference = max(float(np.percentile(envelope, reference_percentile)), 1e-12)
    decibels = 20.0 * np.log10(np.maximum(envelope, 1e-12) / reference)
    return np.clip(1.0 + decibels / dynamic_range_db, 0.0, 1.0).astype(np.float32)


def scan_convert(polar: np.ndarray, geometry: FanGeometry, angles: np.ndarray, radii: np.ndarray,
                 lateral_mm: np.ndarray, axial_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Polar (angle, radius, slice) image -> Cartesian (lateral, axial, slice) image and the fan mask.

    `lateral_mm` and `axial_mm` are the 1D voxel-centre coordinates of the Cartesian slice.
    """
    n_slices = polar.shape[2]
    lateral, axial, index = np.meshgrid(lateral_mm, axial_mm, np.arange(n_slices), indexing="ij")
    angle, radius, inside = geometry.to_polar(lateral, axial, index)
    coordinates = np.stack([
        (angle - angles[0]) / (angles[1] - angles[0]),
        (radius - radii[0]) / (radii[1] - radii[0]),
        index.astype(np.float64),
    ])
    image = ndimage.map_coordinates(polar, coordinates[:, inside], order=1, mode="nearest")
    out = np.zeros(lateral.shape, np.float32)
    out[inside] = image
    return out, inside


def simulate_echo_simus(fractions: np.ndarray, angles: np.ndarray, radii: np.ndarray, slice_mm: float,
                        probe: Probe, rng: np.random.Generator, scatterers_per_slice: int = 5000) -> Echo:
    """Each sweep slice with pymust's SIMUS (Garcia, MUST toolbox): point scatterers drawn uniformly over the
    fan with amplitudes from the echogenicity map, one circular wave from a small convex array (zero transmit
    delays), delay-and-sum beamforming onto the polar grid, envelope, log compression.

    Seconds per slice. Attenuation is SIMUS's own (uniform 0.6 dB/cm/MHz), so the enhancement behind CSF
    and the shadowing behind bone of the fast engine are absent; specular reflection is not modelled.
    """
    try:
        import pymust
    except ImportError:
        raise InputError("--us-engine simus needs the optional package pymust (pip install pymust==0.1.9)") from None
    echogenicity = _property_map(fractions, "echogenicity")
    radius_m = max(probe.convex_radius_mm, 2.0) / 1000.0
    opening = float(angles[-1] - angles[0])
    param = pymust.getparam("C5-2v")
    param.fc = probe.centre_mhz * 1e6
    param.fs = 4.0 * param.fc
    param.radius = radius_m
    param.Nelements = 64
    param.pitch = radius_m * opening / param.Nelements
    param.width = 0.9 * param.pitch
    param.kerf = 0.1 * param.pitch
    param.bandwidth = 70
    param.attenuation = 0.6
    delays = np.zeros((1, param.Nelements))
    param.TXdelay = delays
    # Probe frame of MUST: origin at the centre of the array surface, z into the tissue (m).
    apex_offset_m = radii[0] / 1000.0 - radius_m
    grid_x = np.sin(angles)[:, None] * radii[None, :] / 1000.0
    grid_z = np.cos(angles)[:, None] * radii[None, :] / 1000.0 - radius_m - apex_offset_m
    envelopes = np.empty(echogenicity.shape, np.float32)
    for k in range(echogenicity.shape[2]):
        a = rng.uniform(angles[0], angles[-1], scatterers_per_slice)
        r = rng.uniform(radii[0], radii[-1], scatterers_per_slice)
        amplitude = ndimage.map_coordinates(
            echogenicity[:, :, k],
            [(a - angles[0]) / (angles[1] - angles[0]), (r - radii[0]) / (radii[1] - radii[0])],
            order=1, mode="nearest")
        x = r * np.sin(a) / 1000.0
        z = r * np.cos(a) / 1000.0 - radius_m - apex_offset_m
        rf = pymust.simus(x, z, amplitude * rng.standard_normal(scatterers_per_slice), delays, param)[0]
        iq = pymust.rf2iq(rf, param)
        das = pymust.dasmtx(iq, grid_x, grid_z, param)
        envelopes[:, :, k] = np.abs((das @ iq.flatten(order="F")).reshape(grid_x.shape, order="F"))
    # Time-gain compensation of SIMUS's attenuation and of the circular wave's spreading (1/r two-way).
    depth_cm = (radii - radii[0]) / 10.0
    tgc_db = probe.tgc_fraction * 2.0 * param.attenuation * probe.centre_mhz * depth_cm
    envelopes *= (10.0 ** (tgc_db / 20.0) * radii / radii[0])[None, :, None].astype(np.float32)
    return Echo(envelopes, log_compress(envelopes, probe.dynamic_range_db))

"""The magnetic phase of a single series, and the induction of any magnetic phase.

``reconstruction.separation: absorption``: where the specimen is one material, its electrostatic
phase sigma V0 t and its absorption -ln a = t / (2 lambda_in) both follow the thickness t, so
phi_e = k (-ln a) with one constant k. The images fix the total phase phi and the amplitude a,
not k: :func:`absorption_split` chooses the k that leaves phi_m = phi - k (-ln a) with the least
total variation, since a thickness step (a rim, an edge) is sharp in phi_e and absent from phi_m.
Where the specimen holds several materials (or diffraction contrast darkens crystals), no one k
holds and the split leaves their difference in phi_m (docs/physics.md, "Magnetic and
electrostatic phase").
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
from scipy import ndimage, optimize

from phasepipe import gauge, metrics, physics

# The fitted amplitude's pixel noise, whose total variation grows with k, would pull k to 0: the
# absorption is denoised first (total variation, this many times its estimated noise). And the
# phase's edges are as sharp as the images transfer them, the denoised absorption's as the
# denoising leaves them: compared pixel by pixel, that mismatch pulls k low too, so k is chosen on
# both maps low-passed at a fraction of the series' resolved frequency (phi_m itself is not
# filtered). Both chosen on the corpus' tuning family without its particles, one material
# (`benchmarks/absorption.py`; docs/physics.md, "Magnetic and electrostatic phase").
ABSORPTION_DENOISING = 2.0
ABSORPTION_BAND = 1 / 8
# The induction is a derivative of phi_m, which amplifies the fit's noise wherever the images
# carry the phase weakly, well inside the band they resolve: the phase is low-passed at this
# fraction of the series' resolved frequency first. Chosen on the corpus' tuning family's pairs
# (`benchmarks/separation.py --family islands`), where the induction's correlation with the truth
# peaks there (docs/physics.md, "Magnetic and electrostatic phase").
INDUCTION_BAND = 1 / 6


def band_sigma_px(band: float, resolved_per_nm: float, pixel_size_nm: float) -> float:
    """The Gaussian sigma (px) of a low-pass at ``band`` times the resolved frequency."""
    return 1 / (2 * np.pi * band * resolved_per_nm * pixel_size_nm)


class Split(NamedTuple):
    """One series' phase split by its absorption (maps with their mean removed)."""

    electrostatic: np.ndarray  # k (-ln a), the absorption denoised
    magnetic: np.ndarray  # the phase less it, with the flattest ramp
    scale: float  # k, rad per unit of -ln a
    ramp: np.ndarray  # (g_y, g_x) rad per px taken from the magnetic phase to make it flattest


def absorption_scale(
    phase: np.ndarray,
    amplitude: np.ndarray,
    smoothing_px: float = 0.0,
    denoising: float = ABSORPTION_DENOISING,
) -> tuple[float, np.ndarray]:
    """(k, -ln a denoised): the k that minimises the total variation of phi - k (-ln a), both maps
    low-passed by a Gaussian of sigma ``smoothing_px`` first (:data:`ABSORPTION_BAND`); k is 0
    where the amplitude is uniform (no thickness to tie the phase to). The phase is made flattest
    first, so that the ramp it holds, which no series measures (:mod:`phasepipe.gauge`), does not
    move k."""
    from skimage.restoration import denoise_tv_chambolle, estimate_sigma

    phase = gauge.without_ramp(phase, gauge.flattest_gradient(phase))
    absorption = -np.log(np.clip(amplitude, 1e-6, None))
    absorption = denoise_tv_chambolle(absorption, weight=denoising * estimate_sigma(absorption))
    low = (lambda a: ndimage.gaussian_filter(a, smoothing_px)) if smoothing_px > 0 else (lambda a: a)
    gy_p, gx_p = np.gradient(low(phase))
    gy_a, gx_a = np.gradient(low(absorption))
    if not np.any(np.hypot(gy_a, gx_a) > 0):
        return 0.0, absorption
    span = np.abs(phase).max() / max(float(np.ptp(absorption)), 1e-12)

    def tv(scale: float) -> float:
        return float(np.sum(np.hypot(gy_p - scale * gy_a, gx_p - scale * gx_a)))

    return float(optimize.minimize_scalar(tv, bounds=(-4 * span, 4 * span), method="bounded").x), absorption


def absorption_split(
    phase: np.ndarray,
    amplitude: np.ndarray,
    smoothing_px: float = 0.0,
    denoising: float = ABSORPTION_DENOISING,
) -> Split:
    """phi_e = k (-ln a) (:func:`absorption_scale`) and phi_m = phase - phi_e with the flattest
    ramp (:mod:`phasepipe.gauge`).

    No series measures the phase's ramp, but the amplitude has no such ambiguity: phi_e keeps the
    ramp of k (-ln a), and phi_m's is chosen, the flattest. (The fit's own choice,
    :func:`phasepipe.gauge.flattest_apart`, gives k (-ln a) the absorption's flattest ramp
    instead, which an illumination brighter on one side does not tilt.)"""
    k, absorption = absorption_scale(phase, amplitude, smoothing_px, denoising)
    electrostatic = k * absorption
    magnetic = phase - electrostatic
    ramp = gauge.flattest_gradient(magnetic)
    magnetic = gauge.without_ramp(magnetic, ramp)
    return Split(electrostatic - electrostatic.mean(), magnetic - magnetic.mean(), k, ramp)


def induction_maps(
    phase_magnetic: np.ndarray,
    pixel_size_nm: float,
    resolved_per_nm: float | None = None,
    band: float = INDUCTION_BAND,
) -> dict[str, np.ndarray]:
    """The in-plane integrated induction (B t, T nm) of a magnetic phase, by the store's names.

    ``resolved_per_nm``: the highest frequency the series resolves (:func:`resolved_per_nm`); the
    phase is first low-passed at ``band`` times it (a Gaussian of sigma 1 / (2 pi band q)), since
    a derivative amplifies the fit's noise where the images carry the phase weakly. The plane that
    best fits the phase is kept out of the filter, so that a uniform induction stays uniform up to
    the field's edges.
    """
    phase = np.asarray(phase_magnetic, float)
    if resolved_per_nm is not None:
        plane = gauge.best_plane(phase)
        sigma_px = band_sigma_px(band, resolved_per_nm, pixel_size_nm)
        phase = plane + ndimage.gaussian_filter(phase - plane, sigma_px, mode="reflect")
    bx, by = physics.induction_from_phase(phase, pixel_size_nm)
    return {"induction_x_tnm": bx.astype(np.float32), "induction_y_tnm": by.astype(np.float32)}


def series_resolution(defocus_nominal_nm, beam_divergence_mrad: float, pixel_size_nm: float) -> float:
    """The highest frequency (cycles/nm) a series' images resolve: that of its image nearest focus
    besides focus itself (:func:`phasepipe.physics.resolved_frequency`)."""
    nominal = np.abs(np.asarray(defocus_nominal_nm, float))
    return physics.resolved_frequency(beam_divergence_mrad * 1e-3, float(nominal[nominal > 0].min()), pixel_size_nm)


def resolved_per_nm(ds) -> float:
    """:func:`series_resolution` of a reconstructed store."""
    beam_divergence_mrad = json.loads(ds.attrs["microscope"])["beam_divergence_mrad"]
    return series_resolution(ds["defocus_nominal_nm"].values, beam_divergence_mrad, float(ds.attrs["pixel_size_nm"]))


def induction_accuracy(bx, by, true_bx, true_by, border_px: int = metrics.BORDER_PX) -> float:
    """acc of an induction map: the correlation of its two components, taken together, with the
    true ones over the interior (:func:`metrics.interior`)."""
    recovered = np.concatenate([metrics.interior(np.asarray(b), border_px).ravel() for b in (bx, by)])
    true = np.concatenate([metrics.interior(np.asarray(b), border_px).ravel() for b in (true_bx, true_by)])
    return float(np.corrcoef(recovered, true)[0, 1])


def angular_error_deg(bx, by, true_bx, true_by, inside: np.ndarray) -> float:
    """Median angle (degrees) between recovered and true induction over ``inside``."""
    angle = np.angle((bx + 1j * by) * np.conj(true_bx + 1j * true_by), deg=True)
    return float(np.median(np.abs(angle[inside])))


def absorption_dataset(ds):
    """A reconstructed Dataset with its absorption split (``separation: absorption``): the
    separated phases, the induction, and the attribute ``separation`` with the constant k. The
    total phase takes the split's ramp (:class:`Split`), and the drift the shifts that ramp
    makes (:func:`phasepipe.gauge.ramp_shift_px`), so that phase and drift still predict the same
    images."""
    pixel_size_nm, resolved = float(ds.attrs["pixel_size_nm"]), resolved_per_nm(ds)
    split = absorption_split(
        ds["phase"].values.astype(float),
        ds["amplitude"].values,
        band_sigma_px(ABSORPTION_BAND, resolved, pixel_size_nm),
    )
    voltage_v = json.loads(ds.attrs["microscope"])["voltage_kv"] * 1e3
    shifts = gauge.ramp_shift_px(split.ramp, ds["defocus_nm"].values, pixel_size_nm, physics.wavelength_nm(voltage_v))
    shifts -= shifts[int(np.argmin(np.abs(ds["defocus_nominal_nm"].values)))]
    maps = {
        "phase": split.electrostatic + split.magnetic,
        "phase_magnetic": split.magnetic,
        "phase_electrostatic": split.electrostatic,
    }
    maps.update(induction_maps(split.magnetic, pixel_size_nm, resolved))
    out = ds.assign({name: (("y", "x"), np.asarray(value, np.float32)) for name, value in maps.items()})
    out = out.assign(shift_y_px=ds["shift_y_px"] + shifts[:, 0], shift_x_px=ds["shift_x_px"] + shifts[:, 1])
    return out.assign_attrs(separation=json.dumps({"relation": "absorption", "scale_rad": round(split.scale, 6)}))

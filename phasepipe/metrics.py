"""Figures of merit of a reconstruction against a known phase (docs/physics.md)."""

from __future__ import annotations

import numpy as np

from phasepipe.gauge import best_plane
from phasepipe.registration import correlation_shift, shift_image

BORDER_PX = 32


def interior(a: np.ndarray, border_px: int = BORDER_PX) -> np.ndarray:
    """``a`` without ``border_px`` on each side (less on a small map, so that its middle half stays)."""
    b = min(border_px, (min(a.shape) - 2) // 4)
    return a[b : a.shape[0] - b, b : a.shape[1] - b] if b > 0 else a


def register_to(reference: np.ndarray, moving: np.ndarray, max_shift_px: int = 4) -> np.ndarray:
    """``moving`` shifted (periodically, sub-pixel) onto ``reference``.

    The shift maximises the signed cross-correlation within ``max_shift_px``: a reconstruction is
    compared with the truth up to a small residual offset, and a wider search would let a
    periodic texture's negative match itself half a period away.
    """
    shift = correlation_shift(reference, moving, max_shift_px)
    return shift_image(np.asarray(moving, np.float64), shift)


def phase_accuracy(recovered: np.ndarray, truth: np.ndarray, border_px: int = BORDER_PX) -> float:
    """acc: Pearson correlation over the interior after sub-pixel registration."""
    aligned = register_to(truth, recovered)
    a = interior(aligned, border_px).ravel()
    b = interior(truth, border_px).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def plane_free_accuracy(recovered: np.ndarray, truth: np.ndarray, border_px: int = BORDER_PX) -> float:
    """acc after the plane that best fits the difference is taken from ``recovered``: what a
    through-focus series can tell, since no series measures a phase ramp (a beam tilt moves the
    images as drift in proportion to defocus does; docs/physics.md, "Degeneracies")."""
    aligned = interior(register_to(truth, recovered), border_px)
    b = interior(truth, border_px)
    a = aligned - best_plane(aligned - b)
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def phase_rmse(recovered: np.ndarray, truth: np.ndarray, border_px: int = BORDER_PX) -> float:
    """RMS phase error in rad over the interior, after removing the mean difference."""
    diff = interior(register_to(truth, recovered) - truth, border_px)
    return float(np.sqrt(np.mean((diff - diff.mean()) ** 2)))


def defocus_errors(fitted_nm: np.ndarray, true_nm: np.ndarray, focus_tol_nm: float = 1.0) -> np.ndarray:
    """Relative defocus error per image; absolute error in nm for an in-focus image."""
    fitted_nm = np.asarray(fitted_nm, float)
    true_nm = np.asarray(true_nm, float)
    err = np.abs(fitted_nm - true_nm)
    in_focus = np.abs(true_nm) < focus_tol_nm
    return np.where(in_focus, err, err / np.where(in_focus, 1.0, np.abs(true_nm)))


def octave_bands(shape: tuple[int, int], pixel_size_nm: float, octaves: int) -> list[tuple[float, float]]:
    """(q_low, q_high] in cycles per nm of ``octaves`` octaves, from Nyquist down; the last reaches 0."""
    nyquist = 1 / (2 * pixel_size_nm)
    bands = [(nyquist / 2 ** (k + 1), nyquist / 2**k) for k in range(octaves)]
    bands[-1] = (0.0, bands[-1][1])
    return bands


def band_errors(
    recovered: np.ndarray, truth: np.ndarray, pixel_size_nm: float, octaves: int = 6, border_px: int = BORDER_PX
) -> list[float]:
    """The phase error per octave of spatial frequency, relative to the truth's own content there:
    sqrt(sum |F[recovered - truth]|^2 / sum |F[truth]|^2) over the octave, on the registered
    interior (Hann-windowed, as the interior is not periodic). Octaves as :func:`octave_bands`."""
    diff = interior(register_to(truth, recovered) - truth, border_px)
    ref = interior(truth, border_px)
    window = np.outer(np.hanning(diff.shape[0]), np.hanning(diff.shape[1]))
    power = [np.abs(np.fft.fft2((a - a.mean()) * window)) ** 2 for a in (diff, ref)]
    qy, qx = (np.fft.fftfreq(n, pixel_size_nm) for n in diff.shape)
    q = np.hypot(qy[:, None], qx[None, :])
    errors = []
    for low, high in octave_bands(diff.shape, pixel_size_nm, octaves):
        band = (q > low) & (q <= high)
        errors.append(float(np.sqrt(power[0][band].sum() / max(power[1][band].sum(), 1e-30))))
    return errors

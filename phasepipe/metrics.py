"""Figures of merit of a reconstruction against a known phase (docs/physics.md)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from phasepipe.align import correlation_shift

BORDER_PX = 32


def _interior(a: np.ndarray, border_px: int) -> np.ndarray:
    b = min(border_px, (min(a.shape) - 2) // 4)
    return a[b : a.shape[0] - b, b : a.shape[1] - b] if b > 0 else a


def register_to(reference: np.ndarray, moving: np.ndarray, max_shift_px: int = 4) -> np.ndarray:
    """``moving`` shifted (periodically, sub-pixel) onto ``reference``.

    The shift maximises the signed cross-correlation within ``max_shift_px``: a reconstruction is
    compared with the truth up to a small residual offset, and a wider search would let a
    periodic texture's negative match itself half a period away.
    """
    shift = correlation_shift(reference, moving, max_shift_px)
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(moving), -shift)).real


def phase_accuracy(recovered: np.ndarray, truth: np.ndarray, border_px: int = BORDER_PX) -> float:
    """acc: Pearson correlation over the interior after sub-pixel registration."""
    aligned = register_to(truth, recovered)
    a = _interior(aligned, border_px).ravel()
    b = _interior(truth, border_px).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def phase_rmse(recovered: np.ndarray, truth: np.ndarray, border_px: int = BORDER_PX) -> float:
    """RMS phase error in rad over the interior, after removing the mean difference."""
    diff = _interior(register_to(truth, recovered) - truth, border_px)
    return float(np.sqrt(np.mean((diff - diff.mean()) ** 2)))


def defocus_errors(fitted_nm: np.ndarray, true_nm: np.ndarray, focus_tol_nm: float = 1.0) -> np.ndarray:
    """Relative defocus error per image; absolute error in nm for an in-focus image."""
    fitted_nm = np.asarray(fitted_nm, float)
    true_nm = np.asarray(true_nm, float)
    err = np.abs(fitted_nm - true_nm)
    in_focus = np.abs(true_nm) < focus_tol_nm
    return np.where(in_focus, err, err / np.where(in_focus, 1.0, np.abs(true_nm)))

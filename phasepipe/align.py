"""Drift alignment of a through-focus series.

Each image is registered to its neighbour in defocus towards the reference image (the one nearest
focus), since neighbours look most alike, on band-passed images (small features such as particles
and edges, not the broad magnetic contrast that inverts with the sign of defocus). The shift is
the peak of the signed cross-correlation within a bounded window, refined to sub-pixel by a
parabola. A link whose correlation after registration is below LOW_CONFIDENCE is not applied and
is left to the reconstruction's ``shifts`` refinement. Lorentz deflection moves features between
defocus levels, so these registrations are biased by up to about 1 px (docs/physics.md).
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr
from scipy import ndimage
from skimage.filters import window

log = logging.getLogger(__name__)

LOW_CONFIDENCE = 0.65
MAX_SHIFT_PX = 8  # largest drift searched between neighbouring images


def _prepared(image: np.ndarray, band_px: tuple[float, float] = (1.0, 4.0)) -> np.ndarray:
    """Band-passed (difference of Gaussians) and windowed: what the cross-correlation compares.

    The band keeps small, sharp features (particles, edges, defects), which look alike at every
    defocus, and drops the broad magnetic contrast, which inverts between under- and overfocus.
    """
    norm = image / image.mean()
    band = ndimage.gaussian_filter(norm, band_px[0]) - ndimage.gaussian_filter(norm, band_px[1])
    return band * window("hann", image.shape)


def correlation_shift(reference: np.ndarray, moving: np.ndarray, max_shift_px: int) -> np.ndarray:
    """Where ``moving``'s content sits relative to ``reference`` (y, x px), to sub-pixel precision.

    The peak of the signed, periodic cross-correlation within +-``max_shift_px`` (a bounded
    search: periodic textures match themselves a period away), refined by a parabola through the
    peak and its neighbours.
    """
    cc = np.fft.ifft2(np.fft.fft2(moving) * np.conj(np.fft.fft2(reference))).real
    offsets = np.arange(-max_shift_px, max_shift_px + 1)
    window = cc[np.ix_(offsets % cc.shape[0], offsets % cc.shape[1])]
    peak = np.unravel_index(np.argmax(window), window.shape)
    shift = np.zeros(2)
    for axis, p in enumerate(peak):
        frac = 0.0
        if 0 < p < len(offsets) - 1:
            line = window[p - 1 : p + 2, peak[1]] if axis == 0 else window[peak[0], p - 1 : p + 2]
            denom = line[0] - 2 * line[1] + line[2]
            frac = 0.5 * (line[0] - line[2]) / denom if denom < 0 else 0.0
        shift[axis] = offsets[p] + frac
    return shift


def register_pair(reference: np.ndarray, moving: np.ndarray, max_shift_px: int) -> tuple[np.ndarray, float]:
    """Drift of ``moving`` relative to ``reference`` (y, x px) and a confidence in [-1, 1].

    The confidence is the normalised correlation of the band-passed images after registration.
    """
    ref = _prepared(reference)
    mov = _prepared(moving)
    shift = correlation_shift(ref, mov, max_shift_px)
    moved = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(mov), -shift)).real
    confidence = float(np.corrcoef(ref.ravel(), moved.ravel())[0, 1])
    return shift, confidence


def series_shifts(
    images: np.ndarray, defocus_nm: np.ndarray, max_shift_px: int = MAX_SHIFT_PX
) -> tuple[np.ndarray, np.ndarray]:
    """Drift (N, 2) of every image relative to the reference, and each registration's confidence.

    Every image is registered to its neighbour towards the reference (the image nearest focus)
    in defocus, since neighbours look most alike, and the steps are accumulated. A link whose
    confidence is below :data:`LOW_CONFIDENCE` is not trusted: its step is set to zero, with a
    warning, and left to the reconstruction's shift refinement. Returned shifts say where each
    image's content sits relative to the reference, so ``-shift`` aligns it.
    """
    df = np.asarray(defocus_nm, float)
    reference = int(np.argmin(np.abs(df)))
    shifts = np.zeros((len(images), 2))
    confidence = np.ones(len(images))
    for side in (df < df[reference], df > df[reference]):
        chain = [reference, *np.where(side)[0][np.argsort(np.abs(df[side] - df[reference]))]]
        for inner, outer in zip(chain[:-1], chain[1:], strict=False):
            step, confidence[outer] = register_pair(images[inner], images[outer], max_shift_px)
            if confidence[outer] < LOW_CONFIDENCE:
                log.warning(
                    "image %d: registration confidence %.2f is low; its drift is left to the reconstruction",
                    outer,
                    confidence[outer],
                )
                step = np.zeros(2)
            shifts[outer] = shifts[inner] + step
    return shifts, confidence


def apply_shifts(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Move every image by ``-shift`` (Fourier shift: exact for band-limited, periodic fields)."""
    out = np.empty_like(images)
    for k, (image, shift) in enumerate(zip(images, shifts, strict=True)):
        out[k] = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(image), -shift)).real
    return out


def align_dataset(ds: xr.Dataset) -> xr.Dataset:
    """The aligned series: intensities moved onto the reference, with the drift of every image."""
    images = ds["intensity"].values
    shifts, confidence = series_shifts(images, ds["defocus_nominal_nm"].values)
    aligned = ds.copy()
    aligned["intensity"] = (("image", "y", "x"), apply_shifts(images, shifts).astype(np.float32))
    aligned["shift_y_px"] = (("image",), shifts[:, 0])
    aligned["shift_x_px"] = (("image",), shifts[:, 1])
    aligned["registration_confidence"] = (("image",), confidence)
    low = [int(k) for k in np.where(confidence < LOW_CONFIDENCE)[0]]
    aligned.attrs["alignment_warning"] = (
        f"low registration confidence for image(s) {low}: check the alignment" if low else ""
    )
    return aligned

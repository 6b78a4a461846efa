"""Where one image's content sits relative to another's: sign-invariant, sub-pixel registration of a
pair of Lorentz images (:mod:`phasepipe.align` solves a series from such pairs).

Contrast changes sign with defocus: phase contrast transfers as sin(chi), chi = pi lambda df q^2, so
between under- and overfocus (and between spatial frequencies on either side of a zero of the
contrast transfer) the Fourier components of the same feature flip sign, while absorption contrast
keeps its sign. A plain cross-correlation then locks onto the wrong features.

The registration here is sign-invariant per spatial frequency. With ``C(q) = F[moving] conj(F[ref])``
the cross-power spectrum, a drift ``d`` makes ``C = |C| s(q) exp(-2 pi i q d)`` with ``s = +-1``
(contrast kept or inverted at that frequency). Squaring removes the sign:
``C^2 / |C| = |C| exp(-4 pi i q d)``, whose inverse transform peaks at ``2 d``, whatever mix of kept
and inverted contrast the two images hold. The peak is searched within a bounded window (periodic
textures match themselves a period away) and refined to sub-pixel precision by a parabola through
the peak, iterated on the remainder after shifting the moving image back. The confidence of a
registration is the height of that peak relative to the spectrum's total weight:
the fraction of the cross-power consistent with one shift (1: every frequency agrees; noise: ~0).

Squaring costs a periodic specimen (a skyrmion lattice, an array of islands) half its period: the
squared surface repeats with the lattice, so its peaks at ``2 d`` and ``2 d + a`` (a lattice vector)
give drifts ``a / 2`` apart, all equally high, and an under- to overfocus pair registered half a
lattice vector off (docs/physics.md, "Alignment"). What tells them apart is that the sign ``s(q)``
depends on ``|q|`` alone (the transfer is isotropic): at the true drift ``C exp(2 pi i q d)`` is
real with one sign around every ring of ``|q|``, while half a lattice vector off it flips between
reflections of the same ring. So among the squared surface's peaks within ``PEAK_RATIO`` of the
highest, the one whose drift makes the cross-power most coherent ring by ring
(:func:`ring_coherence`) is taken, where it is clearly more coherent than the highest.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import fft, ndimage, signal

if TYPE_CHECKING:
    from phasepipe.align import AlignSettings

MAX_REFINEMENTS = 4  # registrations per pair: the first, then refinements of the remainder
PEAK_RATIO = 0.5  # peaks of the squared surface at least this high (relative) are candidate drifts
MAX_CANDIDATES = 8  # the highest candidates put to the ring coherence
# A candidate replaces the highest peak only when this many times as coherent: where both are
# barely coherent (an in-focus image with little contrast), the small difference is noise.
COHERENCE_GAIN = 1.5


@dataclass(frozen=True)
class Registration:
    """Where ``moving``'s content sits relative to ``reference`` (y, x px), and how sure that is."""

    shift_px: np.ndarray
    confidence: float
    iterations: int = 1  # registrations made (the first and its refinements)


def prepared_spectrum(image: np.ndarray, lowpass_px: float, taper: float) -> np.ndarray:
    """Half spectrum (rfft2) of the mean-normalised, windowed and low-passed image.

    The window (separable Tukey) keeps the field's edges, where drift brings in new content, out
    of the correlation; the low-pass, a Gaussian applied in Fourier space, damps pixel noise. Both
    are applied axis by axis in place: no full-field temporaries on 4k images.
    """
    image = np.asarray(image, dtype=np.float32)
    contrast = image / np.float32(image.mean())
    contrast -= np.float32(1.0)
    contrast *= signal.windows.tukey(image.shape[0], taper).astype(np.float32)[:, None]
    contrast *= signal.windows.tukey(image.shape[1], taper).astype(np.float32)[None, :]
    spectrum = fft.rfft2(contrast, workers=-1)
    if lowpass_px > 0:
        k = -2 * (np.pi * lowpass_px) ** 2
        spectrum *= np.exp(k * fft.fftfreq(image.shape[0]) ** 2).astype(np.float32)[:, None]
        spectrum *= np.exp(k * fft.rfftfreq(image.shape[1]) ** 2).astype(np.float32)[None, :]
    return spectrum


def _parabola_vertex(below: float, at: float, above: float) -> float:
    """Offset (-0.5..0.5) of the vertex of the parabola through three equally spaced samples."""
    curvature = below - 2 * at + above
    return float(np.clip(0.5 * (below - above) / curvature, -0.5, 0.5)) if curvature < 0 else 0.0


def _hermitian_weight(width: int) -> np.ndarray:
    """Per column of a half spectrum (rfft2) of images ``width`` wide: how often it counts in a sum
    over the full spectrum (twice, but the zero and an even width's Nyquist column once)."""
    weight = np.full(width // 2 + 1, 2.0, np.float32)
    weight[0] = 1.0
    if width % 2 == 0:
        weight[-1] = 1.0
    return weight


@functools.lru_cache(maxsize=4)
def _rings(shape: tuple[int, int]) -> np.ndarray:
    """For a half spectrum (rfft2) of ``shape``: every frequency's ring of ``|q|`` (one per
    frequency step of the shorter side), flattened."""
    height, width = shape
    radius = np.hypot(fft.fftfreq(height)[:, None], fft.rfftfreq(width)[None, :]) * min(shape)
    return np.rint(radius).astype(np.intp).ravel()


def ring_coherence(cross: np.ndarray, shape: tuple[int, int], shift_px: np.ndarray) -> float:
    """How much of the cross-power ``cross`` (half spectrum of images of ``shape``) the drift
    ``shift_px`` explains with one contrast sign per ring of ``|q|``: the sum over rings of
    ``|sum Re(C exp(2 pi i q d))|`` over the sum of ``|C|`` (1: every ring coherent; 0: none)."""
    weight = _hermitian_weight(shape[1])
    dy, dx = np.asarray(shift_px, float)
    ramp_y = np.exp(2j * np.pi * dy * fft.fftfreq(shape[0])).astype(cross.dtype)
    ramp_x = np.exp(2j * np.pi * dx * fft.rfftfreq(shape[1])).astype(cross.dtype) * weight
    aligned = (cross * ramp_y[:, None] * ramp_x[None, :]).real
    total = float(np.abs(cross).sum(axis=0) @ weight)
    return float(np.abs(np.bincount(_rings(shape), aligned.ravel())).sum() / total) if total > 0 else 0.0


def _candidate_peaks(box: np.ndarray) -> list[tuple[int, int]]:
    """Local maxima of ``box`` within ``PEAK_RATIO`` of its highest, highest first (at most
    ``MAX_CANDIDATES``)."""
    peaks = (box == ndimage.maximum_filter(box, size=3, mode="constant", cval=-np.inf)) & (
        box >= PEAK_RATIO * box.max()
    )
    ys, xs = np.nonzero(peaks)
    order = np.argsort(box[ys, xs])[::-1][:MAX_CANDIDATES]
    return [(int(ys[k]), int(xs[k])) for k in order]


def register_spectra(
    reference: np.ndarray,
    moving: np.ndarray,
    shape: tuple[int, int],
    max_shift_px: float,
    sign_invariant: bool = True,
) -> Registration:
    """Register two prepared half spectra (see :func:`prepared_spectrum`) of images of ``shape``.

    ``sign_invariant`` squares the cross-power spectrum (module docstring), so that contrast
    inverted at some or all frequencies registers as well as kept contrast, and chooses among the
    squared surface's peaks by their :func:`ring_coherence`; without it, this is the plain
    (signed) cross-correlation.
    """
    cross = moving * np.conj(reference)
    magnitude = np.abs(cross)
    factor = 2 if sign_invariant else 1
    spectrum = cross
    if sign_invariant:
        spectrum = cross * cross
        spectrum /= np.maximum(magnitude, np.finfo(magnitude.dtype).tiny)
    surface = fft.irfft2(spectrum, s=shape, workers=-1)
    # Bounded search: the correlation peak of a drift d sits at factor * d.
    reach = int(np.ceil(factor * max_shift_px))
    offsets = np.arange(-reach, reach + 1)
    box = surface[np.ix_(offsets % shape[0], offsets % shape[1])]
    iy, ix = np.unravel_index(np.argmax(box), box.shape)
    if sign_invariant:
        candidates = _candidate_peaks(box)
        if len(candidates) > 1:
            coherence = [ring_coherence(cross, shape, offsets[[cy, cx]] / factor) for cy, cx in candidates]
            best = int(np.argmax(coherence))
            if coherence[best] >= COHERENCE_GAIN * coherence[0]:
                iy, ix = candidates[best]
    # Sub-pixel: a parabola through the peak and its neighbours on each axis. Its bias vanishes
    # for a peak at a whole pixel, which :func:`register_prepared`'s iteration converges to.
    y, x = offsets[iy] % shape[0], offsets[ix] % shape[1]
    fy = _parabola_vertex(surface[y - 1, x], surface[y, x], surface[(y + 1) % shape[0], x])
    fx = _parabola_vertex(surface[y, x - 1], surface[y, x], surface[y, (x + 1) % shape[1]])
    position = np.array([offsets[iy] + fy, offsets[ix] + fx])
    # Weight of every frequency once (Hermitian twins counted), as the inverse DFT counts it.
    total = float(magnitude.sum(axis=0) @ _hermitian_weight(shape[1]))
    confidence = float(box[iy, ix] * shape[0] * shape[1] / total) if total > 0 else 0.0
    return Registration(shift_px=position / factor, confidence=confidence)


def register_prepared(reference: np.ndarray, moving: np.ndarray, settings: AlignSettings) -> Registration:
    """Drift of ``moving`` relative to the image whose prepared spectrum is ``reference``
    (:func:`prepared_spectrum`), by ``settings``' low-pass, taper and search reach.

    The window weighs both images alike only where their content coincides, so it pulls a
    registration towards zero in proportion to the drift. The estimate is therefore iterated:
    ``moving`` is shifted back by the current estimate (Fourier shift) and the small remainder is
    registered again, until it is below 0.01 px.
    """
    s = settings
    moving = np.asarray(moving, dtype=np.float32)
    shift = np.zeros(2)
    iterations = 0
    while iterations < MAX_REFINEMENTS:
        iterations += 1
        current = moving if not shift.any() else shift_image(moving, shift)
        step = register_spectra(
            reference, prepared_spectrum(current, s.lowpass_px, s.taper), moving.shape, s.max_shift_px
        )
        shift = shift + step.shift_px
        if np.abs(step.shift_px).max() < 0.01:
            break
    return Registration(shift_px=shift, confidence=step.confidence, iterations=iterations)


def correlation_shift(reference: np.ndarray, moving: np.ndarray, max_shift_px: float) -> np.ndarray:
    """Where ``moving`` sits relative to ``reference`` by the plain, signed cross-correlation.

    For images of the same kind (a recovered phase against the true one), where an inverted copy
    must not count as a match. No window: such fields are periodic.
    """
    ref = fft.rfft2(reference - reference.mean())
    mov = fft.rfft2(moving - moving.mean())
    return register_spectra(ref, mov, reference.shape, max_shift_px, sign_invariant=False).shift_px


def shift_image(image: np.ndarray, shift_px) -> np.ndarray:
    """The image moved by ``-shift_px`` (Fourier shift: exact for band-limited, periodic fields).

    The phase ramp is separable: applied axis by axis in place, in the spectrum's own precision.
    """
    spectrum = fft.rfft2(image, workers=-1)
    dy, dx = np.asarray(shift_px, float)
    spectrum *= np.exp(2j * np.pi * dy * fft.fftfreq(image.shape[0])).astype(spectrum.dtype)[:, None]
    spectrum *= np.exp(2j * np.pi * dx * fft.rfftfreq(image.shape[1])).astype(spectrum.dtype)[None, :]
    return fft.irfft2(spectrum, s=image.shape, workers=-1).astype(image.dtype, copy=False)

"""Transport-of-intensity baseline on series with a known answer."""

import numpy as np
import pytest

from phasepipe import physics, tie

PIXEL_NM = 5.0
VOLTAGE_V = 200e3


def island_phase(n: int, corr_px: float, peak_rad: float, seed: int) -> np.ndarray:
    """Smooth random phase on a round island (zero mean, given peak magnitude).

    The phase is flat near the field's edges: no intensity flux crosses them, the boundary
    condition that the mirror-symmetrised TIE solver assumes.
    """
    rng = np.random.default_rng(seed)
    qy, qx = physics.frequency_grid((n, n), 1.0)
    spectrum = np.fft.fft2(rng.standard_normal((n, n))) * np.exp(-2 * (np.pi * corr_px) ** 2 * (qx**2 + qy**2))
    c = np.arange(n) - n / 2 + 0.5
    island = 0.5 * (1 - np.tanh((np.hypot(c[:, None], c[None, :]) - 0.3 * n) / 6))
    phase = np.fft.ifft2(spectrum).real * island
    phase -= phase.mean()
    return peak_rad * phase / np.abs(phase).max()


def weak_phase_series(phase: np.ndarray, defocus: np.ndarray) -> np.ndarray:
    """Noise-free coherent images of a pure phase object (Cs = 0, no envelopes)."""
    qy, qx = physics.frequency_grid(phase.shape, PIXEL_NM)
    lam = physics.wavelength_nm(VOLTAGE_V)
    transfer = physics.transfer_function(qx**2 + qy**2, defocus[:, None, None], lam, 0.0, 0.0, 0.0)
    return physics.image_intensities(np.exp(1j * phase), transfer)


def test_tie_recovers_weak_phase():
    """A pure phase object (0.3 rad peak) imaged at -df, 0, +df (df = 20 um): the default
    (regularised) TIE phase correlates with the truth."""
    phase = island_phase(128, 5.0, 0.3, seed=0)
    defocus = np.array([-2e4, 0.0, 2e4])
    recovered = tie.tie_phase(weak_phase_series(phase, defocus), defocus, PIXEL_NM, VOLTAGE_V)
    assert recovered.shape == phase.shape
    assert abs(recovered.mean()) < 1e-10
    assert np.corrcoef(recovered.ravel(), phase.ravel())[0, 1] > 0.95


def test_unregularised_tie_has_the_right_sign_and_scale():
    """Without regularisation the TIE inversion is exact for a weak phase at small defocus:
    k dI/dz = -laplacian(phi) with k = 2 pi / lambda fixes sign and scale of phi."""
    phase = island_phase(128, 3.0, 0.3, seed=1)
    defocus = np.array([-2e4, 0.0, 2e4])
    recovered = tie.tie_phase(weak_phase_series(phase, defocus), defocus, PIXEL_NM, VOLTAGE_V, qc_cycles=1e-6)
    assert np.corrcoef(recovered.ravel(), phase.ravel())[0, 1] > 0.999
    assert np.polyfit(phase.ravel(), recovered.ravel(), 1)[0] == pytest.approx(1.0, abs=0.02)


def test_intensity_derivative_is_exact_for_linear_series():
    """Images linear in defocus, I = I0 + df D (mean D = 0, so mean normalisation is a no-op):
    the least-squares slope is D for unevenly spaced defocus, and the image nearest focus is returned."""
    rng = np.random.default_rng(1)
    focus = 1 + 0.1 * rng.standard_normal((32, 32))
    focus /= focus.mean()
    slope = 1e-7 * rng.standard_normal((32, 32))
    slope -= slope.mean()
    defocus = np.array([-2e5, -1e4, 3e3, 3e4, 1.5e5])
    images = focus + defocus[:, None, None] * slope

    didz, in_focus = tie.intensity_derivative(images, defocus)
    np.testing.assert_allclose(didz, slope, rtol=0, atol=1e-9 * np.abs(slope).max())
    np.testing.assert_allclose(in_focus, images[2], rtol=1e-12)

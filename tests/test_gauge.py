import numpy as np

from phasepipe import gauge, physics


def _series(phase: np.ndarray, defocus_nm: np.ndarray, shifts_px: np.ndarray | None = None) -> np.ndarray:
    """Coherent images (Cs 1 mm): a tilt's only other effect is on the partial-coherence envelopes."""
    pixel, wavelength = 5.0, physics.wavelength_nm(200e3)
    qy, qx = physics.frequency_grid(phase.shape, pixel)
    transfer = physics.transfer_function(qx**2 + qy**2, defocus_nm[:, None, None], wavelength, 1e6, 0.0, 0.0)
    ramp = None if shifts_px is None else physics.shift_ramp(qy, qx, shifts_px, pixel)
    images = physics.image_intensities(np.exp(1j * phase), transfer, ramp)
    return images / images.mean(axis=(1, 2), keepdims=True)  # as the model compares them


def test_a_phase_ramp_moves_the_images_as_the_drift_it_is_traded_for():
    n = 128
    y, x = np.mgrid[:n, :n].astype(float)
    blob = 1.5 * np.exp(-((y - 60) ** 2 + (x - 70) ** 2) / (2 * 6.0**2))
    gradient = 2 * np.pi * np.array([1.0, -2.0]) / n  # periodic on the grid
    defocus = np.array([-1.6e6, 0.0, 1.6e6])
    tilted = _series(blob + gradient[0] * y + gradient[1] * x, defocus)
    shifts = gauge.ramp_shift_px(gradient, defocus, 5.0, physics.wavelength_nm(200e3))
    assert abs(shifts[2, 1]) > 2.0  # px: a visible move at 1.6 mm
    moved = _series(blob, defocus, shifts)
    wrong_sign = _series(blob, defocus, -shifts)
    assert np.abs(moved - tilted).max() < 1e-6 * np.ptp(tilted)
    assert np.abs(wrong_sign - tilted).max() > 0.3 * np.ptp(tilted)


def test_the_flattest_ramp_flattens_a_tilted_background_and_keeps_the_features():
    n = 96
    y, x = np.mgrid[:n, :n].astype(float)
    features = 2.0 * ((y - 30) ** 2 + (x - 40) ** 2 < 12**2) + 1.0 * ((np.abs(y - 70) < 5) & (np.abs(x - 60) < 20))
    tilted = features + 0.03 * y - 0.02 * x
    gradient = gauge.flattest_gradient(tilted)
    np.testing.assert_allclose(gradient, [0.03, -0.02], atol=1e-4)
    flat = gauge.without_ramp(tilted, gradient)
    residual = flat - features
    assert np.ptp(residual) < 1e-2  # a constant is all that is left

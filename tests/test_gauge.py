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


def _rim_and_domain(n: int = 128) -> tuple[np.ndarray, np.ndarray, float]:
    """(magnetic phase, absorption, its scale): a magnetic slope over a third of the field, an
    electrostatic wedge (a sloped rim, k times the absorption) over the next third, each flat
    elsewhere, so that each part alone is flattest without a ramp but their sum slopes over two
    thirds of the field."""
    x = np.broadcast_to(np.arange(n, dtype=float), (n, n))
    magnetic = 0.05 * np.minimum(x, 45)
    absorption = 0.002 * np.clip(x - 45, 0, 45)
    return magnetic, absorption, 25.0


def test_the_ramp_apart_is_not_tilted_by_the_other_parts_slopes():
    magnetic, absorption, k = _rim_and_domain()
    n = magnetic.shape[0]
    y, x = np.mgrid[:n, :n].astype(float)
    ramp = np.array([0.01, -0.02])
    phase = magnetic + k * absorption + ramp[0] * y + ramp[1] * x
    assert np.abs(gauge.flattest_gradient(phase) - ramp).max() > 0.04  # the total's flattest: the slopes
    np.testing.assert_allclose(gauge.flattest_apart(phase, absorption, k), ramp, atol=1e-4)
    # Without an absorption the choice is the flattest of the total.
    np.testing.assert_array_equal(gauge.flattest_apart(phase, absorption, 0.0), gauge.flattest_gradient(phase))


def test_an_illumination_brighter_on_one_side_leaves_the_ramp_apart_unchanged():
    magnetic, absorption, k = _rim_and_domain()
    n = magnetic.shape[0]
    y, x = np.mgrid[:n, :n].astype(float)
    phase = magnetic + k * absorption
    # 3 % brighter on one side: a plane in -ln a, which the fitted amplitude takes up.
    tilted = absorption - 0.5 * np.log(1 + 0.03 * x / n)
    chosen = gauge.flattest_apart(phase, absorption, k)
    np.testing.assert_allclose(gauge.flattest_apart(phase, tilted - 1e-4 * y, k), chosen, atol=1e-4)
    # Kept in the electrostatic part as it is, the tilt would tilt the phase's ramp by k times it.
    assert np.abs(gauge.flattest_gradient(phase - k * (tilted - 1e-4 * y)) - chosen).max() > 2e-3

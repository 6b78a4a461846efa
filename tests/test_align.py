"""Drift registration: exact on shared features, and never trusting a link it cannot make."""

import numpy as np

from phasepipe import align, physics, simulate


def amplitude_series(shifts_px: np.ndarray, n: int = 96) -> np.ndarray:
    """Images of one absorbing specimen (the same contrast at every defocus), moved by ``shifts_px``."""
    rng = np.random.default_rng(5)
    amplitude = 1 + 0.3 * simulate.smooth_noise(n, 2.0, rng)
    qy, qx = physics.frequency_grid((n, n), 1.0)
    ramp = physics.shift_ramp(qy, qx, shifts_px, 1.0)
    return physics.image_intensities(amplitude.astype(complex), np.ones((len(shifts_px), n, n)), ramp)


def test_correlation_shift_finds_a_fractional_shift():
    """A Fourier-shifted copy is found to within 0.05 px (parabolic peak refinement)."""
    image = amplitude_series(np.zeros((1, 2)))[0]
    moved = amplitude_series(np.array([[2.3, -1.6]]))[0]
    np.testing.assert_allclose(align.correlation_shift(image, moved, 8), [2.3, -1.6], atol=0.05)


def test_series_shifts_recover_known_drift_relative_to_focus():
    """Chained neighbour registrations give each image's drift relative to the in-focus one."""
    truth = np.array([[1.2, -0.7], [0.4, 0.3], [0.0, 0.0], [-0.8, 1.1], [-2.1, 1.9]])
    images = amplitude_series(truth)
    shifts, confidence = align.series_shifts(images, np.array([-1.6e6, -0.8e6, 0, 0.8e6, 1.6e6]))
    np.testing.assert_allclose(shifts, truth, atol=0.1)
    assert confidence.min() > 0.9
    aligned = align.apply_shifts(images, shifts)
    assert np.abs(aligned - aligned[2]).max() < 0.05 * np.abs(images - images[2]).max()


def test_untrusted_link_is_left_at_zero():
    """An image unrelated to its neighbour (confidence below the threshold) gets no shift applied."""
    truth = np.array([[0.0, 0.0], [1.5, 0.5]])
    images = amplitude_series(truth)
    images[1] = 1 + 0.3 * simulate.smooth_noise(96, 2.0, np.random.default_rng(99))
    shifts, confidence = align.series_shifts(images, np.array([0.0, 1.0e6]))
    assert confidence[1] < align.LOW_CONFIDENCE
    np.testing.assert_array_equal(shifts[1], [0.0, 0.0])


def test_registration_search_is_bounded():
    """A periodic texture matches itself a period away; the bounded search stays within max_shift_px."""
    mx, my, _ = simulate.stripes(96, np.random.default_rng(0))
    phase = physics.magnetic_phase(mx, my, 40.0, 1.0, 5.0)
    moved = np.roll(phase, 3, axis=0)
    shift = align.correlation_shift(phase, moved, 4)
    assert np.all(np.abs(shift) <= 4)
    np.testing.assert_allclose(shift, [3, 0], atol=0.1)

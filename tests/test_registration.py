"""Pairwise registration (phasepipe/registration.py): a periodic specimen's under- and overfocus
images registered to their true drift, not half a lattice vector away; the bounded search."""

import numpy as np
import pytest

from phasepipe import align, corpus, physics, registration, simulate

PERIOD_PX = 24.0  # spacing of the lattice's rows; its lattice vectors are 2 / sqrt(3) times longer
HALF_LATTICE_PX = np.array([12.0, 4 * np.sqrt(3)])  # half of the lattice vector (24, 8 sqrt 3) px


def lattice_pair(shift_px, n: int = 128, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Under- and overfocus images (-+0.8 mm, 5 nm pixels, 200 kV) of a hexagonal lattice of phase
    bumps (three cosines 60 degrees apart, 0.3 rad each, a skyrmion lattice's phase), the second
    with its content moved by ``shift_px``, both with ``noise``."""
    y, x = np.mgrid[:n, :n].astype(float)
    angles = np.deg2rad([0, 60, 120])
    phase = 0.3 * sum(np.cos(2 * np.pi * (np.cos(t) * y + np.sin(t) * x) / PERIOD_PX) for t in angles)
    qy, qx = physics.frequency_grid((n, n), 5.0)
    df = np.array([-0.8e6, 0.8e6])
    transfer = physics.transfer_function(
        qx**2 + qy**2, df[:, None, None], physics.wavelength_nm(200e3), 1e6, 1e-5, 500.0
    )
    under, over = physics.image_intensities(np.exp(1j * phase), transfer)
    over = registration.shift_image(over, -np.asarray(shift_px, float))
    rng = np.random.default_rng(seed)
    return tuple(image * (1 + noise * rng.standard_normal(image.shape)) for image in (under, over))


@pytest.mark.parametrize("shift", [(3.2, -2.1), (7.4, 5.3), (-5.5, 1.2)])
def test_a_lattice_registers_across_focus_to_its_drift_not_half_a_lattice_vector_away(shift):
    """Contrast inverted between the two images, and the squared surface's peaks half a lattice
    vector apart all about as high: the ring coherence picks the true drift, within 0.05 px."""
    under, over = lattice_pair(shift)
    np.testing.assert_allclose(align.register_pair(under, over).shift_px, shift, atol=0.05)


def test_the_highest_squared_peak_alone_can_be_half_a_lattice_vector_off(monkeypatch):
    """Without candidates (the highest peak only), the drift (7.4, 5.3) is registered half a
    lattice vector away: what the ring coherence is there to prevent."""
    shift = np.array([7.4, 5.3])
    under, over = lattice_pair(shift)
    monkeypatch.setattr(registration, "PEAK_RATIO", 1.01)
    error = align.register_pair(under, over).shift_px - shift
    assert np.min([np.abs(error - half).max() for half in (HALF_LATTICE_PX, -HALF_LATTICE_PX)]) < 1.0


def test_ring_coherence_is_high_at_the_drift_and_low_half_a_lattice_vector_away():
    """At the true drift every ring of |q| holds one contrast sign (coherence above 0.9); half a
    lattice vector away the reflections of a ring disagree (below 0.4)."""
    shift = np.array([3.2, -2.1])
    under, over = lattice_pair(shift)
    cross = registration.prepared_spectrum(over, 1.0, 0.25) * np.conj(registration.prepared_spectrum(under, 1.0, 0.25))
    assert registration.ring_coherence(cross, under.shape, shift) > 0.9
    for half in (HALF_LATTICE_PX, -HALF_LATTICE_PX, HALF_LATTICE_PX * [1, -1]):
        assert registration.ring_coherence(cross, under.shape, shift + half) < 0.4


def test_an_island_lattice_series_is_aligned_consistently():
    """The corpus' islands without particles, five images at -+0.8 mm, 5 % noise, drift up to 22 px:
    the four defocused images' registered drifts within 0.5 px of the truth (up to a common
    offset, a shift of the object). The highest squared peak alone put the overfocus pair 22 px
    off, half a lattice vector, and the fit that followed reached acc 0.42. (The in-focus image,
    with little contrast, is placed 2.5 px off by its barely coherent pairs.)"""
    case = corpus.Case("islands", 0, 256, 5, 0.8, 0.05, particles=False)
    images, truth = corpus.simulate_case(case)
    nominal = truth["defocus_nominal_nm"].values
    registered = align.series_registration(images, nominal).shift_px
    error = (registered - np.stack([truth["shift_y_px"].values, truth["shift_x_px"].values], axis=1))[nominal != 0]
    assert np.abs(error - error.mean(axis=0)).max() < 0.5


def test_bounded_search_of_the_signed_correlation():
    """A periodic texture matches itself a period away; the bounded search stays within max_shift_px."""
    mx, my, _ = simulate.stripes(96, 96, np.random.default_rng(0))
    phase = physics.magnetic_phase(mx, my, 40.0, 1.0, 5.0)
    shift = registration.correlation_shift(phase, np.roll(phase, 3, axis=0), 4)
    assert np.all(np.abs(shift) <= 4)
    np.testing.assert_allclose(shift, [3, 0], atol=0.02)

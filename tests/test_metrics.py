"""Figures of merit: registration-aware phase accuracy, phase RMSE and defocus errors."""

import numpy as np
import pytest
from scipy import ndimage

from phasepipe import metrics, physics, simulate

N = 96


def vortex_phase(n: int = N) -> np.ndarray:
    """A simulated vortex's true phase: a disk with particles, not periodic in any direction."""
    _, truth = simulate.simulate_series(simulate.SeriesSpec("m", "vortex", size_px=n, seed=3))
    return truth["phase"].values


def stripe_phase(n: int = N) -> np.ndarray:
    """Magnetic phase of periodic stripe domains, m = (f(y), 0): minus it is it shifted by half a period."""
    mx, my, _ = simulate.stripes(n, n, np.random.default_rng(0))
    return physics.magnetic_phase(mx, my, 40.0, 1.0, 5.0)


@pytest.fixture(scope="module")
def truth_phase() -> np.ndarray:
    """The vortex phase, simulated once for the module."""
    return vortex_phase()


@pytest.mark.parametrize("make_phase", [vortex_phase, stripe_phase])
def test_identical_maps_have_unit_accuracy(make_phase):
    """acc of a map with itself is 1."""
    phase = make_phase()
    assert metrics.phase_accuracy(phase, phase, border_px=8) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("make_phase", [vortex_phase, stripe_phase])
@pytest.mark.parametrize("shift", [(3, -2), (-4, 0), (0, 4)])
def test_registration_undoes_a_shift(make_phase, shift):
    """A rolled copy registers back onto the truth: acc stays > 0.999 where unregistered it drops."""
    phase = make_phase()
    moved = np.roll(phase, shift, axis=(0, 1))
    assert metrics.phase_accuracy(moved, phase, border_px=8) > 0.999
    assert np.corrcoef(moved.ravel(), phase.ravel())[0, 1] < 0.99


@pytest.mark.parametrize("make_phase", [vortex_phase, stripe_phase])
def test_negated_map_is_anticorrelated(make_phase):
    """A phase of the wrong sign (a sign error in the convention) must score negative: on periodic
    stripes minus the phase is the phase shifted by half a period, and the registration (limited to
    small residual offsets) must not use that shift to turn the sign error into a good score."""
    phase = make_phase()
    assert metrics.phase_accuracy(-phase, phase, border_px=8) < -0.2


def test_phase_rmse_ignores_a_constant_and_sees_noise(truth_phase):
    """The global phase constant is unobservable: map + c has zero RMSE; added noise of std s has RMSE s."""
    assert metrics.phase_rmse(truth_phase + 1.7, truth_phase, border_px=8) < 1e-10
    noise = 0.05 * np.random.default_rng(0).standard_normal(truth_phase.shape)
    assert metrics.phase_rmse(truth_phase + noise, truth_phase, border_px=8) == pytest.approx(0.05, rel=0.05)


def test_defocus_errors_relative_and_in_focus_absolute():
    """Relative error |fit - true| / |true| for defocused images; nm for the in-focus one."""
    errors = metrics.defocus_errors([-1.5e6, 12.0, 1.62e6], [-1.6e6, 0.0, 1.6e6])
    np.testing.assert_allclose(errors, [0.0625, 12.0, 0.0125], rtol=1e-12)


def test_plane_free_accuracy_forgives_a_ramp_and_nothing_else():
    rng = np.random.default_rng(0)
    truth = 10 * ndimage.gaussian_filter(rng.normal(size=(128, 128)), 4)  # about 0.7 rad rms
    y, x = np.mgrid[:128, :128]
    tilted = truth + 0.02 * y - 0.03 * x
    assert metrics.phase_accuracy(tilted, truth) < 0.9
    assert metrics.plane_free_accuracy(tilted, truth) > 0.999
    noisy = truth + 0.5 * truth.std() * rng.normal(size=truth.shape)
    assert abs(metrics.plane_free_accuracy(noisy, truth) - metrics.phase_accuracy(noisy, truth)) < 0.01

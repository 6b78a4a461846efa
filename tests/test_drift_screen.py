"""The drift checked against the forward model: alternatives from registration, screened by fits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from phasepipe import align, corpus, drift_screen, metrics, optimise, parameters, reconstruct


def test_distinct_drifts_keep_the_registration_first_and_drop_near_copies():
    near = np.full((3, 2), 0.4)  # within DISTINCT_PX of the registration's zeros
    far = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.7]])
    copy_of_far = far + 0.3
    kept = drift_screen.distinct_drifts([near, far, copy_of_far], 3)
    assert len(kept) == 2
    np.testing.assert_array_equal(kept[0], np.zeros((3, 2)))
    np.testing.assert_array_equal(kept[1], far)


def test_nothing_is_fitted_where_the_alternatives_agree(monkeypatch):
    """A weak object, registered well: every image left out gives the same drift, so the screen
    returns the registration's (zeros) without a fit."""
    images, truth = corpus.simulate_case(corpus.Case("weak", 0, 128, 5, 1.6, 0.05))
    nominal = truth["defocus_nominal_nm"].values
    aligned = align.apply_registration(images, align.series_registration(images, nominal))

    def no_fit(*args, **kwargs):
        raise AssertionError("a screening fit ran")

    monkeypatch.setattr(reconstruct, "fit_canvas", no_fit)
    drift = drift_screen.screened_drift(
        aligned, nominal, corpus.PIXEL_NM, parameters.Microscope(), optimise.Settings(), 16
    )
    np.testing.assert_array_equal(drift, np.zeros((5, 2)))


def test_a_fixed_number_of_iterations_caps_the_screening_fits(monkeypatch):
    """With ``reconstruction.iterations: 60`` every screening fit runs 60 iterations, not 400."""
    images, truth = corpus.simulate_case(corpus.Case("elements", 1, 256, 3, 1.6, 0.05))
    nominal = truth["defocus_nominal_nm"].values
    aligned = align.apply_registration(images, align.series_registration(images, nominal))
    assert len(drift_screen.distinct_drifts(align.leave_one_out_drifts(aligned, nominal), 3)) > 1
    lengths = []
    real = reconstruct.fit_canvas

    def recorded(*args, **kwargs):
        lengths.append(args[6].max_iterations)
        return real(*args, **kwargs)

    monkeypatch.setattr(reconstruct, "fit_canvas", recorded)
    settings = optimise.Settings(max_iterations=60, converge=False)
    drift_screen.screened_drift(aligned, nominal, corpus.PIXEL_NM, parameters.Microscope(), settings, 16)
    assert lengths and set(lengths) == {60}


@pytest.mark.integration
def test_a_misregistered_series_of_magnetic_elements_is_recovered():
    """Held-out elements (three images at +-1.6 mm, 5 % noise): the in-focus image's pairs put the
    defocused images 1.8 px (and the pair 3.7 px) off their true drift, and the fit from there reaches
    acc 0.57. Screened, the drift is the one registered without the in-focus image, and acc 0.98."""
    images, truth = corpus.simulate_case(corpus.Case("elements", 1, 256, 3, 1.6, 0.05))
    nominal = truth["defocus_nominal_nm"].values
    registration = align.series_registration(images, nominal)
    true_drift = np.stack([truth["shift_y_px"].values, truth["shift_x_px"].values], axis=1)
    true_drift -= true_drift[1]

    def error_px(drift: np.ndarray) -> float:
        """Largest error of any image, a common shift (a shift of the object) aside."""
        error = drift - true_drift
        return float(np.abs(error - error.mean(axis=0)).max())

    assert error_px(registration.shift_px) > 1.5
    settings = dataclasses.replace(optimise.Settings(), subfield_uncertainty=False, bootstrap_replicates=0)
    result = reconstruct.reconstruct(
        align.apply_registration(images, registration), nominal, corpus.PIXEL_NM, parameters.Microscope(), settings
    )
    assert metrics.phase_accuracy(result.phase, truth["phase"].values) > 0.97
    assert metrics.plane_free_accuracy(result.phase, truth["phase"].values) > 0.99
    drift = reconstruct.total_drift(registration.shift_px, result, nominal)
    # The drift reported holds the fit's ramp choice too, which is a drift in proportion to defocus.
    assert error_px(drift) < error_px(registration.shift_px)

"""The calibration's bias and its dependence on the prior, from refits of the whole series
(phasepipe/bias.py)."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from phasepipe import bias, corpus, optimise, parameters, reconstruct, simulate, uncertainty


def _fitted(scale: float, tv_weight: float = 0.02):
    """A stand-in for a fitted canvas: what prior_sensitivity reads of it."""
    params = parameters.Parameters(
        np.zeros((8, 8)), np.ones((8, 8)), np.array([-1e6, 0.0, 2e6]), parameters.Microscope(), 1
    )
    with torch.no_grad():
        params.defocus_scale.fill_(math.log(scale))
    return SimpleNamespace(params=params, tv_weight=tv_weight)


def test_the_refit_at_half_the_tv_weight_widens_the_calibrations_std_by_its_move(monkeypatch):
    """The series is refitted from the start at half the fitted TV weight; the factor's relative
    move d there joins the std in quadrature, sqrt(s^2 + d^2), and the in-focus image's 0 stays 0."""
    seen = []

    def refit(images, nominal, pixel_size_nm, microscope, settings, margin_px):
        seen.append((settings.tv_weight, settings.bootstrap_replicates, settings.subfield_uncertainty))
        return _fitted(1.02 * 0.97), None

    monkeypatch.setattr(bias, "fit_window", refit)
    fitted = _fitted(1.02)
    std = {"defocus_nm": np.array([0.004 * 1.02e6, 0.0, 0.004 * 2.04e6])}
    half = bias.prior_sensitivity(fitted, None, None, 5.0, None, optimise.Settings(), 32, std)
    assert seen == [(0.01, 0, False)]
    assert half == pytest.approx(1.02 * 0.97)
    relative = std["defocus_nm"][[0, 2]] / np.array([1.02e6, 2.04e6])
    np.testing.assert_allclose(relative, math.hypot(0.004, 0.03), rtol=1e-6)
    assert std["defocus_nm"][1] == 0


def test_a_diverged_refit_at_half_the_tv_weight_leaves_the_std_unknown(monkeypatch):
    def diverge(*args):
        raise optimise.FitDiverged("misfit nan at iteration 3")

    monkeypatch.setattr(bias, "fit_window", diverge)
    std = {"defocus_nm": np.array([4e3, 0.0, 8e3])}
    assert math.isnan(bias.prior_sensitivity(_fitted(1.0), None, None, 5.0, None, optimise.Settings(), 32, std))
    assert np.isnan(std["defocus_nm"][[0, 2]]).all() and std["defocus_nm"][1] == 0


def _canvas(scale: float):
    """A stand-in for a fitted canvas with its model's images (3 x 8 x 8) and noise: what the
    bootstrap reads of it."""
    fitted = _fitted(scale)
    fitted.model, fitted.noise = (lambda params, shifts: torch.ones(3, 8, 8)), 0.05
    return fitted


@pytest.mark.parametrize(("levels", "correction"), [(1, 0.99), (2, 0.99**2 / 0.995)])
def test_the_bootstraps_levels_correct_the_calibration_and_widen_its_std(monkeypatch, levels, correction):
    """A replicate drawn from the fit refits 1 % low (b1); one drawn from that replicate's fit, 0.5 %
    low of it (b2). One level divides the factor by 1 + b1; two by Hall's (1 + b1)^2 / (1 + b2).
    The correction's size joins the std, and the in-focus image's 0 stays 0."""
    refits = []

    def refit(*args):
        refits.append(1.02 * 0.99 * (0.995 if refits else 1.0))
        return _canvas(refits[-1]), None

    monkeypatch.setattr(bias, "fit_window", refit)
    fitted = _canvas(1.02)
    std = {"defocus_nm": np.zeros(3)}
    settings = optimise.Settings(bootstrap_levels=levels)
    factors, second = bias.bootstrap_correction(fitted, np.ones((3, 8, 8)), None, 5.0, None, settings, 0, std)
    np.testing.assert_allclose(factors, [1.02 * 0.99])
    np.testing.assert_allclose(second, [0.995] if levels == 2 else [])
    assert math.exp(fitted.params.defocus_scale.item()) == pytest.approx(1.02 / correction, rel=1e-6)
    defocus = np.abs(fitted.params.defocus_nm().detach().numpy())
    np.testing.assert_allclose(std["defocus_nm"][[0, 2]] / defocus[[0, 2]], 1 - correction, rtol=1e-5)
    assert std["defocus_nm"][1] == 0
    assert len(refits) == levels


@pytest.mark.integration
def test_the_bootstrap_corrects_the_calibration_and_its_std_covers_what_is_left():
    """A held-out lithographic pattern from five images at 10 % noise: the noise the object
    absorbs pulls the fitted calibration low (2.0 %). A series drawn from the fit and refitted, and
    one drawn from that refit's fit, measure that pull (the defaults' two levels); the calibration
    divided by it is nearer the truth, and twice the std that holds it covers the error left."""
    case = corpus.Case("litho", 0, 192, 5, 1.6, 0.1)
    images, truth = corpus.simulate_case(case)
    nominal = np.asarray(case.acquisition().defocus_nominal_nm)
    outer = nominal != 0
    error, std = {}, {}
    for replicates in (0, 1):
        # Without the refit at half the TV weight, which widens the std further (tested below).
        settings = optimise.Settings(subfield_uncertainty=False, bootstrap_replicates=replicates, prior_refit=False)
        result = reconstruct.reconstruct(images, nominal, 5.0, parameters.Microscope(), settings)
        error[replicates] = result.values["defocus_nm"][outer] / truth["defocus_nm"].values[outer] - 1
        std[replicates] = result.stds["defocus_nm"][outer] / np.abs(result.values["defocus_nm"][outer])
    assert result.calibration_bootstrap.size == 1
    assert np.all(error[0] < -0.003)  # the pull, before the correction
    assert np.all(np.abs(error[1]) < 0.7 * np.abs(error[0]))
    assert np.all(np.abs(error[1]) <= 2 * std[1])
    assert np.all(std[1] > std[0])


def test_a_diverged_replicate_leaves_the_calibration_as_fitted_and_its_std_unknown(monkeypatch):
    """The bootstrap cannot correct what it could not measure: the fitted defocus stands, its std
    is NaN (which the quality check reports), and no replicate factor is kept."""
    spec = simulate.SeriesSpec("s", "vortex", size_px=48, drift_px=0.0, n_particles=2)
    images, _ = simulate.simulate_series(spec)
    nominal = np.asarray(spec.defocus_nominal_nm)
    settings = optimise.Settings(refine=("defocus",), max_iterations=30, converge=False, subfield_uncertainty=False)
    fitted = reconstruct.reconstruct(
        images, nominal, 5.0, parameters.Microscope(), replace(settings, bootstrap_replicates=0)
    )

    def diverge(*args, **kwargs):
        raise optimise.FitDiverged("misfit nan at iteration 3")

    monkeypatch.setattr(uncertainty, "bootstrap_calibration", diverge)
    result = reconstruct.reconstruct(images, nominal, 5.0, parameters.Microscope(), settings)
    np.testing.assert_allclose(result.values["defocus_nm"], fitted.values["defocus_nm"], rtol=1e-6)
    assert np.isnan(result.stds["defocus_nm"][[0, 2]]).all() and result.stds["defocus_nm"][1] == 0
    assert result.calibration_bootstrap.size == 0


@pytest.mark.integration
def test_where_the_prior_decides_the_calibration_its_std_says_so():
    """Islands from five images at +-0.8 mm, 10 % noise (128 px): the fitted calibration is 3.2 %
    low, and the std of the curvature and the bootstrap, 1.3 %, does not cover it. Refitted at half
    the TV weight the factor moves by percents, and the std that holds the move covers the error."""
    case = corpus.Case("islands", 0, 128, 5, 0.8, 0.1)
    images, truth = corpus.simulate_case(case)
    nominal = np.asarray(case.acquisition().defocus_nominal_nm)
    outer = nominal != 0
    error, std = {}, {}
    for prior in (False, True):
        settings = optimise.Settings(prior_refit=prior, subfield_uncertainty=False, drift_screen=False)
        result = reconstruct.reconstruct(images, nominal, 5.0, parameters.Microscope(), settings)
        error[prior] = result.values["defocus_nm"][outer] / truth["defocus_nm"].values[outer] - 1
        std[prior] = result.stds["defocus_nm"][outer] / np.abs(result.values["defocus_nm"][outer])
    np.testing.assert_allclose(error[True], error[False])  # the refit changes the std alone
    assert np.all(np.abs(error[False]) > 2 * std[False])
    assert np.all(np.abs(error[True]) <= 2 * std[True])
    assert np.all(std[True] > 2 * std[False])

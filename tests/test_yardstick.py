"""The yardsticks of what a series' images carry: the transfer per band, the best linear
estimate of the phase, and the calibration's std their linear part holds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from phasepipe import corpus, metrics, simulate, yardstick


def test_octave_errors_and_transfer():
    """The per-octave error of a map is 0 against itself and 1 for a map of zeros; the phase
    transfer vanishes near q = 0 and is substantial in the mid octaves at 1.6 mm."""
    rng = np.random.default_rng(1)
    truth = simulate.smooth_noise(128, 2.0, rng)
    assert np.allclose(metrics.band_errors(truth, truth, 5.0), 0, atol=1e-6)
    assert np.allclose(metrics.band_errors(np.zeros_like(truth), truth, 5.0), 1, atol=1e-6)
    case = corpus.Case("weak", 0, 128, 3, 1.6, 0.05)
    bands = metrics.octave_bands((128, 128), corpus.PIXEL_NM, corpus.OCTAVES)
    transfer = yardstick.phase_transfer(case.acquisition(), np.array([-1.6e6, 0, 1.6e6]), (128, 128), bands)
    assert transfer[-1] < 0.1 and max(transfer[1:4]) > 0.4


def test_the_linear_estimate_knows_what_the_images_transfer_and_the_noise_leaves():
    """The best linear estimate (what the images carry): where the series transfers best its
    error is small at any noise; where it transfers little, the noise decides (more noise, more
    error, lower acc); where no image transfers (the envelope's top octave) it is no better than
    a map of zeros (error about 1)."""
    bands = metrics.octave_bands((128, 128), corpus.PIXEL_NM, corpus.OCTAVES)
    errors, acc = {}, {}
    for noise in (0.01, 0.2):
        case = corpus.Case("litho", 0, 128, 3, 1.6, noise)
        _, truth = corpus.simulate_case(case)
        estimate = yardstick.linear_estimate(case.acquisition(), corpus.field(case)[0], case.size_px)
        assert estimate.shape == (128, 128)
        errors[noise] = metrics.band_errors(estimate, truth["phase"].values, corpus.PIXEL_NM)
        acc[noise] = metrics.phase_accuracy(estimate, truth["phase"].values)
    transfer = np.array(yardstick.phase_transfer(case.acquisition(), truth["defocus_nm"].values, (128, 128), bands))
    best, dark = int(np.argmax(transfer)), int(np.argmin(transfer))
    faint = int(np.flatnonzero((transfer > 0.01) & (transfer < 0.1))[0])
    assert transfer[best] > 0.5 and transfer[dark] < 0.01
    assert max(errors[0.01][best], errors[0.2][best]) < 0.1
    assert errors[0.2][faint] > errors[0.01][faint] + 0.1
    assert acc[0.01] > acc[0.2] + 0.01
    assert 0.9 < errors[0.2][dark] < 1.05


def test_calibration_information_of_a_phase_object_is_the_turn_of_its_transfer():
    """For a pure phase object the Fisher information left for the factor, its power unknown at
    every frequency, has a closed form: 2 lambda^2 / (1 + lambda) times the squared turn rate of
    the transfer vector t over half the grid (lambda = P |t|^2 / sigma^2). Five images at two
    levels carry the calibration, more noise carries less; three at -d, 0, +d carry it through
    Cs alone (nothing without Cs), or through the specimen's absorption."""
    rng = np.random.default_rng(3)
    phase = simulate.smooth_noise(64, 1.5, rng)
    clear = np.ones_like(phase)
    five = dataclasses.replace(corpus.Case("weak", 0, 64, 5, 1.6, 0.05).acquisition(), calibration=1.0)
    defocus = np.asarray(five.defocus_nominal_nm, float)
    t = -2 * yardstick.transfer(five, defocus, phase.shape).imag
    dt = (-2 * yardstick.transfer(five, defocus * 1.0001, phase.shape).imag - t) / 1e-4
    norm2 = np.sum(t**2, axis=0)
    turn2 = (np.sum(dt**2, axis=0) * norm2 - np.sum(t * dt, axis=0) ** 2) / np.maximum(norm2, 1e-30) ** 2
    snr = np.abs(np.fft.fft2(phase - phase.mean(), norm="ortho")) ** 2 * norm2 / five.noise_fraction**2
    closed_form = 1 / np.sqrt(np.sum(snr**2 / (1 + snr) * turn2))
    std = yardstick.calibration_information(five, phase, clear)
    assert std == pytest.approx(closed_form, rel=1e-2)
    assert std < 0.01
    assert yardstick.calibration_information(dataclasses.replace(five, noise_fraction=0.1), phase, clear) > 1.5 * std
    three = dataclasses.replace(corpus.Case("weak", 0, 64, 3, 1.6, 0.05).acquisition(), calibration=1.0)
    assert yardstick.calibration_information(three, phase, clear) > 100 * std
    assert yardstick.calibration_information(dataclasses.replace(three, cs_mm=0.0), phase, clear) > 1e4  # rounding
    absorbing = np.exp(-0.05 * simulate.smooth_noise(64, 1.5, rng))
    assert yardstick.calibration_information(dataclasses.replace(three, cs_mm=0.0), phase, absorbing) < 0.1

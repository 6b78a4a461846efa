"""The quality checks on the calibration: a fit far from the nominal defocus, an unknown std."""

import numpy as np

from phasepipe import quality

NOMINAL = np.array([-1.6e6, -0.8e6, 0.0, 0.8e6, 1.6e6])


def test_a_calibration_within_a_tenth_of_nominal_passes_and_one_beyond_is_flagged():
    """6 % off (a lens) passes; 1.8 times the nominal (the fit of a weak phase lattice near focus,
    where the defocus traded against the phase's scale) is flagged with the factor."""
    std = np.full(5, 1e3)
    assert quality.calibration_reasons(1.06, NOMINAL, std) == []
    assert quality.calibration_reasons(0.91, NOMINAL, std) == []
    assert quality.calibration_reasons(None, NOMINAL, std) == []  # not fitted: nothing to check
    (reason,) = quality.calibration_reasons(1.8, NOMINAL, std)
    assert reason.startswith("calibration:") and "1.800 times its nominal" in reason
    (reason,) = quality.calibration_reasons(0.85, NOMINAL, std)
    assert "0.850 times" in reason


def test_an_unknown_calibration_std_is_flagged_and_a_focused_series_is_not_checked():
    std = np.array([np.nan, 1e3, 0.0, 1e3, 1e3])
    (reason,) = quality.calibration_reasons(1.0, NOMINAL, std)
    assert "could not be estimated" in reason
    assert quality.calibration_reasons(None, np.zeros(3), np.full(3, np.nan)) == []

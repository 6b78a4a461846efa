"""The magnetic phase of one series by its absorption, and the induction of a magnetic phase."""

import json

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from phasepipe import corpus, metrics, physics, separation


def _pair(relation):
    return corpus.simulate_pair(corpus.Case("elements", 0, 96, 3, 0.8, 0.05), relation)


def test_absorption_split_recovers_one_materials_constant():
    """A specimen of one material: phi_e = k (-ln a) exactly; the split finds k and phi_m."""
    (_, truth), _, _ = _pair("flip")
    phase, amplitude = truth["phase"].values, truth["amplitude"].values
    true_k = np.ptp(truth["phase_electrostatic"].values) / np.ptp(-np.log(amplitude))
    electrostatic, magnetic, k = separation.absorption_split(phase, amplitude)
    assert k == pytest.approx(true_k, rel=0.1)
    assert metrics.phase_accuracy(magnetic, truth["phase_magnetic"].values) > 0.98
    assert metrics.phase_accuracy(phase, truth["phase_magnetic"].values) < 0.9  # what the split removes


def test_induction_angle_of_a_reversed_field_is_180_degrees():
    y, x = np.mgrid[:32, :32].astype(float)
    maps = separation.induction_maps(0.1 * y, 5.0)
    assert maps["induction_x_tnm"].mean() > 0 and np.abs(maps["induction_y_tnm"]).max() < 1e-9
    inside = np.ones((32, 32), bool)
    bx, by = maps["induction_x_tnm"], maps["induction_y_tnm"]
    assert separation.angular_error_deg(bx, by, bx, by, inside) == 0
    assert separation.angular_error_deg(-bx, -by, bx, by, inside) == pytest.approx(180)


def test_absorption_dataset_adds_the_separated_maps_and_its_constant():
    (_, truth), _, _ = _pair("flip")
    ds = xr.Dataset(
        {"phase": (("y", "x"), truth["phase"].values), "amplitude": (("y", "x"), truth["amplitude"].values)},
        coords={"image": [0, 1, 2]},
        attrs={"pixel_size_nm": 5.0, "microscope": json.dumps({"beam_divergence_mrad": 0.01})},
    ).assign(defocus_nominal_nm=("image", truth["defocus_nominal_nm"].values))
    out = separation.absorption_dataset(ds)
    assert {"phase_magnetic", "phase_electrostatic", "induction_x_tnm", "induction_y_tnm"} <= set(out.data_vars)
    record = json.loads(out.attrs["separation"])
    assert record["relation"] == "absorption" and record["scale_rad"] > 0
    total = out["phase_magnetic"].values + out["phase_electrostatic"].values
    assert np.abs(total - (ds["phase"].values - ds["phase"].values.mean())).max() < 1e-4


def test_the_induction_is_low_passed_where_no_image_resolves_the_phase():
    """Pixel noise beyond the resolved band is not turned into induction; a smooth phase's is kept."""
    y, x = np.mgrid[:64, :64].astype(float)
    smooth = 0.05 * y
    noisy = smooth + 0.2 * np.random.default_rng(0).standard_normal((64, 64))
    q = physics.resolved_frequency(1e-5, 1.6e6, 5.0)
    inner = np.s_[8:-8, 8:-8]
    exact = separation.induction_maps(smooth, 5.0)["induction_x_tnm"][inner]
    raw = separation.induction_maps(noisy, 5.0)["induction_x_tnm"][inner]
    filtered = separation.induction_maps(noisy, 5.0, q)["induction_x_tnm"][inner]
    assert (
        np.abs(separation.induction_maps(smooth, 5.0, q)["induction_x_tnm"][inner] - exact).max() < 1e-3 * exact.mean()
    )
    assert np.std(filtered - exact) < 0.3 * np.std(raw - exact)


def test_induction_accuracy_correlates_both_components_over_the_interior():
    """1 against itself, -1 against its reverse, lower with noise; the border is left out."""
    rng = np.random.default_rng(3)
    bx, by = (ndimage.gaussian_filter(rng.standard_normal((96, 96)), 4) for _ in range(2))
    assert separation.induction_accuracy(bx, by, bx, by) > 0.9999
    assert separation.induction_accuracy(-bx, -by, bx, by) < -0.9999
    noisy = separation.induction_accuracy(bx + 0.05 * rng.standard_normal(bx.shape), by, bx, by)
    assert 0.5 < noisy < 0.99
    spoiled = bx.copy()
    spoiled[:8] = 100.0  # inside the border
    assert separation.induction_accuracy(spoiled, by, bx, by, border_px=8) > 0.9999

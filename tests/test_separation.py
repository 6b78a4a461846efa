"""The magnetic phase of one series by its absorption, and the induction of a magnetic phase."""

import json

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from phasepipe import corpus, gauge, metrics, physics, separation


def _pair(relation):
    return corpus.simulate_pair(corpus.Case("elements", 0, 96, 3, 0.8, 0.05), relation)


def test_absorption_split_recovers_one_materials_constant():
    """A specimen of one material: phi_e = k (-ln a) exactly; the split finds k and phi_m."""
    (_, truth), _, _ = _pair("flip")
    phase, amplitude = truth["phase"].values, truth["amplitude"].values
    true_k = np.ptp(truth["phase_electrostatic"].values) / np.ptp(-np.log(amplitude))
    split = separation.absorption_split(phase, amplitude)
    assert split.scale == pytest.approx(true_k, rel=0.1)
    assert metrics.phase_accuracy(split.magnetic, truth["phase_magnetic"].values) > 0.98
    assert metrics.phase_accuracy(phase, truth["phase_magnetic"].values) < 0.9  # what the split removes


def test_induction_angle_of_a_reversed_field_is_180_degrees():
    y, x = np.mgrid[:32, :32].astype(float)
    maps = separation.induction_maps(0.1 * y, 5.0)
    assert maps["induction_x_tnm"].mean() > 0 and np.abs(maps["induction_y_tnm"]).max() < 1e-9
    inside = np.ones((32, 32), bool)
    bx, by = maps["induction_x_tnm"], maps["induction_y_tnm"]
    assert separation.angular_error_deg(bx, by, bx, by, inside) == 0
    assert separation.angular_error_deg(-bx, -by, bx, by, inside) == pytest.approx(180)


def test_absorption_dataset_adds_the_separated_maps_and_moves_ramp_and_drift_together():
    """The store gains the separated maps and k; its total phase takes the split's ramp, and its
    drift the shifts that ramp makes, so that both still predict the same images."""
    (_, truth), _, _ = _pair("flip")
    nominal = truth["defocus_nominal_nm"].values
    tilted = truth["phase"].values + 0.01 * np.arange(96)[None, :]  # a ramp the total's gauge left
    ds = xr.Dataset(
        {"phase": (("y", "x"), tilted), "amplitude": (("y", "x"), truth["amplitude"].values)},
        coords={"image": [0, 1, 2]},
        attrs={
            "pixel_size_nm": 5.0,
            "microscope": json.dumps({"beam_divergence_mrad": 0.01, "voltage_kv": 200.0}),
        },
    ).assign(
        defocus_nominal_nm=("image", nominal),
        defocus_nm=("image", nominal),
        shift_y_px=("image", np.zeros(3)),
        shift_x_px=("image", np.zeros(3)),
    )
    out = separation.absorption_dataset(ds)
    assert {"phase_magnetic", "phase_electrostatic", "induction_x_tnm", "induction_y_tnm"} <= set(out.data_vars)
    record = json.loads(out.attrs["separation"])
    assert record["relation"] == "absorption" and record["scale_rad"] > 0
    total = out["phase_magnetic"].values + out["phase_electrostatic"].values
    assert np.abs(total - out["phase"].values).max() < 1e-4
    # The ramp taken out of the total is the split's, and the drift moved by what it makes.
    removed = gauge.best_plane(tilted - out["phase"].values)
    gy, gx = np.gradient(removed)
    assert gx.mean() == pytest.approx(0.01, abs=0.003) and abs(gy.mean()) < 0.003
    expected = gauge.ramp_shift_px(np.array([gy.mean(), gx.mean()]), nominal, 5.0, physics.wavelength_nm(200e3))
    assert out["shift_x_px"].values == pytest.approx(expected[:, 1] - expected[1, 1], abs=0.02)
    assert np.abs(out["shift_x_px"].values).max() > 0.1  # 0.01 rad per px at 0.8 mm: 0.13 px


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


@pytest.mark.integration
def test_the_split_low_pass_keeps_k_where_a_reconstructions_edges_and_noise_pull_it_low():
    """On the engine's own maps of one-material elements (five images, 10 % noise), the phase's
    edges are as sharp as the images transfer them and the amplitude is noisy: k chosen pixel by
    pixel lands far low; on both maps low-passed at ABSORPTION_BAND of the resolved frequency it
    lands near the truth."""
    import dataclasses

    from phasepipe import align, optimise, parameters, reconstruct

    settings = dataclasses.replace(optimise.Settings(), bootstrap_replicates=0, subfield_uncertainty=False)
    for seed in (0, 2):
        images, truth = corpus.simulate_case(corpus.Case("elements", seed, 128, 5, 1.6, 0.1))
        nominal = truth["defocus_nominal_nm"].values
        aligned = align.apply_registration(images, align.series_registration(images, nominal))
        fit = reconstruct.reconstruct(aligned, nominal, corpus.PIXEL_NM, parameters.Microscope(), settings)
        absorption = -np.log(truth["amplitude"].values).ravel()
        true_k = np.polyfit(absorption, truth["phase_electrostatic"].values.ravel(), 1)[0]
        resolved = separation.series_resolution(nominal, parameters.Microscope().beam_divergence_mrad, corpus.PIXEL_NM)
        sigma = separation.band_sigma_px(separation.ABSORPTION_BAND, resolved, corpus.PIXEL_NM)
        phase, amplitude = fit.phase.astype(float), fit.amplitude.astype(float)
        assert abs(separation.absorption_split(phase, amplitude, sigma).scale / true_k - 1) < 0.2, seed
        assert separation.absorption_split(phase, amplitude).scale / true_k - 1 < -0.4, seed

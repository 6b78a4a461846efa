"""Drift registration: sign-invariant across contrast inversion, sub-pixel, and robust to bad pairs."""

import numpy as np
import pytest
import xarray as xr

from phasepipe import align, physics, quality, registration, simulate

FIVE = (-1.6e6, -0.8e6, 0.0, 0.8e6, 1.6e6)


def moved(image: np.ndarray, shift_px) -> np.ndarray:
    """``image`` with its content moved by ``shift_px`` (Fourier shift)."""
    return registration.shift_image(image, -np.asarray(shift_px, float))


def weak_object_series(
    defocus_nm,
    shifts_px,
    absorption: float = 0.0,
    rotation_deg=None,
    scale=None,
    n: int = 256,
    noise: float = 0.05,
    seed: int = 5,
) -> np.ndarray:
    """Images (5 nm pixels, 200 kV) of a weak object: a fine random phase texture of 0.15 rad rms,
    with absorption in proportion to it (``absorption`` times the phase, as thickness gives both),
    moved by ``shifts_px`` and, when given, rotated and scaled by the lens (align's convention).
    Phase contrast inverts between under- and overfocus; absorption contrast does not."""
    rng = np.random.default_rng(seed)
    texture = 0.15 * simulate.smooth_noise(n, 3.0, rng)
    psi = np.exp((1j - absorption) * texture)
    qy, qx = physics.frequency_grid((n, n), 5.0)
    df = np.asarray(defocus_nm, float)
    transfer = physics.transfer_function(
        qx**2 + qy**2, df[:, None, None], physics.wavelength_nm(200e3), 1e6, 1e-5, 500.0
    )
    clean = physics.image_intensities(psi, transfer)
    if rotation_deg is None:
        images = np.stack([moved(image, shift) for image, shift in zip(clean, shifts_px, strict=True)])
    else:
        images = np.stack(
            [
                align.similarity_image(image, shift, rotation, magnification)
                for image, shift, rotation, magnification in zip(clean, shifts_px, rotation_deg, scale, strict=True)
            ]
        )
    return images * (1 + noise * rng.standard_normal(images.shape))


def random_drift(n_images: int, seed: int, reference: int = 2) -> np.ndarray:
    """Several px of fractional drift per image, relative to the reference image."""
    drift = np.cumsum(3.0 * np.random.default_rng(seed).standard_normal((n_images, 2)), axis=0)
    return drift - drift[reference]


def rms_error(shifts: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((shifts - truth) ** 2, axis=1))))


def simulated(drift_px: float = 3.0, **spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, defocus and true drift of a simulated series at -1.6 ... +1.6 mm with 5 % noise."""
    spec = simulate.SeriesSpec(series="s", defocus_nominal_nm=FIVE, drift_px=drift_px, **spec)
    images, truth = simulate.simulate_series(spec)
    return images, np.array(FIVE), np.stack([truth["shift_y_px"].values, truth["shift_x_px"].values], axis=1)


@pytest.mark.parametrize("shift", [(2.3, -1.6), (7.55, 5.2), (-11.3, 0.45)])
def test_register_pair_finds_a_fractional_shift_of_the_same_image(shift):
    """Same content, several px of fractional drift: found to 0.01 px (iterated parabolic peak)."""
    rng = np.random.default_rng(1)
    image = 1 + 0.3 * simulate.smooth_noise(128, 2.0, rng)
    reg = align.register_pair(image, moved(image, shift))
    np.testing.assert_allclose(reg.shift_px, shift, atol=0.01)
    assert reg.confidence > 0.9


def test_inverted_contrast_registers_where_plain_cross_correlation_fails():
    """Under- against overfocus of a phase object: contrast is inverted. The sign-invariant
    registration finds the drift within 0.05 px; the plain cross-correlation is pixels off."""
    shift = np.array([3.4, -2.7])
    under, over = weak_object_series([-1.6e6, 1.6e6], [(0.0, 0.0), shift])
    reg = align.register_pair(under, over)
    assert np.abs(reg.shift_px - shift).max() < 0.05
    plain = registration.correlation_shift(under - under.mean(), over - over.mean(), 16)
    assert np.abs(plain - shift).max() > 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_series_drift_through_focus_within_005_px(seed):
    """A weak object whose absorption goes with its phase (as thickness gives both) through
    -1.6 ... +1.6 mm, several px of fractional drift, 5 % noise: every image's drift within
    0.05 px RMS, where chaining plain cross-correlations is pixels off."""
    truth = random_drift(5, seed)
    images = weak_object_series(FIVE, truth, absorption=0.3, seed=seed)
    reg = align.series_registration(images, np.array(FIVE))
    assert rms_error(reg.shift_px, truth) < 0.05
    plain = np.zeros_like(truth)
    for inner, outer in ((2, 1), (1, 0), (2, 3), (3, 4)):
        plain[outer] = plain[inner] + registration.correlation_shift(images[inner], images[outer], 16)
    assert rms_error(plain, truth) > 1.0


def test_leave_one_out_drifts_place_the_left_out_image_by_interpolation():
    """A drift in proportion to defocus (0.6, -0.4 px per 0.8 mm) registered with each image left
    out in turn: every alternative equals the truth less its mean within 0.05 px, the left-out image
    interpolated between (or, at the ends, taken from) its neighbours; too few images give none."""
    df = np.array(FIVE)
    truth = np.outer(df / 0.8e6, [0.6, -0.4])
    images = weak_object_series(FIVE, truth, absorption=0.3)
    drifts = align.leave_one_out_drifts(images, df)
    assert len(drifts) == 5
    errors = [np.abs(drift - (truth - truth.mean(axis=0))).max() for drift in drifts]
    # An end takes its neighbour's drift, one step (0.6 px in y) off, 0.48 px once the mean is out.
    assert max(errors[1:4]) < 0.05
    assert 0.43 < errors[0] < 0.53 and 0.43 < errors[4] < 0.53
    assert align.leave_one_out_drifts(images[:2], df[:2]) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lens_rotation_and_scale_within_002_deg_and_005_percent(seed):
    """The lens rotates the image by up to 0.3 degrees and scales it by up to 0.5 % at +-1.6 mm, in
    proportion to defocus; on a weak phase object (384 px, 5 % noise, drift of several px) both are
    recovered for every image within 0.02 degrees and 0.05 %, and the defocused images' drift
    within 0.05 px of each other (the in-focus image of a pure phase object shows only noise: its
    own drift is unknown and it is flagged)."""
    df = np.array(FIVE)
    rotation, scale = 0.3 * df / 1.6e6, 1 + 0.005 * df / 1.6e6
    truth = random_drift(5, seed)
    images = weak_object_series(df, truth, rotation_deg=rotation, scale=scale, n=384, seed=seed)
    reg = align.series_registration(images, df, align.AlignSettings(transform="similarity"))
    assert np.abs(reg.rotation_deg - rotation).max() < 0.02
    assert np.abs(reg.scale - scale).max() < 0.0005
    defocused = [0, 1, 3, 4]
    relative = reg.shift_px[defocused] - reg.shift_px[defocused].mean(axis=0)
    assert rms_error(relative, truth[defocused] - truth[defocused].mean(axis=0)) < 0.05
    assert reg.confidence[2] < align.AlignSettings().min_confidence
    translation_only = align.series_registration(images, df)
    assert np.abs(translation_only.rotation_deg).max() == 0.0


def test_series_drift_of_a_simulated_film_through_focus():
    """A film with particles (phase contrast that inverts, absorption that does not), drift of a
    few px per image, -1.6 ... +1.6 mm, 5 % noise, recorded through a window of the larger film:
    every image placed within 0.3 px RMS (0.11 px on a periodic field; the content drifting in and
    out of the window costs the rest), where chaining plain cross-correlations misses by pixels."""
    images, df, truth = simulated(texture="stripes", b0_t=0.0, n_particles=20, seed=0)
    reg = align.series_registration(images, df)
    assert rms_error(reg.shift_px, truth) < 0.3
    assert reg.residual_px < 0.1
    plain = np.zeros_like(truth)
    for inner, outer in ((2, 1), (1, 0), (2, 3), (3, 4)):
        plain[outer] = plain[inner] + registration.correlation_shift(images[inner], images[outer], 16)
    assert rms_error(plain, truth) > 1.0


def test_a_window_moved_mirrored_holds_its_own_edge_and_rings_less_than_wrapped():
    """A window of a larger field moved by a fractional shift: mirrored, it is within half the
    wrapped move's error of the field moved, 4 and 8 px from the edges (the wrapped seam rings);
    moved by whole pixels, the strip it uncovers holds its own edge mirrored."""
    from scipy import ndimage

    field = 1 + ndimage.gaussian_filter(np.random.default_rng(7).standard_normal((160, 160)), 2)
    window = field[32:128, 32:128]
    truth = registration.shift_image(field, (2.5, -1.5))[32:128, 32:128]
    mirrored = align.shift_window(window, (2.5, -1.5))
    wrapped = registration.shift_image(window, (2.5, -1.5))
    for border in (4, 8):
        inner = np.s_[border:-border, border:-border]
        rms = [np.sqrt(np.mean((moved - truth)[inner] ** 2)) for moved in (mirrored, wrapped)]
        assert rms[0] < 0.5 * rms[1]
    whole = align.shift_window(window, (2, 0))
    np.testing.assert_allclose(whole[:-2], window[2:], atol=1e-12)
    np.testing.assert_allclose(whole[-2:], window[[-1, -2]], atol=1e-12)


def test_periodic_texture_mismatch_is_left_out():
    """A skyrmion lattice filling a periodic field matches itself a lattice period away; the pair
    that does so disagrees with the others and is dropped, leaving the series within 0.5 px.
    (Through a window of a larger film the in-focus image, which shows little but the particles,
    registers pixels off with three of its four partners alike: nothing is left to outvote them.)"""
    images, df, truth = simulated(texture="skyrmions", b0_t=0.45, n_particles=20, seed=0, margin_px=0)
    pairs = align.pairs_by_defocus(df)
    single = [align.register_pair(images[i], images[j]).shift_px - (truth[j] - truth[i]) for i, j in pairs]
    assert max(np.abs(e).max() for e in single) > 5  # some pair did lock onto the lattice
    assert rms_error(align.series_registration(images, df).shift_px, truth) < 0.5


def test_solve_shifts_is_exact_for_consistent_pairs_and_pins_the_reference():
    truth = np.array([[1.2, -0.7], [0.4, 0.3], [0.0, 0.0], [-0.8, 1.1]])
    pairs = align.pairs_by_defocus(np.array([-2.0, -1.0, 0.0, 1.0]))
    measured = np.array([truth[j] - truth[i] for i, j in pairs])
    shifts, residual = align.solve_shifts(4, pairs, measured, np.ones(len(pairs)), reference=2)
    np.testing.assert_allclose(shifts, truth, atol=1e-12)
    assert residual.max() < 1e-12


def test_unrelated_image_is_flagged_with_low_confidence():
    """An image that shares nothing with the series gets a confidence far below the others, and
    the series' quality names it."""
    images, df, _ = simulated(texture="stripes", b0_t=0.0, n_particles=20, seed=0)
    images[4] = 1000 * (1 + 0.05 * np.random.default_rng(3).standard_normal(images[4].shape))
    ds = xr.Dataset(
        {"intensity": (("image", "y", "x"), images), "defocus_nominal_nm": (("image",), df)},
        attrs={"series": "s"},
    )
    aligned = align.align_dataset(ds)
    confidence = aligned["registration_confidence"].values
    assert confidence[4] < align.AlignSettings().min_confidence < confidence[[0, 1, 3]].min()
    (reason,) = quality.alignment_reasons(aligned.attrs, confidence)
    assert "image(s) [4] below align.min_confidence 0.15" in reason


def test_drift_registered_beyond_the_search_window_is_flagged():
    """A skyrmion film of 128 px at +-1.6 mm (Lorentz contrast moving features by pixels between
    defocus levels; drift of 3 px) registers pairs tens of px apart, beyond max_shift_px 16: the
    aligned store records it and the quality verdict warns, where the release used to say ok."""
    spec = simulate.SeriesSpec("sk", "skyrmions", size_px=128, seed=0)
    images, truth = simulate.simulate_series(spec)
    ds = xr.Dataset(
        {
            "intensity": (("image", "y", "x"), images),
            "defocus_nominal_nm": (("image",), np.array(spec.defocus_nominal_nm)),
        },
        attrs={"series": "sk"},
    )
    aligned = align.align_dataset(ds)
    drift = np.hypot(aligned["shift_y_px"].values, aligned["shift_x_px"].values)
    true_drift = np.hypot(truth["shift_y_px"].values, truth["shift_x_px"].values)
    assert drift.max() > 16 > 2 * true_drift.max()  # the registration is wrong, by tens of px
    assert aligned.attrs["alignment_largest_pair_shift_px"] > aligned.attrs["alignment_max_shift_px"] == 16
    reasons = quality.alignment_reasons(aligned.attrs, aligned["registration_confidence"].values)
    assert any("beyond align.max_shift_px 16" in r for r in reasons)
    assert quality.verdict("ok", reasons) == "warning"


def test_featureless_reference_is_flagged():
    """The in-focus image of a pure phase object shows nothing but noise: its registrations are no
    better than chance, so it is flagged, while the defocused images pair well with each other."""
    rng = np.random.default_rng(2)
    n = 256
    psi = np.exp(1j * 0.15 * simulate.smooth_noise(n, 3.0, rng))
    qy, qx = physics.frequency_grid((n, n), 5.0)
    df = np.array(FIVE)
    transfer = physics.transfer_function(
        qx**2 + qy**2, df[:, None, None], physics.wavelength_nm(200e3), 1e6, 1e-5, 500.0
    )
    images = physics.image_intensities(psi, transfer) * (1 + 0.05 * rng.standard_normal((5, n, n)))
    confidence = align.series_registration(images, df).confidence
    assert confidence[2] < align.AlignSettings().min_confidence
    assert confidence[[0, 1, 3, 4]].min() > 0.8

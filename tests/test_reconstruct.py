"""Differentiable reconstruction: exact gradients, defocus continuation, and accuracy on a small series."""

import dataclasses

import numpy as np
import pytest
import torch

from phasepipe import (
    align,
    cli,
    corpus,
    fused,
    gauge,
    io,
    metrics,
    optimise,
    parameters,
    reconstruct,
    simulate,
    uncertainty,
)
from phasepipe.model import ForwardModel, misfit_per_image

FIVE = (-1.6e6, -0.8e6, 0.0, 0.8e6, 1.6e6)
PIXEL_NM = 5.0


def smooth_field(n: int, corr_px: float, rng: np.random.Generator) -> np.ndarray:
    """Periodic Gaussian-correlated random field, zero mean and unit peak magnitude."""
    field = simulate.smooth_noise(n, corr_px, rng)
    return field / np.abs(field).max()


def float64_problem(n: int = 32):
    """A float64 model, data from 'true' parameters, and a perturbed starting point.

    ``.double()`` casts every parameter; the model's frequency grid is cast by hand. The
    defocus still enters the transfer function through a float32 cast (ForwardModel.transfer).
    """
    rng = np.random.default_rng(0)
    microscope = parameters.Microscope()
    nominal = np.array([-1.6e6, 0.0, 1.6e6])
    model = ForwardModel((n, n), PIXEL_NM, microscope, "cpu")
    model.qy, model.qx, model.q2 = model.qy.double(), model.qx.double(), model.q2.double()
    phase = smooth_field(n, 2.0, rng)
    truth = parameters.Parameters(phase, np.exp(0.1 * smooth_field(n, 3.0, rng)), 1.03 * nominal, microscope, 1)
    truth = truth.double()
    with torch.no_grad():
        truth.shifts.copy_(torch.tensor([[0.5, -0.3], [0.0, 0.0], [-0.2, 0.8]]))
        data = model(truth, True)
    start = parameters.Parameters(
        0.9 * phase + 0.1 * smooth_field(n, 1.5, rng), np.ones((n, n)), nominal, microscope, 1
    )
    return model, start.double(), data


@pytest.mark.parametrize(
    ("name", "index", "step", "rtol"),
    [
        ("phase", (5, 7), 1e-5, 1e-6),
        ("phase", (20, 11), 1e-5, 1e-6),
        ("log_amplitude", (16, 16), 1e-5, 1e-6),
        ("defocus", (0,), 1e-4, 1e-3),  # float32 defocus in the transfer function: looser
        ("defocus", (2,), 1e-4, 1e-3),
        ("shifts", (2, 1), 1e-3, 1e-6),
        ("shifts", (0, 0), 1e-3, 1e-6),
        ("beam_divergence", (), 1e-4, 1e-3),
    ],
)
def test_gradient_matches_central_differences(name, index, step, rtol):
    """Autograd gradient of the misfit mean((I_model - I_data)^2) equals central finite differences
    for phase and amplitude pixels, a non-reference image's defocus and shift, and the beam divergence."""
    model, params, data = float64_problem()

    def misfit() -> torch.Tensor:
        return torch.mean((model(params, True) - data) ** 2)

    misfit().backward()
    parameter = getattr(params, name)
    analytic = parameter.grad[index].item()
    with torch.no_grad():
        value = parameter[index].item()
        parameter[index] = value + step
        plus = misfit().item()
        parameter[index] = value - step
        minus = misfit().item()
    numeric = (plus - minus) / (2 * step)
    assert abs(numeric) > 1e-6  # the check is not comparing two zeros
    assert analytic == pytest.approx(numeric, rel=rtol)


def float32_problem(n: int = 64, margin: int = 0):
    """A float32 model, noisy data from 'true' parameters with drift, and two identical starting
    points with defocus and drift off the truth; the coherence is fixed (the fast path's case).
    ``margin`` > 0: data only inside that margin (a tile's canvas; the mask of measured pixels)."""
    rng = np.random.default_rng(1)
    microscope = parameters.Microscope()
    nominal = np.array(FIVE)
    measured = None
    if margin:
        measured = np.zeros((n, n))
        measured[margin:-margin, margin:-margin] = 1
    model = ForwardModel((n, n), PIXEL_NM, microscope, "cpu", measured)
    phase = 3 * smooth_field(n, 2.0, rng)
    truth = parameters.Parameters(phase, np.exp(0.1 * smooth_field(n, 3.0, rng)), 1.03 * nominal, microscope, 2)
    with torch.no_grad():
        truth.shifts.copy_(torch.as_tensor(0.5 * rng.standard_normal((5, 2))))
        data = model(truth, True) * (1 + 0.05 * torch.randn(5, n, n, generator=torch.Generator().manual_seed(0)))
    starts = []
    for _ in range(2):
        start = parameters.Parameters(0.8 * phase, np.ones((n, n)), nominal, microscope, 2)
        with torch.no_grad():
            start.defocus_scale.fill_(0.01)
            start.defocus.copy_(torch.tensor([0.01, -0.02, 0.0, 0.015, 0.005]))
            start.shifts.copy_(torch.tensor([[0.3, -0.2], [0.1, 0.0], [0.0, 0.0], [-0.2, 0.4], [0.2, 0.1]]))
        start.beam_divergence.requires_grad_(False)
        start.defocus_spread.requires_grad_(False)
        starts.append(start)
    return model, starts, data


def reference_total_variation(phase: torch.Tensor) -> torch.Tensor:
    """The periodic total variation by its formula, for autograd: mean(sqrt(dy^2 + dx^2 + eps^2))."""
    dy = phase - torch.roll(phase, 1, 0)
    dx = phase - torch.roll(phase, 1, 1)
    return torch.sqrt(dy**2 + dx**2 + fused.TV_EPS**2).mean()


@pytest.mark.parametrize(("refine_shifts", "margin"), [(False, 0), (True, 0), (True, 10)])
def test_fast_misfit_and_gradients_equal_autograd(refine_shifts, margin):
    """The fast path (fused.SeriesMisfit: analytic gradient) gives the misfit, the loss (misfit plus
    weighted total variation) and the loss's gradients of phase, log amplitude, defocus scale,
    per-image defocus and drift of autograd through the forward model, to float32 precision; an
    inactive image is left out of both; with a margin, means and misfit over the measured pixels
    only (a tile's canvas)."""
    model, (fast, plain), data = float32_problem(margin=margin)
    active = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    tv_weight = 0.1  # the largest phase gradient of its term is about a third of the misfit's: both are checked
    fast_loss, fast_misfit = model.objective(fast, data, active, refine_shifts, tv_weight)
    assert type(fast_loss.grad_fn).__name__ == "_SeriesMisfitFunctionBackward"
    assert not fast_misfit.requires_grad
    fast_loss.backward()
    per_image = misfit_per_image(model(plain, refine_shifts), data, model.measured)
    plain_misfit = torch.sum(per_image * active) / active.sum()
    plain_tv = reference_total_variation(plain.phase)
    (plain_misfit + tv_weight * plain_tv).backward()
    assert fast_misfit.item() == pytest.approx(plain_misfit.item(), rel=1e-5)
    assert fast_loss.item() - fast_misfit.item() == pytest.approx(tv_weight * plain_tv.item(), rel=1e-5)
    # Every parameter the fast path declares, as Parameters names them (shifts: when refined).
    names = [name for name, _ in fast.named_parameters() if name in fused.DIFFERENTIATES]
    assert set(names) == fused.DIFFERENTIATES
    for name in names if refine_shifts else [n for n in names if n != "shifts"]:
        expected = getattr(plain, name).grad
        got = getattr(fast, name).grad
        assert expected.abs().max() > 0, name
        # float32 rounding: both paths are within 8e-6 of float64 autograd; the defocus scale's
        # gradient, a sum over images of terms of both signs, is the least precise.
        assert (got - expected).abs().max() <= 3e-5 * expected.abs().max(), name
    if not refine_shifts:
        assert fast.shifts.grad is None or fast.shifts.grad.abs().max() == 0


@pytest.mark.parametrize(
    "name", [e.tensor for e in parameters.REGISTRY.values() if e.tensor not in fused.DIFFERENTIATES]
)
def test_a_refined_parameter_the_fast_path_does_not_declare_takes_autograd(name):
    """A parameter outside ``fused.DIFFERENTIATES`` that requires a gradient sends the objective
    through autograd, where it gets one; the fast path would leave it without."""
    model, (params, _), data = float32_problem(margin=0)
    assert name not in fused.DIFFERENTIATES
    getattr(params, name).requires_grad_(True)
    loss, _ = model.objective(params, data, torch.ones(5), False, 0.1)
    assert type(loss.grad_fn).__name__ != "_SeriesMisfitFunctionBackward"
    loss.backward()
    assert getattr(params, name).grad.abs() > 0


def test_total_variation_gradient_equals_autograd():
    """The analytic gradient of the periodic total variation equals autograd's of its formula."""
    phase = torch.as_tensor(smooth_field(48, 2.0, np.random.default_rng(2)), dtype=torch.float32)
    phase.requires_grad_(True)
    value = fused.total_variation(phase)
    (analytic,) = torch.autograd.grad(value, phase)
    reference = reference_total_variation(phase)
    (expected,) = torch.autograd.grad(reference, phase)
    assert value.item() == pytest.approx(reference.item(), rel=1e-6)
    assert (analytic - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_reference_image_defocus_is_pinned():
    """A common defocus offset is degenerate with propagating the object: the reference image's
    defocus parameter has no effect, so its gradient is exactly zero."""
    model, params, data = float64_problem()
    torch.mean((model(params, True) - data) ** 2).backward()
    assert params.defocus.grad[params.reference].item() == 0.0
    assert params.defocus.grad.abs().max().item() > 1e-3


def test_refined_shifts_keep_a_tilt_pattern_and_drop_a_common_shift():
    """A common shift of every image is a shift of the object and is projected out; a shift in
    proportion to defocus (a beam tilt) is identified by the periodic model and kept."""
    nominal = np.array(FIVE)
    params = parameters.Parameters(np.zeros((8, 8)), np.ones((8, 8)), nominal, parameters.Microscope(), 2)
    tilt = np.outer(nominal / 1.6e6, [0.3, -0.2])
    with torch.no_grad():
        params.shifts.copy_(torch.tensor(tilt + [1.5, -0.7], dtype=torch.float32))
    np.testing.assert_allclose(params.shifts_px().detach().numpy(), tilt, atol=1e-6)


@pytest.mark.parametrize(
    ("defocus_nm", "expected"),
    [
        (list(FIVE), [150, 0, 0, 0, 150]),
        ([-1.0, 0.0, 1.0], [0, 0, 0]),
        ([2e5, -1e5, 0.0, 1e5, 4e5, -2e5], [150, 0, 0, 0, 300, 150]),
    ],
)
def test_continuation_schedule(defocus_nm, expected):
    """Focus and the smallest |defocus| start together; each further |defocus| level one step later."""
    np.testing.assert_array_equal(optimise.continuation_schedule(np.array(defocus_nm), 150), expected)


def test_auto_tv_weight_follows_the_noise_above_a_floor():
    """`tv_weight: auto` is 0.15 times the measured noise (10 % noise: about 0.015; the rule
    benchmarks/tune.py chose on the corpus' tuning families), and TV_WEIGHT_FLOOR for clean
    images, whose measured noise is near 0."""
    spec = simulate.SeriesSpec("tv", "vortex", size_px=96, defocus_nominal_nm=FIVE, noise_fraction=0.1, drift_px=0.0)
    noisy, _ = simulate.simulate_series(spec)
    clean, _ = simulate.simulate_series(dataclasses.replace(spec, noise_fraction=0.0))
    sigma = reconstruct.noise_level(noisy)
    assert sigma == pytest.approx(0.1, rel=0.25)
    assert reconstruct.auto_tv_weight(sigma) == pytest.approx(0.15 * sigma)
    assert 0.15 * reconstruct.noise_level(clean) < reconstruct.TV_WEIGHT_FLOOR
    assert reconstruct.auto_tv_weight(reconstruct.noise_level(clean)) == reconstruct.TV_WEIGHT_FLOOR


@pytest.mark.parametrize(
    ("given", "weight_at_5_percent"),
    [("auto", 0.0075), ("0.4 noise", 0.02), ("1 noise", 0.05), (0.003, 0.003)],
)
def test_tv_weight_from_the_config(given, weight_at_5_percent):
    """`tv_weight` is `auto` (0.15 times each series' noise), a multiple of that noise (a prior
    of known strength: 0.4 suits piecewise-flat specimens, docs/physics.md), or a fixed weight."""
    settings = reconstruct.settings_from_config({"tv_weight": given})
    assert reconstruct.chosen_tv_weight(0.05, settings) == pytest.approx(weight_at_5_percent)


@pytest.mark.parametrize("given", ["0.4 nois", "noise", "-0.4 noise", -1])
def test_a_tv_weight_of_no_known_form_is_refused_naming_the_forms(given):
    with pytest.raises(
        ValueError, match="'reconstruction.tv_weight' is .*; allowed: 'auto' or a number >= 0 or a multiple"
    ):
        reconstruct.settings_from_config({"tv_weight": given})


@pytest.mark.parametrize(
    ("defocus_nm", "refine", "expected"),
    [
        ((-1.6e6, 0.0, 1.6e6), ("defocus",), 1.6e6),
        ((0.0, 8e5), ("defocus_per_image",), 8e5),
        (FIVE, ("defocus",), None),
        ((-1.6e6, 0.0, 1.6e6), ("shifts",), None),
    ],
)
def test_single_defocus_level(defocus_nm, refine, expected):
    """A series whose defocused images share one |defocus| is flagged when its defocus is refined
    (the CLI warns); two levels, or no defocus refined, not."""
    assert reconstruct.single_defocus_level(np.array(defocus_nm), refine) == expected


def test_reconstruction_beats_tie_and_refines_defocus():
    """A noisy (5 %) 5-image vortex series with a 4 % defocus miscalibration: the AD phase reaches
    acc > 0.9 (and beats TIE), and the refined +-1.6 mm defocus is closer to the truth than nominal.

    The film is 20 nm thick and free of gold particles: at 40 nm the disk edge's phase gradient
    (1.8 rad/px) lets the fit settle into 2 pi-wrapped patches that fit the data as well as the truth.
    """
    spec = simulate.SeriesSpec(
        "acc",
        "vortex",
        size_px=96,
        defocus_nominal_nm=FIVE,
        calibration=1.04,
        noise_fraction=0.05,
        drift_px=0.0,
        thickness_nm=20.0,
        n_particles=0,
    )
    images, truth = simulate.simulate_series(spec)
    result = reconstruct.reconstruct(
        images, FIVE, PIXEL_NM, parameters.Microscope(), optimise.Settings(max_iterations=800)
    )
    true_phase = truth["phase"].values
    acc = metrics.phase_accuracy(result.phase, true_phase, border_px=8)
    assert acc > 0.9
    assert acc > metrics.phase_accuracy(result.tie_phase, true_phase, border_px=8)

    true_df = truth["defocus_nm"].values
    outer = [0, 4]
    refined_error = np.abs(result.values["defocus_nm"][outer] - true_df[outer])
    nominal_error = np.abs(np.array(FIVE)[outer] - true_df[outer])
    assert np.all(refined_error < 0.25 * nominal_error)
    assert np.all(result.stds["defocus_nm"][outer] > 0)


def test_phase_slips_are_undone_without_changing_the_wave():
    """Single pixels 2 pi and 4 pi off, and a disk 2 pi short across its edge (what a fit of an
    island can leave), are moved back; exp(i phi) is unchanged to float precision."""
    rng = np.random.default_rng(3)
    n = 48
    smooth = np.cumsum(np.cumsum(0.01 * rng.standard_normal((n, n)), 0), 1)
    yy, xx = np.mgrid[:n, :n]
    disk = np.hypot(yy - 24, xx - 20) < 9
    slipped = smooth - 2 * np.pi * disk
    slipped[5, 40] += 2 * np.pi
    slipped[40, 11] -= 4 * np.pi
    phase = torch.tensor(slipped, dtype=torch.float64)
    moved = optimise.undo_phase_slips(phase)
    assert moved == disk.sum() + 2
    np.testing.assert_allclose(phase.numpy(), smooth, atol=1e-12)
    np.testing.assert_allclose(np.exp(1j * phase.numpy()), np.exp(1j * slipped), atol=1e-12)
    # Nothing steeper than pi: nothing is tried.
    assert optimise.undo_phase_slips(torch.tensor(smooth)) is None


def test_a_phase_that_is_not_finite_is_left_to_the_fit_to_report():
    """undo_phase_slips leaves a NaN phase alone (skimage's unwrapping of one never returns)."""
    phase = torch.zeros(16, 16)
    phase[3, 4] = torch.nan
    assert optimise.undo_phase_slips(phase) is None
    assert torch.isnan(phase[3, 4]) and torch.count_nonzero(phase.nan_to_num()) == 0


def test_island_edge_is_not_left_two_pi_short():
    """The demo's second vortex disk from three noisy images (192 px): its fit from TIE slipped
    2 pi across the disk's edge (acc 0.975) before slips were undone during the fit; now acc
    above 0.99, and the defocus within 2.5 % (three images leave it 1.7-2.1 % off)."""
    spec = next(s for s in simulate.demo_campaign() if s.series == "s04_vortex")
    spec = dataclasses.replace(
        spec, size_px=192, defocus_nominal_nm=(-1.6e6, 0.0, 1.6e6), calibration=1.05, noise_fraction=0.05, drift_px=0.0
    )
    images, truth = simulate.simulate_series(spec)
    result = reconstruct.reconstruct(
        images, np.asarray(spec.defocus_nominal_nm), PIXEL_NM, parameters.Microscope(), optimise.Settings()
    )
    assert metrics.phase_accuracy(result.phase, truth["phase"].values) >= 0.99
    outer = [0, 2]
    assert np.all(metrics.defocus_errors(result.values["defocus_nm"], truth["defocus_nm"].values)[outer] < 0.025)


@pytest.mark.integration
def test_an_aligned_drifted_series_gives_the_calibration_its_images_carry():
    """Five images of held-out patterned elements at 0.5 % noise, drifted up to 4 px and aligned
    as the workflow does: the calibration within 0.2 % of the truth (0.56 % low when the align
    stage moved the images periodically, wrapping the window's far edge into a strip the fit
    took as data: docs/physics.md, "Alignment"), no bootstrap to correct it."""
    case = corpus.Case("elements", 0, 128, 5, 1.6, 0.005)
    images, truth = corpus.simulate_case(case)
    nominal = np.asarray(case.acquisition().defocus_nominal_nm)
    registration = align.series_registration(images, nominal)
    assert np.abs(registration.shift_px).max() > 3
    settings = optimise.Settings(bootstrap_replicates=0, subfield_uncertainty=False, drift_screen=False)
    result = reconstruct.reconstruct(
        align.apply_registration(images, registration), nominal, PIXEL_NM, parameters.Microscope(), settings
    )
    outer = nominal != 0
    factor = np.mean(result.values["defocus_nm"][outer] / truth["defocus_nm"].values[outer])
    assert abs(factor - 1) < 0.002


@pytest.mark.integration
def test_drift_costs_no_accuracy_after_alignment():
    """A vortex series with drift of 2 px per image, aligned and reconstructed with the residual
    drift refined, is as accurate (within 0.005 acc) as the same series without drift."""
    acc = {}
    for drift in (0.0, 2.0):
        spec = simulate.SeriesSpec(
            "drift",
            "vortex",
            size_px=96,
            defocus_nominal_nm=FIVE,
            calibration=1.04,
            drift_px=drift,
            thickness_nm=20.0,
            n_particles=4,
            seed=2,
        )
        images, truth = simulate.simulate_series(spec)
        registration = align.series_registration(images, np.array(FIVE))
        result = reconstruct.reconstruct(
            align.apply_registration(images, registration),
            FIVE,
            PIXEL_NM,
            parameters.Microscope(),
            optimise.Settings(refine=("defocus", "shifts"), max_iterations=1500, bootstrap_replicates=0),
        )
        acc[drift] = metrics.phase_accuracy(result.phase, truth["phase"].values, border_px=8)
    assert acc[0.0] > 0.99
    assert abs(acc[2.0] - acc[0.0]) < 0.005


def test_the_reported_ramp_follows_the_fitted_ramp_and_sets_patterned_elements_nearer_their_truth():
    """The ramp the fit holds (what registration left) moves the choice by itself alone, and on a
    patterned-element field (its electrostatic rims and magnetic slopes apart) the choice leaves the
    truth nearer itself than the flattest of the total does."""
    case = corpus.Case("elements", 0, 128, 3, 0.8, 0.1)
    phase, amplitude, _, _ = corpus.field(case)
    margin = (phase.shape[0] - 128) // 2
    window = np.s_[margin : margin + 128, margin : margin + 128]
    phase, amplitude = phase[window], amplitude[window]
    nominal = np.asarray(case.acquisition().defocus_nominal_nm)
    microscope, settings = parameters.Microscope(), optimise.Settings()

    def chosen(p: np.ndarray, ramp: str = "apart") -> np.ndarray:
        return reconstruct.reported_gradient(
            p, amplitude, nominal, corpus.PIXEL_NM, microscope, dataclasses.replace(settings, ramp=ramp)
        )

    y, x = np.indices(phase.shape, dtype=float)
    held = np.array([0.03, -0.05])  # rad per px
    np.testing.assert_allclose(chosen(phase + held[0] * y + held[1] * x) - chosen(phase), held, atol=1e-6)
    acc = {
        ramp: metrics.phase_accuracy(gauge.without_ramp(phase, chosen(phase, ramp)), phase, border_px=16)
        for ramp in ("apart", "flattest")
    }
    assert acc["apart"] > acc["flattest"] + 0.001, acc


def test_binned_is_the_block_mean_and_drops_the_remainder():
    stack = np.arange(2 * 5 * 7, dtype=float).reshape(2, 5, 7)
    out = reconstruct.binned(stack, 2)
    assert out.shape == (2, 2, 3)
    assert out[1, 1, 2] == np.mean(stack[1, 2:4, 4:6])


def test_resampled_parameters_keep_the_maps_and_the_microscope():
    """Binned 2 x 2 and resampled back, a smooth phase and amplitude come back within 1 % of their
    range away from the edges; defocus and coherence are carried over, the shifts start from zero."""
    rng = np.random.default_rng(1)
    phase, log_amplitude = 3 * smooth_field(64, 6.0, rng), 0.2 * smooth_field(64, 6.0, rng)
    coarse = parameters.Parameters(
        reconstruct.binned(phase, 2), np.exp(reconstruct.binned(log_amplitude, 2)), FIVE, parameters.Microscope(), 2
    )
    with torch.no_grad():
        coarse.defocus_scale.fill_(0.03)
        coarse.beam_divergence.fill_(-11.0)
        coarse.shifts.fill_(0.4)
    fine = coarse.resampled((65, 64), 2)
    assert fine.phase.shape == (65, 64)
    inner = np.s_[2:-2, 2:-2]
    np.testing.assert_allclose(fine.phase.detach().numpy()[:64][inner], phase[inner], atol=0.01 * np.ptp(phase))
    amplitude = fine.log_amplitude.detach().numpy()[:64]
    np.testing.assert_allclose(amplitude[inner], log_amplitude[inner], atol=0.01 * np.ptp(log_amplitude))
    np.testing.assert_allclose(fine.defocus_nm().detach().numpy(), coarse.defocus_nm().detach().numpy())
    assert float(fine.beam_divergence.detach()) == -11.0
    assert float(fine.shifts.detach().abs().max()) == 0.0


def aligned_reconstruction(series: str, drift_px: float, settings: optimise.Settings):
    """A demo series simulated with ``drift_px``, aligned and reconstructed as the pipeline does:
    (truth, registration, reconstruction)."""
    spec = next(s for s in simulate.demo_campaign() if s.series == series)
    images, truth = simulate.simulate_series(dataclasses.replace(spec, drift_px=drift_px))
    registration = align.series_registration(images, np.array(spec.defocus_nominal_nm))
    result = reconstruct.reconstruct(
        align.apply_registration(images, registration),
        spec.defocus_nominal_nm,
        spec.pixel_size_nm,
        parameters.Microscope(),
        settings,
    )
    return truth, registration, result


@pytest.mark.integration
def test_stripe_island_without_drift_as_accurate_as_with():
    """The demo's stripe island, aligned and reconstructed with the defaults (the residual drift
    refined), without drift and with 3 px of drift per image: within 0.012 acc of each other
    (measured 0.9986 and 0.9919). Its fit is sensitive to the few tenths of a px the registration
    gets wrong (Lorentz deflection, in proportion to defocus), which the refined drift takes up."""
    acc = {}
    for drift in (0.0, 3.0):
        # The maps do not depend on the calibration's bootstrap: left out, for time.
        truth, _, result = aligned_reconstruction("s03_stripes", drift, optimise.Settings(bootstrap_replicates=0))
        acc[drift] = metrics.phase_accuracy(result.phase, truth["phase"].values)
    assert acc[3.0] > 0.985
    assert abs(acc[0.0] - acc[3.0]) < 0.012


@pytest.mark.integration
def test_recovered_drift_of_a_skyrmion_island():
    """The demo's skyrmion island (256 px, -1.6 ... +1.6 mm, 5 % noise, 4 % defocus
    miscalibration) with drift of 3 px per image, recorded through a window: alignment, then the
    reconstruction's refinement of the residual drift, place the defocused images within 0.08 px
    RMS of each other's true drift (0.02 px on a periodic field), and the in-focus image, whose
    drift the data identify weakly (docs/physics.md, Alignment), within 0.35 px of them; better
    than the alignment alone."""
    truth, registration, result = aligned_reconstruction(
        "s02_skyrmions", 3.0, optimise.Settings(refine=("defocus", "shifts"), bootstrap_replicates=0)
    )
    true_shifts = np.stack([truth["shift_y_px"].values, truth["shift_x_px"].values], axis=1)
    nominal = truth["defocus_nominal_nm"].values
    recovered = reconstruct.total_drift(registration.shift_px, result, nominal)
    rms = lambda s: float(np.sqrt(np.mean(np.sum(s**2, axis=1))))  # noqa: E731
    error = recovered - true_shifts  # the in-focus image (reference) has error 0 by definition
    defocused = np.abs(nominal) > 0
    offset = error[defocused].mean(axis=0)  # of the defocused images against the in-focus one
    assert rms(error[defocused] - offset) < 0.08
    assert np.hypot(*offset) < 0.35
    assert rms(error) < rms(registration.shift_px - true_shifts)
    assert metrics.phase_accuracy(result.phase, truth["phase"].values) > 0.99


def test_a_diverged_series_fails_alone_in_the_cli(tmp_path, aligned_store, monkeypatch):
    """``phasepipe reconstruct`` run alone exits with status 1 on a diverged fit and writes nothing;
    in the workflow (``--record-failure``) it writes a failed store naming the series and the stage
    (as bad input is), so that the release lists it and other series go on."""
    spec = simulate.SeriesSpec("s9", "vortex", size_px=48, defocus_nominal_nm=FIVE, drift_px=0.0, n_particles=2)
    store, _ = aligned_store(tmp_path / "aligned.zarr", spec)
    monkeypatch.setitem(parameters.OBJECT_OPTIONS, "log_amplitude", parameters.ParameterOptions(lr=1e3))
    out = tmp_path / "out.zarr"
    command = ["reconstruct", "--in", str(store), "--out", str(out), "--settings", '{"iterations": 20}']
    with pytest.raises(SystemExit) as stop:
        cli.main(command)
    assert stop.value.code == 1 and not out.exists()
    cli.main([*command, "--record-failure"])
    ds = io.open_store(out)
    assert io.is_failed(ds) and ds.attrs["failed_stage"] == "reconstruct"
    assert ds.attrs["error"].startswith("series s9: the fit diverged: misfit nan at iteration ")


def test_beam_divergence_is_recovered_from_a_factor_two_off():
    """Refined from twice its true value on a small 5-image vortex series (5 nm pixels, +-1.6 mm,
    5 % noise), the beam divergence comes back within 20 % (docs/physics.md: where it matters)."""
    spec = simulate.SeriesSpec(
        "coherence", "vortex", size_px=96, defocus_nominal_nm=FIVE, noise_fraction=0.05, drift_px=0.0, thickness_nm=20.0
    )
    images, _ = simulate.simulate_series(spec)
    start = parameters.Microscope(beam_divergence_mrad=2 * spec.beam_divergence_mrad)
    settings = optimise.Settings(refine=("defocus", "beam_divergence"), max_iterations=1500)
    result = reconstruct.reconstruct(images, FIVE, PIXEL_NM, start, settings)
    assert result.values["beam_divergence_mrad"] == pytest.approx(spec.beam_divergence_mrad, rel=0.2)
    assert result.stds["beam_divergence_mrad"] > 0


def test_uncertainty_is_the_curvature_of_the_misfit():
    """With only the beam divergence refined, its std is sqrt(2 L / (M H)) d(theta_mrad)/d(log theta),
    L the misfit, M the number of data values and H the misfit's second derivative in log theta
    (central differences here, autograd's Hessian in the code); what is not refined gets 0."""
    model, params, data = float64_problem()
    settings = optimise.Settings(refine=("beam_divergence",))
    std = uncertainty.curvature_std(model, params, data, settings)

    def misfit(log_theta: float) -> float:
        with torch.no_grad():
            params.beam_divergence.fill_(log_theta)
            return torch.mean((model(params, False) - data) ** 2).item()

    centre, step = params.beam_divergence.item(), 1e-3
    curvature = (misfit(centre + step) - 2 * misfit(centre) + misfit(centre - step)) / step**2
    expected = np.sqrt(2 * misfit(centre) / data.numel() / curvature) * np.exp(centre) * 1e3
    assert set(std) == {output.name for output in parameters.outputs()}
    assert std["beam_divergence_mrad"] == pytest.approx(expected, rel=1e-3)
    assert sum(np.count_nonzero(value) for value in std.values()) == 1
    assert std["shifts_px"].shape == (data.shape[0], 2)


def test_a_diverging_fit_stops_with_a_message_naming_the_iteration():
    """An amplitude learning rate far too large (its log steps by 1e3, so exp overflows) makes the
    misfit NaN from the second iteration on: the fit stops there rather than return maps of NaN."""
    model, params, data = float64_problem()
    options = {**parameters.default_options(), "log_amplitude": parameters.ParameterOptions(lr=1e3)}
    settings = optimise.Settings(refine=("defocus",), max_iterations=50, options=options)
    message = r"misfit nan at iteration 2 of the 32 x 32 px fit \(defocus_nm \["
    with pytest.raises(optimise.FitDiverged, match=message):
        optimise.fit(model, params, data, settings, tv_weight=1e-3)


def test_uncertainty_of_a_non_finite_curvature_is_nan_for_what_was_refined():
    """Where the loss's curvature is not finite the refined values' std are NaN, not an error;
    what is not refined (or, like the in-focus image's defocus, does not move) keeps 0."""
    model, params, data = float64_problem()
    with torch.no_grad():
        params.log_amplitude.fill_(400.0)  # |psi|^2 = e^1600 overflows float64
    settings = optimise.Settings(refine=("defocus", "beam_divergence"))
    std = uncertainty.curvature_std(model, params, data, settings)
    assert np.isnan(std["defocus_nm"][[0, 2]]).all() and np.isnan(std["beam_divergence_mrad"])
    assert std["defocus_nm"][1] == 0 and std["defocus_spread_nm"] == 0 and (std["shifts_px"] == 0).all()

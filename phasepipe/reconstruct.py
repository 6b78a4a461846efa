"""Differentiable reconstruction of one series: the forward model fitted to its images by autodiff.

Three parts, kept apart (in the spirit of pty-chi): the unknowns (:mod:`phasepipe.parameters`,
built from the registry of refinable parameters), the forward model (:mod:`phasepipe.model`) and
the optimiser (:mod:`phasepipe.optimise`). :func:`reconstruct` ties them together for one series:
a first fit of the series binned ``coarse_factor`` x ``coarse_factor`` from the TIE phase, then
the full-resolution fit from its result, on a canvas wider than the images, and the uncertainty;
:func:`result_dataset` writes what it found as the reconstructed Dataset.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import xarray as xr

from phasepipe import gauge, physics, separation
from phasepipe.align import shift_window
from phasepipe.model import ForwardModel
from phasepipe.optimise import FitResult, Settings, defocus_levels, fit
from phasepipe.parameters import Microscope, Parameters, output_values, outputs
from phasepipe.tie import tie_phase

log = logging.getLogger(__name__)

COARSE_MIN_PX = 64  # a coarse fit only where the binned canvas keeps at least this many px a side
# The auto TV weight of images with less than 3.2 % noise: phase that no image sees (beyond the
# beam divergence's envelope, without contrast in focus) needs some regularisation even in clean
# data, or the defocus drifts with it (docs/physics.md, `tv_weight: auto`).
TV_WEIGHT_FLOOR = 5e-4


def noise_level(images: np.ndarray) -> float:
    """Relative noise of mean-normalised images, from their finest-scale wavelet coefficients."""
    from skimage.restoration import estimate_sigma

    return float(np.mean([estimate_sigma(im / im.mean()) for im in images]))


def auto_tv_weight(noise: float, rule: tuple[float, float] = (0.15, 1.0)) -> float:
    """TV weight ``scale * noise ** power`` for ``rule`` = (scale, power), and no less than
    ``TV_WEIGHT_FLOOR`` (see docs/physics.md)."""
    scale, power = rule
    return max(scale * noise**power, TV_WEIGHT_FLOOR)


@dataclass
class Reconstruction:
    """Result of :func:`reconstruct` for one series, as plain arrays and numbers."""

    phase: np.ndarray
    amplitude: np.ndarray
    tie_phase: np.ndarray
    # Every registered output (parameters.outputs) by name, in physical units: a float for a
    # series value, (N,) or (N, k) per image; shifts_px is the drift beyond the align stage's:
    # refined, plus the ramp's (gauge.py).
    values: dict[str, np.ndarray | float]
    stds: dict[str, np.ndarray | float]  # their std, by the output's name; 0 where not refined
    loss: float
    noise: float
    tv_weight: float
    iterations: int
    seconds: float
    calibration_subfields: np.ndarray = field(default_factory=lambda: np.array([]))  # factors of 2 x 2 sub-fields
    calibration_bootstrap: np.ndarray = field(default_factory=lambda: np.array([]))  # factors refitted on replicates
    # with a second level: each replicate's fit drawn from and refitted once more, over its factor
    calibration_bootstrap_second: np.ndarray = field(default_factory=lambda: np.array([]))
    calibration_half_tv: float = math.nan  # the factor refitted at half the TV weight (bias.prior_sensitivity)


def chosen_tv_weight(noise: float, settings: Settings) -> float:
    """The TV weight of a fit: ``settings.tv_weight``, or by ``settings.tv_rule`` from the images'
    relative ``noise`` (:func:`auto_tv_weight`) where that is None."""
    return auto_tv_weight(noise, settings.tv_rule) if settings.tv_weight is None else settings.tv_weight


def binned(stack: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks of the last two axes (a remainder at the far edges
    is dropped)."""
    *lead, h, w = stack.shape
    hb, wb = h // factor, w // factor
    block = stack[..., : hb * factor, : wb * factor].reshape(*lead, hb, factor, wb, factor)
    return block.mean(axis=(-3, -1))


def binned_measured(measured: np.ndarray | None, factor: int) -> np.ndarray | None:
    """Where a series binned ``factor`` x has data (None: everywhere): a binned pixel is data only
    where all it holds is."""
    return None if measured is None else (binned(measured, factor) > 1 - 1e-6).astype(np.float64)


@dataclass
class CanvasFit:
    """A fitted canvas: the model and parameters at their optimum, with what chose the fit."""

    model: ForwardModel
    params: Parameters
    data: torch.Tensor
    result: FitResult
    noise: float
    tv_weight: float


def fit_canvas(
    images: np.ndarray,
    measured: np.ndarray | None,
    start_phase: np.ndarray,
    nominal: np.ndarray,
    pixel_size_nm: float,
    microscope: Microscope,
    settings: Settings,
    progress=None,
    shifts_px: np.ndarray | None = None,
) -> CanvasFit:
    """Fit the series ``images`` (N, y, x; data where ``measured``, or everywhere).

    With ``settings.coarse_factor`` > 1 (and a canvas that stays at least ``COARSE_MIN_PX`` px
    binned), the series binned that much is fitted first, and the fit here starts from its result
    (docs/physics.md, Coarse to fine); otherwise from ``start_phase`` (TIE) and the in-focus
    image's amplitude. ``shifts_px`` (N, 2), at this canvas' pixels, starts the refined drift
    (:mod:`phasepipe.drift_screen`); zeros otherwise.
    """
    reference = int(np.argmin(np.abs(nominal)))
    # Mean-normalised over the measured pixels, as the model's images are.
    weight = np.ones(images.shape[1:]) if measured is None else measured
    data_np = images / (np.sum(images * weight, axis=(1, 2), keepdims=True) / weight.sum())
    noise = noise_level(images)
    tv_weight = chosen_tv_weight(noise, settings)
    factor = settings.coarse_factor
    coarse_seconds = 0.0
    if factor > 1 and min(images.shape[1:]) // factor >= COARSE_MIN_PX:
        coarse_images = binned(images, factor)
        coarse = fit_canvas(
            coarse_images,
            binned_measured(measured, factor),
            tie_phase(coarse_images, nominal, pixel_size_nm * factor, microscope.voltage_kv * 1e3),
            nominal,
            pixel_size_nm * factor,
            microscope,
            # The drift is left to the full resolution, where it is identified best; the TV weight
            # is the full resolution's (the binned images' lower noise would choose a weaker one,
            # which on three noisy images biased the defocus twice as much, docs/physics.md).
            replace(
                settings,
                coarse_factor=1,
                refine=tuple(name for name in settings.refine if name != "shifts"),
                tv_weight=tv_weight,
            ),
        )
        coarse_seconds = coarse.result.seconds
        log.info("coarse fit (binned %d x): %d iterations, %.1f s", factor, coarse.result.iterations, coarse_seconds)
        params = coarse.params.resampled(images.shape[1:], factor)
    else:
        amplitude = np.sqrt(np.clip(data_np[reference], 1e-3, None))
        params = Parameters(start_phase, amplitude, nominal, microscope, reference).to(settings.device)
    if shifts_px is not None:
        with torch.no_grad():
            params.shifts.copy_(torch.as_tensor(shifts_px, dtype=params.shifts.dtype))
    model = ForwardModel(images.shape[1:], pixel_size_nm, microscope, settings.device, measured)
    data = torch.as_tensor(data_np, dtype=torch.float32, device=settings.device)
    log.info(
        "%d x %d px: noise %.4f, tv_weight %.3e, refine %s", *images.shape[1:], noise, tv_weight, list(settings.refine)
    )
    result = fit(model, params, data, settings, tv_weight, progress)
    result.seconds += coarse_seconds
    return CanvasFit(model, params, data, result, noise, tv_weight)


def padded(images: np.ndarray, margin_px: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``images`` (N, y, x) on a canvas ``margin_px`` wider on every side, and where their data are
    (None: everywhere, without a margin). The margin holds the images reflected, which only start
    TIE and the amplitude; the misfit ignores it."""
    if not margin_px:
        return images, None
    pad = ((0, 0), (margin_px, margin_px), (margin_px, margin_px))
    return np.pad(images, pad, mode="reflect"), np.pad(np.ones(images.shape[1:]), pad[1:])


def fit_window(
    images: np.ndarray,
    nominal: np.ndarray,
    pixel_size_nm: float,
    microscope: Microscope,
    settings: Settings,
    margin_px: int,
    progress=None,
) -> tuple[CanvasFit, np.ndarray]:
    """Fit the aligned series ``images`` (N, y, x) on a canvas ``margin_px`` wider on every side
    (:func:`reconstruct`), from TIE: the fit and the TIE phase, both on the canvas."""
    images, measured = padded(images, margin_px)
    tie = tie_phase(images, nominal, pixel_size_nm, microscope.voltage_kv * 1e3)
    return fit_canvas(images, measured, tie, nominal, pixel_size_nm, microscope, settings, progress), tie


def reconstruct(
    images: np.ndarray,
    defocus_nominal_nm: np.ndarray,
    pixel_size_nm: float,
    microscope: Microscope,
    settings: Settings,
    progress=None,
    margin_px: int | None = None,
) -> Reconstruction:
    """Recover phase, amplitude and the refined microscope parameters of one aligned series.

    The fit runs coarse to fine (:func:`fit_canvas`); ``progress`` follows the full-resolution
    fit, and the iterations reported are its own. The object is fitted on a canvas wider than the images by
    ``margin_px`` on every side, where no data constrain it, so that the FFT's periodic wrap-around
    falls outside the data: a microscope records a window of a larger field, which is not periodic.
    ``None``: as ``settings.margin`` says, by default the Fresnel spread of the largest defocus
    (:func:`canvas_margin_px`); 0: a periodic field. The maps returned cover the images. With
    ``settings.drift_screen`` the forward model first picks the drift among registration's
    alternatives (:mod:`phasepipe.drift_screen`), and the drift reported includes its choice.
    """
    images = np.asarray(images, dtype=np.float64)
    nominal = np.asarray(defocus_nominal_nm, dtype=np.float64)
    if margin_px is None:
        margin_px = canvas_margin_px(nominal, pixel_size_nm, microscope) if settings.margin == "auto" else 0
    height, width = images.shape[1:]
    inner = np.s_[margin_px : margin_px + height, margin_px : margin_px + width]
    if "defocus_spread" in settings.refine:
        log.warning(
            "defocus_spread is refined, but its envelope does not depend on defocus: a series cannot "
            "tell it from the object's own resolution, so the value is not a measurement (docs/physics.md)"
        )
    from phasepipe import bias, drift_screen, uncertainty  # they build on this module's model and fit

    screened = np.zeros((len(images), 2))
    if settings.drift_screen:
        screened = drift_screen.screened_drift(images, nominal, pixel_size_nm, microscope, settings, margin_px)
        if np.any(screened):
            images = np.stack([shift_window(image, drift) for image, drift in zip(images, screened, strict=True)])
    fitted, tie = fit_window(images, nominal, pixel_size_nm, microscope, settings, margin_px, progress)
    params, result = fitted.params, fitted.result
    std = uncertainty.curvature_std(fitted.model, params, fitted.data, settings)
    subfields = np.array([])
    if "defocus" in settings.refine and settings.subfield_uncertainty:
        relative, subfields = uncertainty.subfield_calibration_std(
            images,
            params.phase.detach().cpu().numpy().copy(),  # copies: the sub-fields' fits write their own
            params.log_amplitude.detach().cpu().numpy().copy(),
            margin_px,
            nominal,
            math.exp(params.defocus_scale.item()),
            pixel_size_nm,
            microscope,
            settings,
            fitted.tv_weight,
        )
        with torch.no_grad():
            std["defocus_nm"] = np.maximum(std["defocus_nm"], relative * np.abs(params.defocus_nm().cpu().numpy()))
    bootstrap, second, half_tv = np.array([]), np.array([]), math.nan
    if "defocus" in settings.refine and settings.bootstrap_replicates:
        refits = (fitted, images, nominal, pixel_size_nm, microscope, settings, margin_px, std)
        if settings.prior_refit:
            half_tv = bias.prior_sensitivity(*refits)
        bootstrap, second = bias.bootstrap_correction(*refits)
    with torch.no_grad():
        phase = params.phase.cpu().numpy()[inner]
        amplitude = params.log_amplitude.exp().cpu().numpy()[inner]
        values = output_values(params)
    # A canvas wider than the images can hold a ramp, which the data do not fix: one is chosen
    # (reported_gradient), and the drift takes up the rest (phasepipe/gauge.py).
    gradient = (
        reported_gradient(phase, amplitude, nominal, pixel_size_nm, microscope, settings) if margin_px else np.zeros(2)
    )
    wavelength_nm = physics.wavelength_nm(microscope.voltage_kv * 1e3)
    values["shifts_px"] = (
        values["shifts_px"]
        + screened
        + gauge.ramp_shift_px(gradient, values["defocus_nm"], pixel_size_nm, wavelength_nm)
    )
    with torch.no_grad():
        return Reconstruction(
            phase=gauge.without_ramp(phase, gradient).astype(np.float32),
            amplitude=amplitude.astype(np.float32),
            tie_phase=tie[inner].astype(np.float32),
            values=values,
            stds=std,
            loss=result.loss,
            noise=fitted.noise,
            tv_weight=fitted.tv_weight,
            iterations=result.iterations,
            seconds=result.seconds,
            calibration_subfields=subfields,
            calibration_bootstrap=bootstrap,
            calibration_bootstrap_second=second,
            calibration_half_tv=half_tv,
        )


def reported_gradient(
    phase: np.ndarray,
    amplitude: np.ndarray,
    nominal: np.ndarray,
    pixel_size_nm: float,
    microscope: Microscope,
    settings: Settings,
) -> np.ndarray:
    """The ramp (g_y, g_x, rad per px) taken from a fitted ``phase`` as ``settings.ramp`` says:
    the flattest of its part that follows the absorption and of the rest apart, the absorption
    compared with the phase at the series' resolution as the absorption split does
    (:func:`phasepipe.gauge.flattest_apart`), or the flattest of the total."""
    if settings.ramp == "flattest":
        return gauge.flattest_gradient(phase)
    resolved = separation.series_resolution(nominal, microscope.beam_divergence_mrad, pixel_size_nm)
    smoothing_px = separation.band_sigma_px(separation.ABSORPTION_BAND, resolved, pixel_size_nm)
    scale, absorption = separation.absorption_scale(phase, amplitude, smoothing_px)
    return gauge.flattest_apart(phase, absorption, scale)


def canvas_margin_px(defocus_nominal_nm: np.ndarray, pixel_size_nm: float, microscope: Microscope) -> int:
    """The margin of a field's canvas: how far its largest defocus carries content sideways."""
    largest = float(np.abs(np.asarray(defocus_nominal_nm, float)).max())
    theta = microscope.beam_divergence_mrad * 1e-3
    return physics.fresnel_spread_px(microscope.voltage_kv * 1e3, theta, largest, pixel_size_nm)


def single_defocus_level(defocus_nominal_nm: np.ndarray, refine: tuple[str, ...]) -> float | None:
    """The one |defocus| (nm) of a series whose defocused images all sit at it (a +-df pair, or
    one image), when its defocus is refined; None otherwise.

    Such a series identifies the defocus calibration only through non-linear effects (Fresnel
    fringes of edges), a weak phase not at all: the CLI warns (docs/physics.md, "What the data
    identify").
    """
    level = defocus_levels(defocus_nominal_nm)
    levels = np.unique(level[level > 0])
    if len(levels) == 1 and {"defocus", "defocus_per_image"} & set(refine):
        return float(levels[0])
    return None


def settings_from_config(section: dict) -> Settings:
    """Resolve the ``reconstruction`` config section (see config/README.md) into :class:`Settings`,
    after checking it against the schema, the shipped defaults filling in what it lacks
    (:func:`configuration.section`)."""
    from phasepipe import configuration

    section = configuration.section("reconstruction", section)
    device = section["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("reconstruction.device is 'cuda' but PyTorch sees no CUDA device")
    iterations, tv = section["iterations"], section["tv_weight"]
    # "auto" and "<k> noise" choose the weight per series from its measured noise (the latter k times
    # it, for a specimen whose prior strength is known: docs/physics.md, "Validation").
    per_noise = isinstance(tv, str)
    return Settings(
        refine=tuple(section["refine"]),
        max_iterations=Settings.max_iterations if iterations == "auto" else iterations,
        converge=iterations == "auto",
        tv_weight=None if per_noise else float(tv),
        tv_rule=(float(tv.split()[0]), Settings.tv_rule[1]) if per_noise and tv != "auto" else Settings.tv_rule,
        device=device,
        separation=section["separation"],
        bootstrap_replicates=section["bootstrap"],
        drift_screen=section["drift_screen"],
    )


def total_drift(aligned_px: np.ndarray, result: Reconstruction, defocus_nominal_nm: np.ndarray) -> np.ndarray:
    """Every image's drift (N, 2): the align stage's plus what the fit refined, relative to the
    reference image (nominal defocus nearest 0), as the align stage reports it."""
    drift = np.asarray(aligned_px, float) + result.values["shifts_px"]
    return drift - drift[int(np.argmin(np.abs(defocus_nominal_nm)))]


def reconstruct_dataset(ds: xr.Dataset, settings: Settings, progress=None) -> xr.Dataset:
    """Reconstruct an aligned series store into the reconstructed Dataset (phase, parameters)."""
    microscope = Microscope(**json.loads(ds.attrs["microscope"]))
    nominal = ds["defocus_nominal_nm"].values
    result = reconstruct(ds["intensity"].values, nominal, ds.attrs["pixel_size_nm"], microscope, settings, progress)
    return result_dataset(ds, result, settings)


def result_dataset(ds: xr.Dataset, result: Reconstruction, settings: Settings) -> xr.Dataset:
    """The reconstructed Dataset of an aligned series and its :class:`Reconstruction` (whose maps
    may be lazy arrays: the tiled path writes them region by region)."""
    nominal = ds["defocus_nominal_nm"].values
    values = dict(result.values)
    values["shifts_px"] = total_drift(
        np.stack([ds["shift_y_px"].values, ds["shift_x_px"].values], axis=1), result, nominal
    )
    variables = {
        "phase": (("y", "x"), result.phase),
        "amplitude": (("y", "x"), result.amplitude),
        "tie_phase": (("y", "x"), result.tie_phase),
        "defocus_nominal_nm": (("image",), nominal),
    }
    attrs = dict(ds.attrs)
    for output in outputs():
        if output.per_image:
            for names, table in ((output.columns, values), (output.std_columns, result.stds)):
                columns = np.asarray(table[output.name], float).reshape(len(nominal), -1)
                variables.update({name: (("image",), columns[:, k]) for k, name in enumerate(names)})
        else:
            attrs.update({output.name: values[output.name], output.std: result.stds[output.name]})
    out = xr.Dataset(
        {
            **variables,
            "rotation_deg": ds["rotation_deg"],
            "scale": ds["scale"],
            "registration_confidence": ds["registration_confidence"],
        },
        coords={"image": ds["image"], "y": ds["y"], "x": ds["x"]},
        attrs={
            **attrs,
            "refined": json.dumps(list(settings.refine)),
            "calibration_subfields": json.dumps([round(float(c), 6) for c in result.calibration_subfields]),
            "calibration_bootstrap": json.dumps([round(float(c), 6) for c in result.calibration_bootstrap]),
            "calibration_bootstrap_second": json.dumps(
                [round(float(c), 6) for c in result.calibration_bootstrap_second]
            ),
            "calibration_half_tv": result.calibration_half_tv,
            "final_loss": result.loss,
            "noise": result.noise,
            "tv_weight": result.tv_weight,
            "iterations": result.iterations,
            "iteration_cap": settings.max_iterations,
            # iterations: auto stops on convergence; reaching the cap instead means it did not converge
            "stopped_at_cap": int(settings.converge and result.iterations >= settings.max_iterations),
            "seconds": result.seconds,
            "device": settings.device,
        },
    )
    return out

"""Differentiable reconstruction: the forward model fitted to a through-focus series by autodiff.

Three parts, kept apart (in the spirit of pty-chi):

- :class:`~phasepipe.parameters.Parameters` (:mod:`phasepipe.parameters`) holds every unknown in
  the parametrisation the optimiser sees, built from the registry of refinable parameters.
- :class:`ForwardModel` turns parameters into predicted intensities with :mod:`phasepipe.physics`
  (and the registered parameters' own terms).
- :func:`fit` runs one Adam optimiser per parameter group, each with its own learning rate and the
  iteration from which it is refined (:class:`~phasepipe.parameters.ParameterOptions`), and stops
  on convergence.

:func:`reconstruct` ties them together for one series: a first fit of the series binned
``coarse_factor`` x ``coarse_factor`` from the TIE phase, then the full-resolution fit from its
result (see :func:`reconstruct`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import xarray as xr

from phasepipe import fused, gauge, physics
from phasepipe.fused import total_variation
from phasepipe.parameters import (
    REGISTRY,
    Microscope,
    ParameterOptions,
    Parameters,
    default_options,
    outputs,
    refined_tensors,
)
from phasepipe.tie import tie_phase

log = logging.getLogger(__name__)

MAX_DECAYS = 3
UNWRAP_EVERY = 20  # iterations between looks for 2 pi slips of the phase (undo_phase_slips)
READ_BACK = 10  # iterations between reading a GPU's misfits back to the host
COARSE_MIN_PX = 64  # a coarse fit only where the binned canvas keeps at least this many px a side
# The auto TV weight of images with less than 3.2 % noise: phase that no image sees (beyond the
# beam divergence's envelope, without contrast in focus) needs some regularisation even in clean
# data, or the defocus drifts with it (docs/physics.md, `tv_weight: auto`).
TV_WEIGHT_FLOOR = 5e-4


class FitDiverged(RuntimeError):
    """A fit's misfit became infinite or NaN: the message names the iteration, the canvas and the
    defocus."""


@dataclass(frozen=True)
class Settings:
    """Reconstruction settings (the ``reconstruction`` config section, resolved)."""

    refine: tuple[str, ...] = ("defocus", "shifts")
    max_iterations: int = 4000
    converge: bool = True  # stop on a relative loss change below ``tolerance``
    tolerance: float = 1e-3
    tv_weight: float | None = None  # None = chosen from the measured noise by tv_rule
    tv_rule: tuple[float, float] = (0.15, 1.0)  # (scale, power) of auto_tv_weight (benchmarks/tune.py)
    device: str = "cpu"
    options: dict[str, ParameterOptions] = field(default_factory=default_options)
    log_every: int = 100
    continuation_step: int = 150  # iterations between admitting the next |defocus| level
    coarse_factor: int = 2  # binning of the first, coarse fit (1: none)
    margin: str = "auto"  # the canvas beyond the images: "auto" (canvas_margin_px) or "none" (periodic)
    subfield_uncertainty: bool = True  # the calibration's std from 2 x 2 sub-fields too (uncertainty.py)


class ForwardModel:
    """Predicted mean-normalised intensities of a series for given :class:`Parameters`."""

    def __init__(self, shape, pixel_size_nm: float, microscope: Microscope, device: str, measured=None):
        # measured (y, x; 1 or 0): where data exist, when the canvas is wider than the images.
        self.measured = None if measured is None else torch.as_tensor(measured, dtype=torch.float32, device=device)
        qy, qx = physics.frequency_grid(shape, pixel_size_nm)
        self.qy = torch.as_tensor(qy, dtype=torch.float32, device=device)
        self.qx = torch.as_tensor(qx, dtype=torch.float32, device=device)
        self.q2 = self.qy**2 + self.qx**2
        self.pixel_size_nm = pixel_size_nm
        self.wavelength_nm = physics.wavelength_nm(microscope.voltage_kv * 1e3)
        self.cs_nm = microscope.cs_mm * 1e6
        self._fixed_coefficients: tuple = ()
        self._fixed_key: tuple = ()
        self._series_misfit = fused.SeriesMisfit(
            self.qy, self.qx, self.wavelength_nm, self.cs_nm, self.pixel_size_nm, self.measured
        )

    def transfer(self, params: Parameters, defocus_nm: torch.Tensor) -> torch.Tensor:
        """T of every image. Its q-maps (:func:`physics.transfer_coefficients`) depend only on the
        coherence parameters: while those are not refined they are computed once and kept (keyed
        on the parameters' in-place version counters, so that any change of value recomputes)."""
        leaves = (params.beam_divergence, params.defocus_spread)
        theta, spread = params.beam_divergence_rad(), params.defocus_spread_nm()
        if any(leaf.requires_grad for leaf in leaves):
            return physics.transfer_from_coefficients(
                physics.transfer_coefficients(self.q2, self.wavelength_nm, self.cs_nm, theta, spread),
                defocus_nm.float()[:, None, None],
            )
        key = (id(params), *(leaf._version for leaf in leaves))
        if self._fixed_key != key:
            self._fixed_coefficients = physics.transfer_coefficients(
                self.q2, self.wavelength_nm, self.cs_nm, theta, spread
            )
            self._fixed_key = key
        return physics.transfer_from_coefficients(self._fixed_coefficients, defocus_nm.float()[:, None, None])

    def __call__(
        self,
        params: Parameters,
        refine_shifts: bool,
        defocus_nm: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The images of ``params``."""
        ramp = physics.shift_ramp(self.qy, self.qx, params.shifts_px(), self.pixel_size_nm) if refine_shifts else None
        defocus_nm = params.defocus_nm() if defocus_nm is None else defocus_nm
        wave = params.wave()
        intensity = physics.image_intensities(wave, self.transfer(params, defocus_nm), ramp)
        for entry in REGISTRY.values():
            if entry.term is not None:
                intensity = entry.term(params, intensity)
        # Mean-normalised (over the measured pixels, as the data are): exposure and the envelopes'
        # loss of mean intensity drop out.
        return self.mean_normalised(intensity)

    def mean_normalised(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (N, y, x) divided by each one's mean over the measured pixels."""
        if self.measured is None:
            return images / images.mean(dim=(1, 2), keepdim=True)
        return images / (torch.sum(images * self.measured, dim=(1, 2), keepdim=True) / self.measured.sum())

    def objective(
        self,
        params: Parameters,
        data: torch.Tensor,
        active: torch.Tensor,
        refine_shifts: bool,
        tv_weight: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss misfit + tv_weight TV(phase) and the misfit: the mean over the ``active``
        images (N, 0 or 1) of the mean squared difference between the predicted images and
        ``data``. Only the loss carries a gradient.

        A float32 model on the CPU takes the fast path (:class:`fused.SeriesMisfit`: loss, misfit
        and analytic gradient in one pass over the series, first order only, images of ``active``
        0 skipped; with a tile's mask of measured pixels too) when it models every parameter of
        ``params`` (``fused.COVERS``) and differentiates every refined one, those that require a
        gradient (``fused.DIFFERENTIATES``). Anything else (refined coherence, a parameter the
        fast path does not declare, a float64 model, a GPU, where the fast path is untested) uses
        autograd through :meth:`__call__`, so that no parameter is ever left out of the images
        nor a refined one without a gradient.
        """
        phase = params.phase
        weight = (active / active.sum()).to(data.dtype)
        names = {name for name, _ in params.named_parameters()}
        refined = {name for name, value in params.named_parameters() if value.requires_grad}
        fast = (
            self.q2.dtype == torch.float32
            and self.q2.device.type == "cpu"
            and names <= fused.COVERS
            and refined <= fused.DIFFERENTIATES
        )
        if not fast:
            predicted = self(params, refine_shifts)
            misfit = torch.sum(misfit_per_image(predicted, data, self.measured) * weight)
            return misfit + tv_weight * total_variation(phase), misfit.detach()
        shifts = params.shifts_px() if refine_shifts else torch.zeros_like(params.shifts)
        return self._series_misfit(
            phase,
            params.log_amplitude,
            params.defocus_nm(),
            shifts,
            data,
            weight,
            params.beam_divergence_rad(),
            params.defocus_spread_nm(),
            tv_weight,
        )


def unwrapped(phase: np.ndarray) -> np.ndarray:
    """``phase`` with every region moved by the multiple of 2 pi that makes no step between
    neighbouring pixels exceed pi where that is possible (skimage's unwrapping of exp(i phi)).

    The model sees only exp(i phi), so this changes no image: it undoes 2 pi slips that a fit
    leaves behind (single pixels at steep edges, or a whole island's phase 2 pi short across its
    edge, which the total variation alone cannot undo) and which would otherwise bias what the
    phase is fitted with, the defocus first.
    """
    from skimage.restoration import unwrap_phase

    phase = np.asarray(phase, np.float64)
    turns = np.round((unwrap_phase(np.angle(np.exp(1j * phase))) - phase) / (2 * np.pi))
    return phase + 2 * np.pi * (turns - np.median(turns))  # the largest region stays where it is


def undo_phase_slips(phase: torch.Tensor) -> int | None:
    """Replace ``phase`` in place by :func:`unwrapped` where some neighbouring pixels differ by more
    than pi and the total variation falls by it. Returns the pixels moved: None where no step
    exceeds pi (nothing to try) or the phase is not finite, 0 where unwrapping would not lower the
    total variation."""
    with torch.no_grad():
        steepest = torch.maximum(phase.diff(dim=0).abs().max(), phase.diff(dim=1).abs().max())
        # "not >": a NaN phase (a diverged fit, which fit reports) would hang skimage's unwrapping.
        if not float(steepest) > math.pi:
            return None
        candidate = torch.as_tensor(unwrapped(phase.cpu().numpy()), dtype=phase.dtype, device=phase.device)
        moved = int(torch.count_nonzero((candidate - phase).abs() > math.pi))
        if moved == 0 or float(total_variation(candidate)) >= float(total_variation(phase)):
            return 0
        phase.copy_(candidate)
        return moved


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
class FitResult:
    loss: float
    iterations: int
    history: list[float]
    seconds: float


def defocus_levels(defocus_nm: np.ndarray) -> np.ndarray:
    """Each image's |defocus| (nm, to 1e-3 nm): images at one level share it exactly."""
    return np.round(np.abs(np.asarray(defocus_nm, dtype=np.float64)), 3)


def continuation_schedule(defocus_nm: np.ndarray, step: int) -> np.ndarray:
    """First iteration at which each image enters the misfit: defocus continuation.

    Images far from focus are strongly non-linear in the phase; fitting the near-focus ones first
    brings the phase into the basin of the true solution before they join. The two smallest
    |defocus| levels start together (focus alone carries no phase); each further level follows
    ``step`` iterations later.
    """
    level = defocus_levels(defocus_nm)
    rank = np.searchsorted(np.unique(level), level)
    return np.maximum(rank - 1, 0) * step


def fit(
    model: ForwardModel,
    params: Parameters,
    data: torch.Tensor,
    settings: Settings,
    tv_weight: float,
    progress=None,
) -> FitResult:
    """Fit ``params`` to ``data`` (N, y, x mean-normalised) by Adam, a parameter group for each of
    phase, log amplitude and the refined microscope parameters, with its own rate and start."""
    included = continuation_schedule(params.defocus_start_nm.cpu().numpy(), settings.continuation_step)
    refined = refined_tensors(settings.refine)
    groups = ["phase", "log_amplitude", *refined]
    optimiser = torch.optim.Adam(
        [{"params": [getattr(params, name)], "lr": settings.options[name].lr} for name in groups], fused=True
    )
    for entry in REGISTRY.values():
        getattr(params, entry.tensor).requires_grad_(entry.tensor in refined)
    last_start = max(max(settings.options[name].start for name in groups), int(included.max()))
    included = torch.as_tensor(included, device=data.device)
    # A GPU runs ahead of the host: its misfits are read back every READ_BACK iterations, not each
    # one, so that the host does not wait on it every iteration (a CPU's at once).
    read_back = 1 if data.device.type == "cpu" else READ_BACK
    pending: list[torch.Tensor] = []
    history: list[float] = []
    t0 = time.perf_counter()
    window = 50
    it = 0
    decays = 0
    last_decay = 0
    unwrap_interval = next_unwrap = UNWRAP_EVERY
    for it in range(1, settings.max_iterations + 1):
        optimiser.zero_grad(set_to_none=True)
        active = (included <= it).to(data.dtype)
        loss, misfit = model.objective(params, data, active, "shifts" in settings.refine, tv_weight)
        loss.backward()
        for name in groups:
            if it <= settings.options[name].start:
                getattr(params, name).grad = None  # Adam leaves a parameter without gradient as it is
        optimiser.step()
        pending.append(misfit)
        with torch.no_grad():
            params.phase -= params.phase.mean()  # the global phase constant is unobservable
        if it == next_unwrap:
            moved = undo_phase_slips(params.phase)
            if moved:
                log.info("iteration %d: %d px of the phase moved by multiples of 2 pi (slips undone)", it, moved)
            # Steep steps the total variation keeps (the object's own, or noise) are looked at ever
            # more rarely: unwrapping costs as much as tens of FFTs.
            unwrap_interval = 2 * unwrap_interval if moved == 0 else UNWRAP_EVERY
            next_unwrap = it + unwrap_interval
        if it % read_back and it < settings.max_iterations:
            continue
        history.extend(torch.stack(pending).tolist())
        bad = next((k for k in range(len(history) - len(pending), len(history)) if not math.isfinite(history[k])), None)
        if bad is not None:
            # Once NaN, every later step is NaN too: stop, rather than return maps of NaN.
            with torch.no_grad():
                defocus = np.array2string(params.defocus_nm().cpu().numpy(), precision=0)
            raise FitDiverged(
                f"the fit diverged: misfit {history[bad]} at iteration {bad + 1} of the "
                f"{data.shape[1]} x {data.shape[2]} px fit (defocus_nm {defocus}, "
                f"nominal {np.array2string(params.defocus_start_nm.cpu().numpy(), precision=0)}); check the "
                "series' nominal defocus, pixel size and voltage, or lower the learning rates"
            )
        if progress is not None:
            for k in range(it - len(pending) + 1, it + 1):
                progress(k, history[k - 1])
        pending.clear()
        if it % settings.log_every == 0:
            log.info(
                "iteration %d  misfit %.4e  defocus_nm %s  %.1f it/s",
                it,
                history[-1],
                np.array2string(params.defocus_nm().detach().cpu().numpy(), precision=0),
                it / (time.perf_counter() - t0),
            )
        if settings.converge and it > last_start + 2 * window and it - last_decay >= 2 * window:
            old = np.mean(history[-2 * window : -window])
            new = np.mean(history[-window:])
            if (old - new) / old < settings.tolerance:
                # Plateau: halve every learning rate (Adam's noise floor hides the optimum), and
                # stop once the smallest rate has plateaued too.
                if decays == MAX_DECAYS:
                    break
                decays += 1
                last_decay = it
                for group in optimiser.param_groups:
                    group["lr"] *= 0.5
    undo_phase_slips(params.phase)  # nor does the phase returned carry any
    return FitResult(loss=history[-1], iterations=it, history=history, seconds=time.perf_counter() - t0)


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


def misfit_per_image(predicted: torch.Tensor, data: torch.Tensor, measured: torch.Tensor | None) -> torch.Tensor:
    """Mean squared misfit of every image, over the measured pixels when a mask is given."""
    if measured is None:
        return torch.mean((predicted - data) ** 2, dim=(1, 2))
    return torch.sum(measured * (predicted - data) ** 2, dim=(1, 2)) / measured.sum()


def binned(stack: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks of the last two axes (a remainder at the far edges
    is dropped)."""
    *lead, h, w = stack.shape
    hb, wb = h // factor, w // factor
    block = stack[..., : hb * factor, : wb * factor].reshape(*lead, hb, factor, wb, factor)
    return block.mean(axis=(-3, -1))


@dataclass
class _Fit:
    """A fitted canvas: the model and parameters at their optimum, with what chose the fit."""

    model: ForwardModel
    params: Parameters
    data: torch.Tensor
    result: FitResult
    noise: float
    tv_weight: float


def _fit_canvas(
    images: np.ndarray,
    measured: np.ndarray | None,
    start_phase: np.ndarray,
    nominal: np.ndarray,
    pixel_size_nm: float,
    microscope: Microscope,
    settings: Settings,
    progress=None,
) -> _Fit:
    """Fit the series ``images`` (N, y, x; data where ``measured``, or everywhere).

    With ``settings.coarse_factor`` > 1 (and a canvas that stays at least ``COARSE_MIN_PX`` px
    binned), the series binned that much is fitted first, and the fit here starts from its result
    (docs/physics.md, Coarse to fine); otherwise from ``start_phase`` (TIE) and the in-focus
    image's amplitude.
    """
    reference = int(np.argmin(np.abs(nominal)))
    # Mean-normalised over the measured pixels, as the model's images are.
    weight = np.ones(images.shape[1:]) if measured is None else measured
    data_np = images / (np.sum(images * weight, axis=(1, 2), keepdims=True) / weight.sum())
    noise = noise_level(images)
    tv_weight = auto_tv_weight(noise, settings.tv_rule) if settings.tv_weight is None else settings.tv_weight
    factor = settings.coarse_factor
    coarse_seconds = 0.0
    if factor > 1 and min(images.shape[1:]) // factor >= COARSE_MIN_PX:
        coarse_images = binned(images, factor)
        coarse = _fit_canvas(
            coarse_images,
            # A binned pixel is data only where all it holds is.
            None if measured is None else (binned(measured, factor) > 1 - 1e-6).astype(np.float64),
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
    model = ForwardModel(images.shape[1:], pixel_size_nm, microscope, settings.device, measured)
    data = torch.as_tensor(data_np, dtype=torch.float32, device=settings.device)
    log.info(
        "%d x %d px: noise %.4f, tv_weight %.3e, refine %s", *images.shape[1:], noise, tv_weight, list(settings.refine)
    )
    result = fit(model, params, data, settings, tv_weight, progress)
    result.seconds += coarse_seconds
    return _Fit(model, params, data, result, noise, tv_weight)


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

    The fit runs coarse to fine (:func:`_fit_canvas`); ``progress`` follows the full-resolution
    fit, and the iterations reported are its own. The object is fitted on a canvas wider than the images by
    ``margin_px`` on every side, where no data constrain it, so that the FFT's periodic wrap-around
    falls outside the data: a microscope records a window of a larger field, which is not periodic.
    ``None``: as ``settings.margin`` says, by default the Fresnel spread of the largest defocus
    (:func:`canvas_margin_px`); 0: a periodic field. The maps returned cover the images.
    """
    images = np.asarray(images, dtype=np.float64)
    nominal = np.asarray(defocus_nominal_nm, dtype=np.float64)
    if margin_px is None:
        margin_px = canvas_margin_px(nominal, pixel_size_nm, microscope) if settings.margin == "auto" else 0
    height, width = images.shape[1:]
    measured = None
    if margin_px:
        # Reflected data in the margin only start TIE and the amplitude; the misfit ignores them.
        pad = ((0, 0), (margin_px, margin_px), (margin_px, margin_px))
        images = np.pad(images, pad, mode="reflect")
        measured = np.pad(np.ones((height, width)), pad[1:])
    inner = np.s_[margin_px : margin_px + height, margin_px : margin_px + width]
    if "defocus_spread" in settings.refine:
        log.warning(
            "defocus_spread is refined, but its envelope does not depend on defocus: a series cannot "
            "tell it from the object's own resolution, so the value is not a measurement (docs/physics.md)"
        )
    from phasepipe import uncertainty  # it builds on this module's model and fit

    tie = tie_phase(images, nominal, pixel_size_nm, microscope.voltage_kv * 1e3)
    fitted = _fit_canvas(images, measured, tie, nominal, pixel_size_nm, microscope, settings, progress)
    params, result = fitted.params, fitted.result
    std = uncertainty.curvature_std(fitted.model, params, fitted.data, settings)
    subfields = np.array([])
    if "defocus" in settings.refine and settings.subfield_uncertainty:
        relative, subfields = uncertainty.subfield_calibration_std(
            images[(slice(None), *inner)],
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
    with torch.no_grad():
        phase = params.phase.cpu().numpy()[inner]
        values = uncertainty.output_values(params)
    # A canvas wider than the images can hold a ramp, which the data do not fix: the flattest is
    # reported, and the drift takes up the rest (phasepipe/gauge.py).
    gradient = gauge.flattest_gradient(phase) if margin_px else np.zeros(2)
    wavelength_nm = physics.wavelength_nm(microscope.voltage_kv * 1e3)
    values["shifts_px"] = values["shifts_px"] + gauge.ramp_shift_px(
        gradient, values["defocus_nm"], pixel_size_nm, wavelength_nm
    )
    with torch.no_grad():
        return Reconstruction(
            phase=gauge.without_ramp(phase, gradient).astype(np.float32),
            amplitude=params.log_amplitude.exp().cpu().numpy()[inner].astype(np.float32),
            tie_phase=tie[inner].astype(np.float32),
            values=values,
            stds=std,
            loss=result.loss,
            noise=fitted.noise,
            tv_weight=fitted.tv_weight,
            iterations=result.iterations,
            seconds=result.seconds,
            calibration_subfields=subfields,
        )


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
    return Settings(
        refine=tuple(section["refine"]),
        max_iterations=Settings.max_iterations if iterations == "auto" else iterations,
        converge=iterations == "auto",
        tv_weight=None if tv == "auto" else float(tv),
        device=device,
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

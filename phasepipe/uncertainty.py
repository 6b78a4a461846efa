"""How well the refined microscope parameters are known.

Two measures, and the larger is reported:

- :func:`curvature_std`: the curvature of the misfit at the optimum (Gauss-Newton), the object
  held fixed. Cheap, and right for what the object does not trade off against (drift, coherence),
  but for the defocus calibration a lower bound that can be hundreds of times too small: a
  stronger phase with a smaller defocus explains the images almost as well.
- :func:`subfield_calibration_std`: the spread of the calibration factor fitted on 2 x 2
  independent sub-fields of the series, each from the whole fit's solution: how much the
  calibration depends on what is in view and on the noise there. Its standard error, and the
  distance between the sub-fields' mean and the whole field's value (an estimate of the bias
  that a change of view brings), make the reported std (docs/physics.md, "Uncertainty").

Beside them, :func:`bootstrap_calibration` draws series from the fitted model and has them
refitted: the calibration's bias, which corrects it and is added to its std
(:func:`phasepipe.reconstruct.reconstruct`; docs/physics.md, "The calibration's bias").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from phasepipe.model import ForwardModel, misfit_per_image
from phasepipe.optimise import Settings, fit
from phasepipe.parameters import ParameterOptions, Parameters, as_outputs, outputs, refined_tensors

log = logging.getLogger(__name__)

SUBFIELDS = 2  # per side
SUBFIELD_MIN_PX = 48  # a sub-field smaller than this a side says too little: no estimate
SUBFIELD_ITERATIONS = 400  # each sub-field's refit, from the whole fit's solution


def microscope_values(params: Parameters) -> torch.Tensor:
    """Every registered output's physical value, flattened and concatenated in registry order."""
    return torch.cat([output.value(params).double().reshape(-1) for output in outputs()])


def curvature_std(
    model: ForwardModel, params: Parameters, data: torch.Tensor, settings: Settings
) -> dict[str, np.ndarray | float]:
    """Standard deviation of every registered output (as :func:`phasepipe.parameters.output_values`) from the loss
    curvature (Gauss-Newton); 0 for what was not refined.

    Conditional on the fitted object, which is why it is only a lower bound: it says how well the
    images pin a parameter with the object held fixed, not how far the object and the parameter
    can trade off. cov = 2 L / M * H^-1 over the refined groups' raw
    parameters (L the misfit at the optimum, M the number of data values, H the misfit's Hessian),
    carried to physical units through the Jacobian of :func:`microscope_values`.
    """
    from torch.func import functional_call

    shapes = [output.value(params).shape for output in outputs()]

    def by_output(flat: np.ndarray) -> dict[str, np.ndarray | float]:
        pieces = np.split(flat, np.cumsum([math.prod(shape) for shape in shapes])[:-1])
        return as_outputs([piece.reshape(shape) for piece, shape in zip(pieces, shapes, strict=True)])

    groups = refined_tensors(settings.refine)
    if not groups:
        return by_output(np.zeros(sum(math.prod(shape) for shape in shapes)))
    start = {group: getattr(params, group).detach() for group in groups}
    flat = torch.cat([value.reshape(-1).double() for value in start.values()])

    def at(vector: torch.Tensor, fn):
        """``fn(params)`` with the refined groups set from ``vector``."""
        pieces = torch.split(vector, [value.numel() for value in start.values()])
        overrides = {
            group: piece.reshape(value.shape).to(value.dtype)
            for (group, value), piece in zip(start.items(), pieces, strict=True)
        }
        return functional_call(params, overrides, (fn,))

    def misfit(vector):
        return at(
            vector,
            lambda p: torch.mean(misfit_per_image(model(p, "shifts" in settings.refine), data, model.measured)),
        )

    hess = torch.autograd.functional.hessian(misfit, flat).double()
    jac = torch.autograd.functional.jacobian(lambda vector: at(vector, microscope_values), flat).double()
    if not torch.isfinite(hess).all():
        # Seen once, on a fit whose defocus had run far from the truth (docs/physics.md): the maps
        # are still the fit's to write, but a curvature that is not finite gives no std.
        log.warning("the loss curvature at the fitted parameters is not finite: their std are reported as NaN")
        refined = (jac != 0).any(dim=1)
        return by_output(torch.where(refined, torch.nan, 0.0).cpu().numpy())
    values = data.numel() if model.measured is None else float(model.measured.sum()) * data.shape[0]
    cov = torch.linalg.pinv(hess) * 2 * float(misfit(flat).detach()) / values
    return by_output(torch.sqrt(torch.clamp(torch.diagonal(jac @ cov @ jac.T), min=0)).cpu().numpy())


def subfield_calibration_std(
    images: np.ndarray,
    canvas_phase: np.ndarray,
    canvas_log_amplitude: np.ndarray,
    margin_px: int,
    nominal: np.ndarray,
    scale: float,
    pixel_size_nm: float,
    microscope,
    settings: Settings,
    tv_weight: float,
) -> tuple[float, np.ndarray]:
    """Relative std of the calibration factor ``scale`` (fitted on the whole field) from 2 x 2
    sub-fields, and the sub-fields' factors; NaN and an empty array where a sub-field would be
    under ``SUBFIELD_MIN_PX``.

    Each sub-field of ``images`` (N, h, w) is fitted on its own canvas (``margin_px`` wider, the
    misfit masked to the data), phase, amplitude and calibration together, starting from the
    whole fit's maps there (``canvas_*``: the whole canvas, ``margin_px`` wider than the images)
    and ``scale``, for up to ``SUBFIELD_ITERATIONS`` (no more than the whole fit's cap). With c_k
    those factors:
    std = sqrt(var(c_k) / K + (mean(c_k) - scale)^2) / scale.
    """
    n, h, w = images.shape
    hs, ws = h // SUBFIELDS, w // SUBFIELDS
    if min(hs, ws) < SUBFIELD_MIN_PX:
        return math.nan, np.array([])
    options = {**settings.options, "defocus_scale": ParameterOptions(settings.options["defocus_scale"].lr, 0)}
    sub_settings = replace(
        settings,
        refine=("defocus",),
        max_iterations=settings.capped(SUBFIELD_ITERATIONS),
        options=options,
        continuation_step=0,
        log_every=10**9,
    )
    reference = int(np.argmin(np.abs(nominal)))
    m = margin_px
    factors = []
    for y0 in range(0, SUBFIELDS * hs, hs):
        for x0 in range(0, SUBFIELDS * ws, ws):
            window = images[:, y0 : y0 + hs, x0 : x0 + ws]
            canvas = np.s_[y0 : y0 + hs + 2 * m, x0 : x0 + ws + 2 * m]
            measured = np.pad(np.ones((hs, ws)), m)
            data = np.pad(window, ((0, 0), (m, m), (m, m)), mode="reflect")
            data = data / (np.sum(data * measured, axis=(1, 2), keepdims=True) / measured.sum())
            params = Parameters(
                canvas_phase[canvas].copy(), np.exp(canvas_log_amplitude[canvas]), nominal, microscope, reference
            ).to(settings.device)
            with torch.no_grad():
                params.defocus_scale.fill_(math.log(scale))
            model = ForwardModel(data.shape[1:], pixel_size_nm, microscope, settings.device, measured if m else None)
            target = torch.as_tensor(data, dtype=torch.float32, device=settings.device)
            fit(model, params, target, sub_settings, tv_weight)
            factors.append(math.exp(params.defocus_scale.item()))
    factors = np.array(factors)
    std = math.sqrt(factors.var(ddof=1) / factors.size + (factors.mean() - scale) ** 2) / scale
    log.info(
        "calibration %.5f; on %d sub-fields %s: std %.3f %%",
        scale,
        factors.size,
        np.array2string(factors, precision=5),
        100 * std,
    )
    return std, factors


def bootstrap_calibration(
    predicted: np.ndarray, noise: float, refit: Callable[[np.ndarray], float], replicates: int, seed: int = 0
) -> np.ndarray:
    """The calibration factors that ``refit`` finds on ``replicates`` series drawn from the fitted
    model: its images ``predicted`` (N, y, x, mean-normalised, the images' window) with fresh
    Gaussian noise of std ``noise`` times the intensity, the relative noise the series was measured
    to have (:func:`phasepipe.reconstruct.noise_level`).

    ``refit(images) -> factor`` must fit them as the series was fitted, from its start: the
    replicates' mean over the fitted factor is then the fit's own bias in a world whose truth is
    known (the fitted one), the noise the object absorbs pulling the factor the same way as on the
    data (docs/physics.md, "The calibration's bias").
    """
    rng = np.random.default_rng(seed)
    return np.array([refit(predicted * (1 + noise * rng.standard_normal(predicted.shape))) for _ in range(replicates)])

"""The fitted calibration's bias, and how much of it the prior decides: refits of the whole series.

Where the images are nearly linear in the phase they see c phi, not the defocus calibration c and
the phase apart, and what else acts along that valley decides c: the noise the free object
absorbs pulls it one way, the total variation (TV) the other (docs/physics.md, "Regularisation
and the calibration"). Two refits of the series, each from the start as the data were fitted
(:func:`reconstruct.fit_window`), measure it:

- :func:`prior_sensitivity`: the data refitted at half the TV weight. How far c moves is how far
  the prior, not the images, decides it; that move is folded into c's std.
- :func:`bootstrap_correction`: series drawn from the fitted model with fresh noise, refitted,
  and from each of their fits once more: the fit's own bias in worlds whose truth is known, over
  two levels, which c is divided by and which is folded into its std.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
import torch

from phasepipe import uncertainty
from phasepipe.optimise import FitDiverged, Settings
from phasepipe.parameters import Microscope
from phasepipe.reconstruct import CanvasFit, fit_window

log = logging.getLogger(__name__)


def _quiet(settings: Settings) -> Settings:
    """``settings`` for a refit: no uncertainty of its own, no progress lines."""
    return replace(settings, bootstrap_replicates=0, subfield_uncertainty=False, log_every=10**9)


def _fold(std: dict, defocus_nm: np.ndarray, *relative: float, corrected_nm: np.ndarray | None = None) -> None:
    """Widen the defocus std in ``std`` (in place): its std relative to ``defocus_nm`` and the
    ``relative`` std in quadrature, times the magnitude of ``corrected_nm`` (the defocus it now
    belongs to; default ``defocus_nm``). A defocus of 0 keeps a std of 0."""
    defocus = np.abs(defocus_nm)
    own = np.divide(std["defocus_nm"], defocus, out=np.zeros_like(defocus), where=defocus > 0)
    to = defocus if corrected_nm is None else np.abs(corrected_nm)
    std["defocus_nm"] = np.sqrt(own**2 + sum(r**2 for r in relative)) * to


def _factor(fitted: CanvasFit) -> float:
    """The calibration factor c of a fit (its parameter is log c)."""
    return math.exp(fitted.params.defocus_scale.item())


def _unknown(std: dict) -> None:
    """The defocus std unknown (NaN) wherever it was stated (in place)."""
    std["defocus_nm"] = np.where(std["defocus_nm"] > 0, np.nan, std["defocus_nm"])


def prior_sensitivity(
    fitted: CanvasFit,
    images: np.ndarray,
    nominal: np.ndarray,
    pixel_size_nm: float,
    microscope: Microscope,
    settings: Settings,
    margin_px: int,
    std: dict,
) -> float:
    """The calibration factor c_h of ``images`` refitted from the start at half the fit's TV
    weight; with d = c_h / c - 1 for the fitted c, the calibration's relative std becomes
    sqrt(s^2 + d^2) (``std`` is updated in place).

    Where the images pin c, the weight barely moves it; where they see c phi alone (a weak or a
    strong smooth phase) the prior decides it and half the weight moves it by percents
    (docs/physics.md, "The calibration's dependence on the prior"). A factor of two is the scale on
    which the best weight differs between kinds of specimen; downwards, because a stronger weight
    can leave a strong phase 2 pi short, which moves c for another reason. A refit that diverges
    leaves the std NaN (unknown) and returns NaN.
    """
    quiet = replace(_quiet(settings), tv_weight=fitted.tv_weight / 2)
    factor = _factor(fitted)
    log.info("the calibration's dependence on the prior: the series refitted at half the TV weight")
    try:
        refitted, _ = fit_window(images, nominal, pixel_size_nm, microscope, quiet, margin_px)
    except FitDiverged as exc:
        log.warning("the refit at half the TV weight diverged (%s): the calibration's std is unknown", exc)
        _unknown(std)
        return math.nan
    half = _factor(refitted)
    move = half / factor - 1
    with torch.no_grad():
        _fold(std, fitted.params.defocus_nm().cpu().numpy(), move)
    log.info("calibration %.5f; at half the TV weight %.5f (%+.3f %%)", factor, half, 100 * move)
    return half


def _predicted(fitted: CanvasFit, shape: tuple[int, int], margin_px: int, settings: Settings) -> np.ndarray:
    """The images a fitted canvas predicts over the series' window (``shape``, ``margin_px`` in)."""
    inner = np.s_[:, margin_px : margin_px + shape[0], margin_px : margin_px + shape[1]]
    with torch.no_grad():
        return fitted.model(fitted.params, "shifts" in settings.refine).cpu().numpy()[inner].astype(np.float64)


def bootstrap_correction(
    fitted: CanvasFit,
    images: np.ndarray,
    nominal: np.ndarray,
    pixel_size_nm: float,
    microscope: Microscope,
    settings: Settings,
    margin_px: int,
    std: dict,
) -> tuple[np.ndarray, np.ndarray]:
    """Correct the fitted calibration factor c by the fit's own bias, and widen its std to hold
    what that correction leaves: returns the replicates' factors c_k and, with a second level, the
    ratios c'_k / c_k (empty with one).

    ``settings.bootstrap_replicates`` series are drawn from the fitted model and refitted as
    ``images`` were (:func:`uncertainty.bootstrap_calibration`), b1 = mean(c_k) / c - 1 their bias.
    The fitted object pins c better than the true one, so b1 falls short of the fit's bias
    (docs/physics.md, "The calibration's bias"). With ``settings.bootstrap_levels`` 2 each
    replicate's fit is drawn from and refitted once more, b2 = mean(c'_k / c_k) - 1, and the
    correction is Hall's iterated one, C = (1 + b1)^2 / (1 + b2) (log c - 2 b1 + b2 to first
    order); with 1, C = 1 + b1. The factor becomes c / C, and its relative std
    sqrt(s^2 + (C - 1)^2 + var(c_k) / c^2) for s the one it had (``std`` is updated in place): the
    correction recovers part of the bias, not all, so its size is folded into the std. A replicate
    whose fit diverges leaves the factor as fitted and its std NaN (unknown).
    """
    params = fitted.params
    shape = images.shape[1:]
    quiet = _quiet(settings)
    deeper: list[float] = []  # the second level's factor over its replicate's, replicate by replicate

    def refit_factor(replicate: np.ndarray) -> tuple[CanvasFit, float]:
        refitted, _ = fit_window(replicate, nominal, pixel_size_nm, microscope, quiet, margin_px)
        return refitted, _factor(refitted)

    def refit(replicate: np.ndarray) -> float:
        refitted, factor_k = refit_factor(replicate)
        if settings.bootstrap_levels > 1:  # its own noise: a seed apart from the first level's
            predicted_k = _predicted(refitted, shape, margin_px, settings)
            (second,) = uncertainty.bootstrap_calibration(
                predicted_k, refitted.noise, lambda r: refit_factor(r)[1], 1, seed=1 + len(deeper)
            )
            deeper.append(second / factor_k)
        return factor_k

    factor = _factor(fitted)
    log.info(
        "the calibration's bias: %d series drawn from the fit, each refitted as the data were%s",
        settings.bootstrap_replicates,
        ", and drawn from and refitted once more" if settings.bootstrap_levels > 1 else "",
    )
    try:
        factors = uncertainty.bootstrap_calibration(
            _predicted(fitted, shape, margin_px, settings), fitted.noise, refit, settings.bootstrap_replicates
        )
    except FitDiverged as exc:
        log.warning("a series drawn from the fit diverged (%s): the calibration is as fitted, its std unknown", exc)
        _unknown(std)
        return np.array([]), np.array([])
    first = factors.mean() / factor
    correction = first**2 / np.mean(deeper) if deeper else first
    spread = factors.std(ddof=1) / factor if factors.size > 1 else 0.0
    with torch.no_grad():
        fitted_nm = params.defocus_nm().cpu().numpy()
        params.defocus_scale -= math.log(correction)
        _fold(std, fitted_nm, correction - 1, spread, corrected_nm=params.defocus_nm().cpu().numpy())
    log.info(
        "calibration %.5f; refitted on %d replicate(s) drawn from the fit: %s, bias %+.3f %%%s: corrected to %.5f",
        factor,
        factors.size,
        np.array2string(factors, precision=5),
        100 * (first - 1),
        f", at the second level {100 * (np.mean(deeper) - 1):+.3f} %" if deeper else "",
        factor / correction,
    )
    return factors, np.array(deeper)

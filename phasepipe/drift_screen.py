"""The drift checked against the forward model, where registration alone cannot decide it.

Images of a strong phase, or of magnetic elements, are not shifted copies of one another across
defocus (the in-focus image holds almost no phase contrast; Fresnel fringes and Lorentz deflection
move with defocus), so pairwise registration can be wrong by several pixels with high confidence,
and two agreeing wrong pairs outvote a right one. The fit refines the drift only locally: started
several pixels off, it bends the phase to the misplaced images instead (docs/physics.md,
"Alignment"). The forward model knows how each image should look, so here it arbitrates: every
distinct drift that registration gives with one image left out (:func:`align.leave_one_out_drifts`)
is tried by a short fit of the binned series with the drift refined from it, and the drift whose fit
ends with the lowest objective (misfit plus total variation) is kept, if lower than the
registration's by ``MARGIN``. Where every alternative agrees with the registration within
``DISTINCT_PX``, nothing is fitted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
import torch

from phasepipe import align, reconstruct
from phasepipe.optimise import Settings
from phasepipe.parameters import Microscope, ParameterOptions
from phasepipe.tie import tie_phase

log = logging.getLogger(__name__)

DISTINCT_PX = 0.5  # an alternative drift closer than this (any image, y or x) to one tried is not tried
# An alternative replaces the registration only with an objective this much lower (relative). A drift
# in proportion to defocus trades against a phase ramp at almost no cost, so alternatives differing
# by that alone tie within 0.3 % on the tuning families; the tie keeps the align stage's drift.
MARGIN = 0.01
SCREEN_FACTOR = 2  # binning of the screening fits
SCREEN_ITERATIONS = 400  # each screening fit's length


def distinct_drifts(drifts: list[np.ndarray], n_images: int) -> list[np.ndarray]:
    """The registration's own drift (zeros: the images as aligned) and those of ``drifts`` that
    differ from every one before them by more than ``DISTINCT_PX``."""
    kept = [np.zeros((n_images, 2))]
    for drift in drifts:
        if min(np.abs(drift - other).max() for other in kept) > DISTINCT_PX:
            kept.append(drift)
    return kept


def screened_drift(
    images: np.ndarray,
    nominal: np.ndarray,
    pixel_size_nm: float,
    microscope: Microscope,
    settings: Settings,
    margin_px: int,
) -> np.ndarray:
    """The drift (N, 2) px beyond the aligned ``images``' that the forward model prefers: zeros
    where the registration stands, as it does unless an alternative's objective is lower by
    ``MARGIN``. Each candidate is fitted on the series binned ``SCREEN_FACTOR`` x (not binned
    where that would leave under ``COARSE_MIN_PX`` px a side), on the canvas ``margin_px`` wider,
    from TIE, for ``SCREEN_ITERATIONS`` iterations (no more than the fit's cap) with its drift as
    the start of the refined shifts; all candidates see the same data, so their objectives
    compare."""
    candidates = distinct_drifts(align.leave_one_out_drifts(images, nominal), len(images))
    if len(candidates) == 1:
        return candidates[0]
    padded, measured = reconstruct.padded(images, margin_px)
    factor = SCREEN_FACTOR if min(images.shape[1:]) // SCREEN_FACTOR >= reconstruct.COARSE_MIN_PX else 1
    if factor > 1:
        padded = reconstruct.binned(padded, factor)
        measured = reconstruct.binned_measured(measured, factor)
    start = tie_phase(padded, nominal, pixel_size_nm * factor, microscope.voltage_kv * 1e3)
    options = {**settings.options, "shifts": ParameterOptions(settings.options["shifts"].lr, 0)}
    screen = replace(
        settings,
        refine=tuple(dict.fromkeys((*settings.refine, "shifts"))),
        max_iterations=settings.capped(SCREEN_ITERATIONS),
        coarse_factor=1,
        options=options,
        # The full resolution's weight, as the coarse fit uses (reconstruct.fit_canvas).
        tv_weight=reconstruct.chosen_tv_weight(reconstruct.noise_level(images), settings),
        log_every=10**9,
    )
    objectives = []
    for drift in candidates:
        fitted = reconstruct.fit_canvas(
            padded, measured, start, nominal, pixel_size_nm * factor, microscope, screen, shifts_px=drift / factor
        )
        with torch.no_grad():
            active = torch.ones(len(images), dtype=fitted.data.dtype, device=fitted.data.device)
            loss, _ = fitted.model.objective(fitted.params, fitted.data, active, True, fitted.tv_weight)
        objectives.append(float(loss) if math.isfinite(float(loss)) else math.inf)
    best = int(np.argmin(objectives))
    if objectives[best] > (1 - MARGIN) * objectives[0]:
        best = 0
    moved = np.abs(candidates[best]).max()
    log.info(
        "drift screened by the model: %d candidates, objectives %s; %s",
        len(candidates),
        np.array2string(np.array(objectives), precision=5),
        "the registration stands" if best == 0 else f"an alternative moves an image by up to {moved:.1f} px",
    )
    return candidates[best]

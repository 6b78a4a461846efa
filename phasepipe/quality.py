"""A verdict per series, from what the pipeline already measures, so that doubtful results are
visible where a person looks (the summary table, the terminal, the figure's title, the report).

``quality`` is ``failed`` for a failed series, ``warning`` when any check below fires, else ``ok``.
Each check is a sign that the result should not be trusted without a look; docs/outputs.md
lists them with their thresholds.
"""

from __future__ import annotations

import numpy as np

PAIR_SHIFT_MARGIN_PX = 0.5  # a pair registered within this of align.max_shift_px sits at the search's edge
RESIDUAL_PX = 0.5  # RMS disagreement of the pairwise registrations that makes the drift doubtful
MISFIT_OVER_NOISE = 4.0  # misfit / noise^2: the model leaves twice the noise's amplitude unexplained
AD_TIE_MIN_ACC = 0.5  # acc of the AD phase against TIE's below which one of them has failed
# A fitted calibration further than this (relative) from the nominal defocus: lenses are off by a
# few percent, and a fit that moves much further has more likely traded the defocus against the
# phase's scale (a weak phase near focus, where the regularisation decides it, docs/physics.md).
CALIBRATION_MOVE = 0.1


def alignment_reasons(attrs: dict, confidence: np.ndarray) -> list[str]:
    """Signs that the drift registered by the align stage is wrong."""
    reasons = []
    limit = attrs.get("alignment_max_shift_px")
    largest = attrs.get("alignment_largest_pair_shift_px", 0.0)
    if limit is not None and largest >= limit - PAIR_SHIFT_MARGIN_PX:
        reasons.append(
            f"alignment: two images registered {largest:.1f} px apart, at or beyond align.max_shift_px {limit:g}: "
            "the drift is likely wrong (raise max_shift_px if the specimen really drifted that far)"
        )
    rejected = int(attrs.get("alignment_rejected_pairs", 0))
    if rejected:
        reasons.append(
            f"alignment: {rejected} pair(s) of images disagreed with the others by over 1 px and were left out"
        )
    residual = attrs.get("alignment_residual_px", 0.0)
    if residual > RESIDUAL_PX:
        reasons.append(f"alignment: the pairwise registrations disagree by {residual:.2f} px RMS")
    low = np.flatnonzero(confidence < attrs.get("alignment_min_confidence", 0.0)).tolist()
    if low:
        reasons.append(
            f"alignment: registration confidence of image(s) {low} below align.min_confidence "
            f"{attrs['alignment_min_confidence']:g}"
        )
    return reasons


def fit_reasons(attrs: dict, acc_ad_vs_tie: float) -> list[str]:
    """Signs that the fit did not find the object the images show."""
    reasons = []
    noise, misfit = attrs.get("noise", np.nan), attrs.get("final_loss", np.nan)
    if noise > 0 and misfit / noise**2 > MISFIT_OVER_NOISE:
        reasons.append(
            f"fit: the misfit is {misfit / noise**2:.0f} times the measured noise variance; "
            "the model does not explain the images"
        )
    if attrs.get("stopped_at_cap"):
        reasons.append(f"fit: stopped at its cap of {attrs.get('iteration_cap')} iterations before converging")
    if acc_ad_vs_tie < AD_TIE_MIN_ACC:
        reasons.append(f"fit: the AD and TIE phases disagree (acc {acc_ad_vs_tie:.2f}); look at the figure")
    return reasons


def calibration_reasons(scale: float | None, nominal_nm: np.ndarray, std_nm: np.ndarray) -> list[str]:
    """A calibration ``scale`` (the summary's ``defocus_scale``; None where it is not fitted) far
    from 1 (``CALIBRATION_MOVE``), or one whose uncertainty could not be estimated (a field too
    small for sub-fields, a loss curvature that is not finite, or a refit of the bootstrap or at
    half the TV weight that diverged)."""
    defocused = np.abs(nominal_nm) > 0
    if not defocused.any():
        return []
    reasons = []
    if scale is not None and abs(scale - 1) > CALIBRATION_MOVE:
        reasons.append(
            f"calibration: the fit put the defocus at {scale:.3f} times its nominal value; a lens is off by a "
            "few percent, so check the nominal defocus, pixel size and voltage: on a weak phase near focus "
            "the fit trades the defocus against the phase's scale, and the prior decides it (defocus_std_nm "
            "holds how far half the prior's weight moves it)"
        )
    if not np.all(np.isfinite(std_nm[defocused])):
        reasons.append(
            "calibration: its uncertainty could not be estimated (a field under 96 px, a loss curvature "
            "that is not finite, or a refit for the calibration's bias that diverged: the log says which); "
            "defocus_std_nm is NaN"
        )
    return reasons


def verdict(status: str, reasons: list[str]) -> str:
    """ok, warning or failed."""
    if status != "ok":
        return "failed"
    return "warning" if reasons else "ok"

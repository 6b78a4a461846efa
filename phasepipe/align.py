"""Drift (and lens rotation and scale) registration of a through-focus series.

Between the images of a series the specimen drifts. Registering Lorentz images is hard because
contrast changes sign with defocus; every pair of images is registered sign-invariantly
(:mod:`phasepipe.registration`).

A series is registered pair by pair between images close in defocus (neighbours and next
neighbours, which look most alike), and the drift of every image relative to the reference (the
image nearest focus) is the weighted least-squares solution of all those pairs, so that one weak
link does not carry its error down a chain. Pairs with nothing but noise in common, and pairs that
disagree with the rest, are left out while the others still place every image; the remaining
pairs' disagreement with the solution is reported.

What image registration cannot know: Lorentz deflection moves the features of a magnetic film
between defocus levels by df times the local deflection angle, so a registration measures the drift
plus a weighted mean of that deflection, in proportion to defocus (docs/physics.md). The residual is
refined inside the reconstruction when ``shifts`` is in ``reconstruction.refine``; where images at
different defocus are too unlike for their pairs to agree, the reconstruction puts the drifts
registered with each image left out (:func:`leave_one_out_drifts`) to the forward model first
(:mod:`phasepipe.drift_screen`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import xarray as xr
from scipy import ndimage, optimize

from phasepipe.registration import Registration, prepared_spectrum, register_prepared, shift_image

log = logging.getLogger(__name__)

OUTLIER_PX = 1.0  # a pair further than this from the series' solution is left out
SIMILARITY_CROP_PX = 1024  # central field on which lens rotation and scale are searched


@dataclass(frozen=True)
class AlignSettings:
    """Registration settings (the ``align`` config section, see config/README.md)."""

    transform: str = "translation"  # or "similarity": the lens's rotation and scale as well
    max_shift_px: float = 16.0  # largest drift searched between two images of the series
    lowpass_px: float = 1.0  # Gaussian low-pass (px) against pixel noise
    taper: float = 0.25  # Tukey window: fraction of the field tapered at the edges
    min_confidence: float = 0.15  # registrations below this are left out where possible, and flagged


def register_pair(reference: np.ndarray, moving: np.ndarray, settings: AlignSettings | None = None) -> Registration:
    """Drift of ``moving`` relative to ``reference`` (y, x px): sign-invariant, sub-pixel
    (:mod:`phasepipe.registration`)."""
    s = settings or AlignSettings()
    return register_prepared(prepared_spectrum(reference, s.lowpass_px, s.taper), moving, s)


@dataclass(frozen=True)
class SeriesRegistration:
    """Every image's transform relative to the reference image, and how well it is known.

    Image k shows the reference frame's point p at ``c + scale_k R(rotation_k) (p - c) + shift_k``,
    c the field's centre (see :func:`similarity_image`); the reference's transform is the identity.
    """

    shift_px: np.ndarray  # (N, 2) y, x
    rotation_deg: np.ndarray  # (N,)
    scale: np.ndarray  # (N,)
    confidence: np.ndarray  # (N,) the best drift registration that places each image
    residual_px: float  # RMS disagreement of the pairwise drift registrations with the solution
    largest_pair_shift_px: float = 0.0  # largest |y| or |x| drift registered between a pair in use
    rejected_pairs: int = 0  # pairs left out for disagreeing with the others by more than OUTLIER_PX


def shift_window(image: np.ndarray, shift_px) -> np.ndarray:
    """The window ``image`` of a larger field moved by ``-shift_px``: :func:`shift_image` of its
    mirror-symmetric extension (twice as wide and high), cropped.

    A plain Fourier shift treats the window as periodic: the strip the move uncovers holds the
    window's far edge wrapped around, and the seam rings tens of pixels in. Neither is in any
    forward model, and the fit takes them as data: they pulled the calibration low
    (docs/physics.md, "Alignment"). Mirrored, the strip holds the window's own edge and the
    extension has no jump to ring about; away from the edges the move is as exact as
    :func:`shift_image`.
    """
    height, width = image.shape
    extended = np.concatenate([image, image[::-1]], axis=0)
    extended = np.concatenate([extended, extended[:, ::-1]], axis=1)
    return shift_image(extended, shift_px)[:height, :width]


def similarity_matrix(rotation_deg: float, scale: float) -> np.ndarray:
    """``scale * R(rotation)`` acting on (y, x) vectors."""
    c, s = np.cos(np.deg2rad(rotation_deg)), np.sin(np.deg2rad(rotation_deg))
    return scale * np.array([[c, s], [-s, c]])


def similarity_image(image: np.ndarray, shift_px, rotation_deg: float, scale: float) -> np.ndarray:
    """What the camera records of ``image`` after the lens rotated and scaled it about the field's
    centre c and the specimen drifted: the point p appears at c + scale R(rotation) (p - c) + shift.
    Cubic splines, periodic edges (the simulator's fields are periodic)."""
    inverse = np.linalg.inv(similarity_matrix(rotation_deg, scale))
    centre = (np.array(image.shape) - 1) / 2
    offset = centre - inverse @ (centre + np.asarray(shift_px, float))
    return ndimage.affine_transform(image, inverse, offset=offset, order=3, mode="grid-wrap")


def to_reference(image: np.ndarray, shift_px, rotation_deg: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """The image resampled onto the reference frame, undoing :func:`similarity_image`:
    out(p) = image(c + scale R(rotation) (p - c) + shift). A pure shift is a Fourier shift of the
    mirrored window (:func:`shift_window`); a similarity uses cubic splines with mirrored edges."""
    if rotation_deg == 0 and scale == 1:
        return shift_window(image, shift_px)
    matrix = similarity_matrix(rotation_deg, scale)
    centre = (np.array(image.shape) - 1) / 2
    offset = centre + np.asarray(shift_px, float) - matrix @ centre
    return ndimage.affine_transform(image, matrix, offset=offset, order=3, mode="mirror").astype(image.dtype)


def apply_registration(images: np.ndarray, reg: SeriesRegistration) -> np.ndarray:
    """Every image resampled onto the reference frame (see :func:`to_reference`)."""
    return np.stack(
        [
            to_reference(image, shift, rotation, scale)
            for image, shift, rotation, scale in zip(images, reg.shift_px, reg.rotation_deg, reg.scale, strict=True)
        ]
    )


def opposite_pairs(defocus_nm: np.ndarray, rtol: float = 0.01) -> list[tuple[int, int]]:
    """Pairs (under, over) of images at opposite defocus of equal magnitude (within ``rtol``)."""
    df = np.asarray(defocus_nm, float)
    return [
        (int(i), int(j))
        for i in np.where(df < 0)[0]
        for j in np.where(df > 0)[0]
        if abs(df[i] + df[j]) <= rtol * abs(df[i])
    ]


def rotation_scale(reference: np.ndarray, moving: np.ndarray, settings: AlignSettings) -> tuple[float, float]:
    """Rotation (deg) and scale of ``moving`` relative to ``reference`` about the field's centre.

    The rotation and scale that, undone, make the two images' sign-invariant registration most
    coherent (Nelder-Mead over rotation and log scale; the drift is registered anew at every step),
    searched on the central SIMILARITY_CROP_PX of the field.
    """
    h, w = reference.shape
    crop = tuple(slice(max(0, (n - SIMILARITY_CROP_PX) // 2), (n + SIMILARITY_CROP_PX) // 2) for n in (h, w))
    prepared = prepared_spectrum(reference[crop], settings.lowpass_px, settings.taper)  # once, not per step

    def incoherence(x: np.ndarray) -> float:
        back = to_reference(moving, (0.0, 0.0), x[0], float(np.exp(x[1] / 100)))
        return -register_prepared(prepared, back[crop], settings).confidence

    simplex = np.array([[0.0, 0.0], [0.2, 0.0], [0.0, 0.2]])  # degrees, percent of scale
    result = optimize.minimize(
        incoherence,
        simplex[0],
        method="Nelder-Mead",
        options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-9},
    )
    return float(result.x[0]), float(np.exp(result.x[1] / 100))


def lens_transforms(
    images: np.ndarray, defocus_nm: np.ndarray, settings: AlignSettings
) -> tuple[np.ndarray, np.ndarray] | None:
    """Rotation (deg) and scale of every image by the lens, or None without opposite pairs.

    The lens current that sets the defocus also rotates and magnifies the image; over a Lorentz
    series both change in proportion to defocus: rotation = a df, log scale = b df. They are
    measured between images at opposite defocus of equal magnitude, whose contrast transfer
    differs only in sign (neighbours on one side of focus differ in their transfer's rings, which
    scale with sqrt(df) and bias a scale search by 0.2 %), and a, b fitted to those pairs.
    """
    df = np.asarray(defocus_nm, float)
    pairs = opposite_pairs(df)
    if not pairs:
        return None
    measured = np.array([rotation_scale(images[i], images[j], settings) for i, j in pairs])
    step = np.array([df[j] - df[i] for i, j in pairs])
    slope_rotation = float(step @ measured[:, 0] / (step @ step))
    slope_log_scale = float(step @ np.log(measured[:, 1]) / (step @ step))
    offset = df - df[int(np.argmin(np.abs(df)))]  # the reference keeps the identity
    return slope_rotation * offset, np.exp(slope_log_scale * offset)


def pairs_by_defocus(defocus_nm: np.ndarray, reach: int = 2) -> list[tuple[int, int]]:
    """Image pairs (i, j) at most ``reach`` apart in defocus order: the ones that look alike."""
    order = np.argsort(np.asarray(defocus_nm, float), kind="stable")
    return [
        (int(order[a]), int(order[b])) for a in range(len(order)) for b in range(a + 1, min(a + reach + 1, len(order)))
    ]


def solve_shifts(
    n_images: int, pairs: list[tuple[int, int]], measured: np.ndarray, weights: np.ndarray, reference: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shifts (N, 2) with shift[j] - shift[i] ~ measured for every pair, shift[reference] = 0.

    Weighted least squares over all pairs; returns the shifts and every pair's residual (px).
    """
    design = np.zeros((len(pairs), n_images))
    for row, (i, j) in enumerate(pairs):
        design[row, i] -= 1
        design[row, j] += 1
    free = [k for k in range(n_images) if k != reference]
    w = np.sqrt(weights)[:, None]
    solution, *_ = np.linalg.lstsq(design[:, free] * w, measured * w, rcond=None)
    shifts = np.zeros((n_images, 2))
    shifts[free] = solution
    residual = np.linalg.norm(design @ shifts - measured, axis=1)
    return shifts, residual


def _still_connected(placed: np.ndarray, pairs: list[tuple[int, int]], weights: np.ndarray, drop: int) -> bool:
    """Whether the pairs in use (weight > 0) other than ``drop`` still link every placed image."""
    linked = [p for k, p in enumerate(pairs) if weights[k] > 0 and k != drop]
    members = set(np.where(placed)[0].tolist())
    reached = {min(members)}
    for _ in range(len(members)):
        reached |= {j for i, j in linked if i in reached} | {i for i, j in linked if j in reached}
    return members <= reached


def series_registration(
    images: np.ndarray, defocus_nm: np.ndarray, settings: AlignSettings | None = None
) -> SeriesRegistration:
    """Transform of every image relative to the reference (the image nearest focus).

    With ``transform: similarity`` the lens's rotation and scale are found first
    (:func:`lens_transforms`) and undone. Then every pair of images at most two apart in defocus
    order is registered (:func:`register_prepared`), and the drift is their least-squares solution,
    each pair weighted by its confidence squared.
    """
    s = settings or AlignSettings()
    df = np.asarray(defocus_nm, float)
    n = len(images)
    reference = int(np.argmin(np.abs(df)))
    rotation, scale = np.zeros(n), np.ones(n)
    if s.transform == "similarity":
        lens = lens_transforms(images, df, s)
        if lens is None:
            log.warning("no images at opposite defocus of equal magnitude: lens rotation and scale not registered")
        else:
            rotation, scale = lens
            images = np.stack(
                [to_reference(im, (0.0, 0.0), r, c) for im, r, c in zip(images, rotation, scale, strict=True)]
            )
    pairs = pairs_by_defocus(df)
    if not pairs:
        return SeriesRegistration(np.zeros((n, 2)), rotation, scale, np.ones(n), 0.0)
    prepared = {i: prepared_spectrum(images[i], s.lowpass_px, s.taper) for i in {i for i, _ in pairs}}
    registrations = [register_prepared(prepared[i], images[j], s) for i, j in pairs]
    measured = np.array([r.shift_px for r in registrations])
    confidence = np.array([r.confidence for r in registrations])
    # An image is as well placed as the best registration that touches it.
    per_image = np.zeros(n)
    for (i, j), c in zip(pairs, confidence, strict=True):
        per_image[[i, j]] = np.maximum(per_image[[i, j]], c)
    # An image none of whose registrations beats min_confidence shows nothing the others show (the
    # in-focus image of a pure phase object: noise only); its pairs would only pull the others, so
    # it is left out and placed by interpolation in defocus between its neighbours, when at least
    # two others remain.
    placed = per_image >= s.min_confidence
    if placed.sum() < 2:
        placed[:] = True
    weights = np.where(placed[[i for i, _ in pairs]] & placed[[j for _, j in pairs]], confidence, 0.0) ** 2
    anchor = reference if placed[reference] else int(np.where(placed)[0][np.argmin(np.abs(df[placed]))])
    # Pairs below min_confidence (nothing in common but noise) are left out, least confident first,
    # and pairs that disagree with the others by more than OUTLIER_PX (a periodic texture matched a
    # period away, features that differ too much between defocus levels) after them, worst first,
    # each only while the remaining pairs still link every placed image.
    for weakest in np.argsort(confidence):
        if confidence[weakest] >= s.min_confidence:
            break
        if weights[weakest] > 0 and _still_connected(placed, pairs, weights, weakest):
            weights[weakest] = 0.0
    shifts, residual = solve_shifts(n, pairs, measured, weights, anchor)
    residual[weights == 0] = 0.0
    rejected = 0
    while residual.max() > OUTLIER_PX:
        worst = int(np.argmax(residual))
        if not _still_connected(placed, pairs, weights, worst):
            break
        log.info("pair %s disagrees with the others by %.2f px; left out", pairs[worst], residual[worst])
        weights[worst] = 0.0
        rejected += 1
        shifts, residual = solve_shifts(n, pairs, measured, weights, anchor)
        residual[weights == 0] = 0.0
    order = np.argsort(df[placed])
    for axis in range(2):
        shifts[~placed, axis] = np.interp(df[~placed], df[placed][order], shifts[placed, axis][order])
    shifts -= shifts[reference]
    # The drift was registered with rotation and scale undone; in the image's own frame it is A d.
    shifts = np.array([similarity_matrix(r, c) @ d for d, r, c in zip(shifts, rotation, scale, strict=True)])
    used = weights > 0
    rms = float(np.sqrt(np.mean(residual[used] ** 2))) if used.any() else 0.0
    largest = float(np.abs(measured[used]).max()) if used.any() else 0.0
    return SeriesRegistration(shifts, rotation, scale, per_image, rms, largest, rejected)


def leave_one_out_drifts(
    images: np.ndarray, defocus_nm: np.ndarray, settings: AlignSettings | None = None
) -> list[np.ndarray]:
    """The drift of an aligned series registered again without each image in turn: (N, 2) px per
    image left out, that image placed by interpolation in defocus between the others, less the
    mean over the series (a common drift is a shift of the object). Empty below three images.

    Registration cannot tell which of its pairs to trust where images at different defocus are not
    shifted copies of one another (strong phase, magnetic elements, the in-focus image against a
    defocused one): two agreeing wrong pairs outvote a right one. These are the alternatives that
    :mod:`phasepipe.drift_screen` puts to the forward model.
    """
    df = np.asarray(defocus_nm, float)
    n = len(images)
    if n < 3:
        return []
    s = replace(settings or AlignSettings(), transform="translation")  # rotation and scale are undone
    drifts = []
    for k in range(n):
        keep = np.array([i for i in range(n) if i != k])
        shifts = np.zeros((n, 2))
        shifts[keep] = series_registration(images[keep], df[keep], s).shift_px
        order = np.argsort(df[keep])
        for axis in range(2):
            shifts[k, axis] = np.interp(df[k], df[keep][order], shifts[keep][order, axis])
        drifts.append(shifts - shifts.mean(axis=0))
    return drifts


def align_dataset(ds: xr.Dataset, settings: AlignSettings | None = None) -> xr.Dataset:
    """The aligned series: intensities resampled onto the reference image, with every image's transform."""
    s = settings or AlignSettings()
    images = ds["intensity"].values
    reg = series_registration(images, ds["defocus_nominal_nm"].values, s)
    aligned = ds.copy()
    aligned["intensity"] = (("image", "y", "x"), apply_registration(images, reg).astype(np.float32))
    aligned["shift_y_px"] = (("image",), reg.shift_px[:, 0])
    aligned["shift_x_px"] = (("image",), reg.shift_px[:, 1])
    aligned["rotation_deg"] = (("image",), reg.rotation_deg)
    aligned["scale"] = (("image",), reg.scale)
    aligned["registration_confidence"] = (("image",), reg.confidence)
    low = [int(k) for k in np.where(reg.confidence < s.min_confidence)[0]]
    for k in low:
        log.warning(
            "%s image %d: registration confidence %.2f is below %.2f; check the alignment",
            ds.attrs.get("series", ""),
            k,
            reg.confidence[k],
            s.min_confidence,
        )
    if reg.largest_pair_shift_px > s.max_shift_px:
        log.warning(
            "%s: a pair of images registered %.1f px apart, beyond max_shift_px %g: the drift may be wrong",
            ds.attrs.get("series", ""),
            reg.largest_pair_shift_px,
            s.max_shift_px,
        )
    aligned.attrs.update(
        alignment_transform=s.transform,
        alignment_residual_px=reg.residual_px,
        alignment_largest_pair_shift_px=reg.largest_pair_shift_px,
        alignment_rejected_pairs=reg.rejected_pairs,
        alignment_max_shift_px=float(s.max_shift_px),
        alignment_min_confidence=float(s.min_confidence),
    )
    return aligned

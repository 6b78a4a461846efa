"""What a through-focus series cannot tell, chosen: the phase ramp across the field.

A phase ramp g (rad per px) tilts the beam, which moves the image at defocus dz sideways by
lambda dz g / (2 pi p) (p the pixel size), in proportion to defocus; drift in proportion to
defocus moves it the same way. Once the align stage has registered the images, the ramp is no
longer in the data, and a fit on a canvas wider than the images fits whatever ramp the
registration's error leaves (docs/physics.md, "Degeneracies"). The ramp reported is therefore
chosen: the one that leaves the map flattest, where the geometric median of its gradient is zero
(the plane whose removal minimises the isotropic total variation), since most specimens hold
flat regions (vacuum, support film, the inside of a domain). Where the phase holds a part that
follows the absorption (the thickness's electrostatic phase), that part and the rest are each
made flattest apart (:func:`flattest_apart`): the sloped rims of one then do not tilt the other's
choice. The drift takes up the rest, so that phase and drift still predict the same images.
"""

from __future__ import annotations

import numpy as np

WEISZFELD_ITERATIONS = 50


def flattest_gradient(phase: np.ndarray) -> np.ndarray:
    """(g_y, g_x) rad per px: the geometric median of the forward-difference gradient of ``phase``
    (y, x), by Weiszfeld's iteration from the componentwise median."""
    gy = np.diff(phase, axis=0)[:, :-1].ravel()
    gx = np.diff(phase, axis=1)[:-1, :].ravel()
    g = np.array([np.median(gy), np.median(gx)])
    for _ in range(WEISZFELD_ITERATIONS):
        weights = 1 / np.maximum(np.hypot(gy - g[0], gx - g[1]), 1e-12)
        g = np.array([np.sum(weights * gy), np.sum(weights * gx)]) / weights.sum()
    return g


def flattest_apart(phase: np.ndarray, absorption: np.ndarray, scale: float) -> np.ndarray:
    """(g_y, g_x) rad per px to take from ``phase``: its part ``scale`` x ``absorption`` (-ln a,
    :func:`phasepipe.separation.absorption_scale`) and the rest each made flattest.

    The absorption's own flattest ramp is what its part keeps, so that an illumination brighter
    on one side (a plane in -ln a, which no series tells from the specimen's) changes nothing;
    with ``scale`` 0 this is :func:`flattest_gradient` of the phase."""
    electrostatic = scale * without_ramp(absorption, flattest_gradient(absorption))
    return flattest_gradient(phase - electrostatic)


def best_plane(a: np.ndarray) -> np.ndarray:
    """The plane (a + b y + c x) that best fits the map ``a`` in least squares, on its grid."""
    y, x = np.indices(a.shape, dtype=np.float64)
    basis = np.stack([np.ones(a.size), y.ravel(), x.ravel()], axis=1)
    return (basis @ np.linalg.lstsq(basis, np.ravel(a), rcond=None)[0]).reshape(a.shape)


def without_ramp(phase: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """``phase`` less the plane of ``gradient`` (rad per px; zero at the map's centre)."""
    y, x = np.indices(phase.shape, dtype=np.float64)
    y -= (phase.shape[0] - 1) / 2
    x -= (phase.shape[1] - 1) / 2
    return (phase - gradient[0] * y - gradient[1] * x).astype(phase.dtype)


def ramp_shift_px(
    gradient: np.ndarray, defocus_nm: np.ndarray, pixel_size_nm: float, wavelength_nm: float
) -> np.ndarray:
    """(N, 2) px: how far a phase ramp of ``gradient`` (rad per px, y and x) moves each image of
    a series at ``defocus_nm`` (the paraxial beam tilt, lambda dz g / (2 pi p^2) px, with the
    sign of the forward model's defocus)."""
    factor = wavelength_nm * np.asarray(defocus_nm, float) / (2 * np.pi * pixel_size_nm**2)
    return factor[:, None] * np.asarray(gradient, float)[None, :]

"""What the images of a series carry, estimated beside a fit as yardsticks (docs/physics.md,
"Validation"): the weak-phase transfer per band, the best linear estimate of the phase, and the
calibration's std that the images' linear part holds. Each knows what no fit does (the truth's
spectra, the defocus, the drift), so none is a bound or a target: they show where a shortfall is
the images' and where the fit's.
"""

from __future__ import annotations

import numpy as np
from scipy import fft
from scipy.sparse.linalg import LinearOperator, cg

from phasepipe import physics, simulate


def transfer(acquisition: simulate.Acquisition, defocus_nm: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, *shape) the coherent transfer (both envelopes) of each image at ``defocus_nm``."""
    a = acquisition
    qy, qx = physics.frequency_grid(shape, a.pixel_size_nm)
    return physics.transfer_function(
        qx**2 + qy**2,
        np.asarray(defocus_nm, float)[:, None, None],
        physics.wavelength_nm(a.voltage_kv * 1e3),
        a.cs_mm * 1e6,
        a.beam_divergence_mrad * 1e-3,
        a.defocus_spread_nm,
    )


def phase_transfer(
    acquisition: simulate.Acquisition, true_defocus_nm: np.ndarray, shape: tuple[int, int], bands: list
) -> list[float]:
    """What the images carry of the phase, per band: the mean over the band of the best image's
    |sin chi(q)| E_s E_t (the weak-phase contrast transfer; 0: no image sees it, 1: fully)."""
    best = np.abs(transfer(acquisition, true_defocus_nm, shape).imag).max(axis=0)  # |sin chi| E_s E_t
    qy, qx = physics.frequency_grid(shape, acquisition.pixel_size_nm)
    q = np.hypot(qx, qy)
    return [float(best[(q > low) & (q <= high)].mean()) for low, high in bands]


def linear_estimate(
    acquisition: simulate.Acquisition, phase: np.ndarray, window: int, noise_seed: int = 0
) -> np.ndarray:
    """What the images carry of the phase, estimated: the phase (window x window) as the best
    linear estimate recovers it from a series of ``phase`` (the whole field, the centre
    ``window`` px recorded, as :func:`simulate.record` does) were its images linear in it.

    The images are modelled as a weak phase sees them, I_j = 1 - 2 F^-1[Im T_j F phi] (T_j the
    coherent transfer at the true defocus, both envelopes), formed on the whole field and recorded
    through the window with the acquisition's noise (``noise_seed``); the estimate is their minimum
    mean-square-error (Wiener) solution with the truth's own power spectrum as the prior, solved by
    preconditioned conjugate gradients. It knows what no fit does (the defocus, the drift, the
    phase's spectrum) and misses what a fit may use (a total variation that knows the phase is
    piecewise flat, the non-linear contrast of a strong phase), so it is neither a bound nor a
    target: it shows, per band, how much of the phase the noise and the transfer leave (docs/physics.md,
    "Validation").
    """
    a = acquisition
    n = phase.shape[0]
    margin = (n - window) // 2
    inside = np.s_[margin : margin + window, margin : margin + window]
    mask = np.zeros((n, n))
    mask[inside] = 1
    defocus = a.calibration * np.asarray(a.defocus_nominal_nm, float)
    t = -2 * transfer(a, defocus, (n, n)).imag  # real and even: the weak phase's contrast transfer
    spectrum = np.abs(fft.fft2(phase - phase.mean(), norm="ortho")) ** 2
    spectrum = np.maximum(spectrum, 1e-12 * spectrum.max())
    variance = a.noise_fraction**2

    def images(x: np.ndarray) -> np.ndarray:
        return mask * fft.ifft2(t * fft.fft2(x, norm="ortho"), norm="ortho").real

    def adjoint(r: np.ndarray) -> np.ndarray:
        return fft.ifft2(np.sum(t * fft.fft2(mask * r, norm="ortho"), axis=0), norm="ortho").real

    def fourier_divided(x: np.ndarray, d: np.ndarray) -> np.ndarray:
        return fft.ifft2(fft.fft2(x, norm="ortho") / d, norm="ortho").real

    def normal(v: np.ndarray) -> np.ndarray:
        x = v.reshape(n, n)
        return (adjoint(images(x)) / variance + fourier_divided(x, spectrum)).ravel()

    noise = np.random.default_rng(noise_seed).standard_normal((defocus.size, n, n))
    data = images(phase) + mask * a.noise_fraction * noise
    diagonal = mask.mean() * np.sum(t**2, axis=0) / variance + 1 / spectrum  # the window's share, spread
    operator = LinearOperator((n * n, n * n), matvec=normal)
    preconditioner = LinearOperator((n * n, n * n), matvec=lambda v: fourier_divided(v.reshape(n, n), diagonal).ravel())
    solution, _ = cg(operator, (adjoint(data) / variance).ravel(), M=preconditioner, rtol=1e-5, maxiter=1000)
    return solution.reshape(n, n)[inside]


def calibration_information(
    acquisition: simulate.Acquisition,
    phase: np.ndarray,
    amplitude: np.ndarray,
    defocus_nm: np.ndarray | None = None,
) -> float:
    """What the images carry of the calibration: the relative std of the common defocus factor
    that a series of the specimen (``phase``, ``amplitude``: the window, y x) could reach were
    its images linear in it, with the specimen's spectra unknown.

    The images' linear part is I_j = 1 - 2 F^-1[Im T_j F phi] - 2 F^-1[Re T_j F mu] (mu = -ln
    amplitude, T_j the coherent transfer at ``defocus_nm``, default the true defocus). The bound
    is Cramer-Rao's with phi and mu Gaussian fields whose powers at each frequency are nuisances
    of their own (noise, drift and microscope known): at a frequency the N images' coefficients
    have covariance P_phi t t^T + P_mu r r^T + sigma^2 I; a change of the factor that these
    powers can absorb (each by a factor of its own) tells nothing, and the rest, the turn of the
    plane of t and r, is what is carried. Three images at -d, 0, +d of a pure phase object keep
    t's direction (-sin chi, 0, sin chi) but for Cs, so they carry the calibration only through
    absorption contrast (its cos chi against the in-focus image) and non-linear contrast; five
    images at two levels carry it through sin(2 chi) / sin(chi). A yardstick, not a bound: a
    specimen of a few rad is far from linear, and its spectra are not a Gaussian field's.
    Returns inf where nothing is carried.
    """
    a = acquisition
    defocus = a.calibration * np.asarray(a.defocus_nominal_nm, float) if defocus_nm is None else defocus_nm
    n_img, step = defocus.size, 1e-4

    def transfers(factor: float) -> tuple[np.ndarray, np.ndarray]:  # (pixels, N) of phi and of mu
        t = transfer(a, defocus * factor, phase.shape).reshape(n_img, -1).T
        return -2 * t.imag, -2 * t.real

    (t, r), (t_up, r_up), (t_down, r_down) = transfers(1), transfers(1 + step), transfers(1 - step)
    powers = [
        np.abs(fft.fft2(m - m.mean(), norm="ortho")).ravel() ** 2 for m in (phase, -np.log(np.maximum(amplitude, 1e-6)))
    ]

    def outer(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return u[:, :, None] * v[:, None, :]

    covariance = powers[0][:, None, None] * outer(t, t) + powers[1][:, None, None] * outer(r, r)
    covariance += a.noise_fraction**2 * np.eye(n_img)
    by_factor = (  # d C / d ln(factor), by central differences
        powers[0][:, None, None] * (outer(t_up, t_up) - outer(t_down, t_down))
        + powers[1][:, None, None] * (outer(r_up, r_up) - outer(r_down, r_down))
    ) / (2 * step)
    by_powers = [p[:, None, None] * outer(u, u) for p, u in zip(powers, (t, r), strict=True)]  # d C / d ln P
    derivatives = [np.linalg.solve(covariance, d) for d in (by_factor, *by_powers)]
    # Fisher matrix per frequency in ln(factor), ln P_phi, ln P_mu: tr(C^-1 dC C^-1 dC) per complex
    # coefficient, halved since the fields are real (q and -q are one coefficient).
    fisher = 0.5 * np.einsum("akij,bkji->kab", np.stack(derivatives), np.stack(derivatives))
    nuisance = fisher[:, 1:, 1:]
    coupling = fisher[:, 0, 1:]
    left = fisher[:, 0, 0] - np.einsum("ka,kab,kb->k", coupling, np.linalg.pinv(nuisance, rcond=1e-10), coupling)
    information = float(np.sum(left))
    return 1 / np.sqrt(information) if information > 0 else float("inf")

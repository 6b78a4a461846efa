"""The one physical convention of phasepipe (see docs/physics.md), as pure functions.

Every function here works on NumPy arrays and on PyTorch tensors alike: the array namespace is
taken from the arguments, so the simulator (NumPy, float64) and the differentiable model
(PyTorch, float32) share a single implementation of image formation.
Lengths in nm, angles in rad, voltages in V, spatial frequency in cycles per nm.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

H_PLANCK = 6.62607015e-34  # J s
M0 = 9.1093837015e-31  # kg
E_CHARGE = 1.602176634e-19  # C
C_LIGHT = 299792458.0  # m / s
PHI0_T_NM2 = H_PLANCK / (2 * E_CHARGE) * 1e18  # magnetic flux quantum h / 2e, in T nm^2


def _xp(x: Any):
    """Array namespace (numpy or torch) of ``x``."""
    return torch if isinstance(x, torch.Tensor) else np


def wavelength_nm(voltage_v: float) -> float:
    """Relativistic electron wavelength in nm for an accelerating voltage in V."""
    ev = E_CHARGE * voltage_v
    p = np.sqrt(2 * M0 * ev * (1 + ev / (2 * M0 * C_LIGHT**2)))
    return H_PLANCK / p * 1e9


def interaction_constant(voltage_v: float) -> float:
    """Interaction constant sigma in rad / (V nm)."""
    gamma = 1 + E_CHARGE * voltage_v / (M0 * C_LIGHT**2)
    lam_m = wavelength_nm(voltage_v) * 1e-9
    return 2 * np.pi * M0 * gamma * E_CHARGE * lam_m / H_PLANCK**2 * 1e-9


# Fraction of the spatial-coherence envelope below which a spatial frequency counts as not transferred.
ENVELOPE_FLOOR = 0.05


def fresnel_spread_px(voltage_v: float, beam_divergence_rad: float, defocus_nm: float, pixel_size_nm: float) -> int:
    """How far (px, rounded up to a multiple of 8) a defocus carries image content sideways.

    A spatial frequency q moves by lambda |df| q over a defocus df, so an image near a window's
    edge depends on the object up to R = lambda |df| q_res beyond it; q_res is the highest
    frequency the image resolves: Nyquist, or where the spatial-coherence envelope
    exp(-(pi theta_c df q)^2) falls below ``ENVELOPE_FLOOR``, whichever is lower. The halo of a
    tile, the margin of a whole field's canvas and the simulator's field beyond its window.
    """
    df = abs(defocus_nm)
    if df == 0:
        return 0
    spread_px = (
        wavelength_nm(voltage_v) * df * resolved_frequency(beam_divergence_rad, df, pixel_size_nm) / pixel_size_nm
    )
    return 8 * math.ceil(spread_px / 8)


def resolved_frequency(beam_divergence_rad: float, defocus_nm: float, pixel_size_nm: float) -> float:
    """The highest spatial frequency (cycles/nm) an image at ``defocus_nm`` resolves: Nyquist, or
    where the spatial-coherence envelope exp(-(pi theta_c df q)^2) falls below ``ENVELOPE_FLOOR``,
    whichever is lower."""
    q_nyquist = 1 / (2 * pixel_size_nm)
    if defocus_nm == 0 or beam_divergence_rad == 0:
        return q_nyquist
    q_envelope = math.sqrt(math.log(1 / ENVELOPE_FLOOR)) / (math.pi * beam_divergence_rad * abs(defocus_nm))
    return min(q_nyquist, q_envelope)


def frequency_grid(shape: tuple[int, int], pixel_size_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies (qy, qx) in cycles per nm, broadcastable to ``shape``."""
    qy = np.fft.fftfreq(shape[0], d=pixel_size_nm)[:, None]
    qx = np.fft.fftfreq(shape[1], d=pixel_size_nm)[None, :]
    return qy, qx


def transfer_coefficients(
    q2,
    wavelength_nm: float,
    cs_nm: float,
    beam_divergence_rad,
    defocus_spread_nm,
) -> tuple:
    """Maps of q that give T as polynomials in defocus: ``(e0, e1, e2, p0, p1)`` with
    log|T| = e0 + e1 df + e2 df^2 and arg T = p0 + p1 df = -chi.

    T = exp(-i chi) E_s E_t with chi = pi lambda df q^2 + (pi/2) Cs lambda^3 q^4,
    E_s = exp(-(pi theta_c)^2 (df q + Cs lambda^2 q^3)^2 / u),
    E_t = exp(-(pi lambda Delta)^2 q^4 / (2 u)), u = 1 + 2 (pi theta_c Delta)^2 q^2: nothing but the
    powers of df depends on defocus. The reconstruction computes these maps once while coherence
    is not refined, and each iteration then costs one real exponential and one polar per pixel.
    """
    xp = _xp(q2)
    lam = wavelength_nm
    q = xp.sqrt(q2)
    u = 1 + 2 * (np.pi * beam_divergence_rad * defocus_spread_nm) ** 2 * q2
    spread = (np.pi * beam_divergence_rad) ** 2 / u
    aberration = cs_nm * lam**2 * q2 * q  # Cs lambda^2 q^3: the aberration's part of the ray angle
    e0 = -spread * aberration**2 - (np.pi * lam * defocus_spread_nm) ** 2 * q2**2 / (2 * u)
    e1 = -2 * spread * q * aberration
    e2 = -spread * q2
    p0 = -(np.pi / 2) * cs_nm * lam**3 * q2**2
    p1 = -np.pi * lam * q2
    return e0, e1, e2, p0, p1


def transfer_exponent(coefficients: tuple, defocus_nm) -> tuple:
    """(log|T|, arg T) for the maps of :func:`transfer_coefficients` at ``defocus_nm``."""
    e0, e1, e2, p0, p1 = coefficients
    return e0 + defocus_nm * (e1 + defocus_nm * e2), p0 + defocus_nm * p1


def transfer_log_derivative(coefficients: tuple) -> tuple:
    """d(log T)/d(df) = (real + slope df) + i imag for the maps of :func:`transfer_coefficients`,
    returned as (real, imag, slope)."""
    _, e1, e2, _, p1 = coefficients
    return e1, p1, 2 * e2


def transfer_from_coefficients(coefficients: tuple, defocus_nm):
    """T for the maps of :func:`transfer_coefficients` at ``defocus_nm`` (broadcast against them)."""
    xp = _xp(coefficients[0])
    log_magnitude, angle = transfer_exponent(coefficients, defocus_nm)
    magnitude = xp.exp(log_magnitude)
    # torch's complex exp is several times slower than a real exp and a polar.
    return torch.polar(magnitude, angle) if xp is torch else magnitude * np.exp(1j * angle)


def transfer_function(
    q2,
    defocus_nm,
    wavelength_nm: float,
    cs_nm: float,
    beam_divergence_rad,
    defocus_spread_nm,
):
    """Coherent transfer function with both partial-coherence envelopes.

    ``q2`` is |q|^2 (cycles^2 / nm^2); ``defocus_nm`` may carry leading batch dimensions
    (e.g. shape (N, 1, 1) for N images). Returns T = exp(-i chi) E_s E_t
    (see :func:`transfer_coefficients`).
    """
    coefficients = transfer_coefficients(q2, wavelength_nm, cs_nm, beam_divergence_rad, defocus_spread_nm)
    return transfer_from_coefficients(coefficients, defocus_nm)


def shift_angle(qy, qx, shift_px, pixel_size_nm: float):
    """Phase (rad) of the Fourier factor that moves an image by ``shift_px`` = (..., 2) pixels (y, x)."""
    dy = shift_px[..., 0, None, None] * pixel_size_nm
    dx = shift_px[..., 1, None, None] * pixel_size_nm
    return -2 * np.pi * (qy * dy + qx * dx)


def shift_ramp(qy, qx, shift_px, pixel_size_nm: float):
    """Fourier factor exp(i :func:`shift_angle`) that moves an image by ``shift_px`` pixels."""
    xp = _xp(shift_px)
    arg = shift_angle(qy, qx, shift_px, pixel_size_nm)
    return xp.cos(arg) + 1j * xp.sin(arg)


def image_intensities(psi, transfer, ramp=None, scale=None):
    """Intensities I_k = s_k |F^-1[F[psi] T_k]|^2 of a through-focus series.

    ``transfer`` has shape (N, y, x); ``ramp`` (the image drift, see :func:`shift_ramp`)
    and ``scale`` (N,) are optional. The drift is applied to the wave, which moves the
    intensity image by the same amount.
    """
    xp = _xp(psi)
    spectrum = xp.fft.fft2(psi) * transfer
    if ramp is not None:
        spectrum = spectrum * ramp
    wave = xp.fft.ifft2(spectrum)
    intensity = wave.real**2 + wave.imag**2
    if scale is not None:
        intensity = intensity * scale[:, None, None]
    return intensity


ISOLATED_PAD = 4
"""How many times its size an isolated specimen's field is embedded in vacuum for the magnetic
phase: the periodic copies' return flux falls as the square (0.35 rad rms of a patterned element
field's 1.1 rad at 1x, 0.013 at 4x, against 8x)."""


def magnetic_phase(mx, my, thickness_nm, b0_t: float, pixel_size_nm: float, isolated: bool = False) -> np.ndarray:
    """Magnetic phase of a film with in-plane magnetisation B0 m(r) (Fourier relation).

    phi_m^(k) = (i B0 / (2 Phi0)) (k_x (t m_y)^(k) - k_y (t m_x)^(k)) / |k|^2, phi_m^(0) = 0.
    A thickness map t(r) generalises the uniform-film formula.

    The relation makes the field periodic: a net moment's return flux is confined to it, a
    uniform induction against the moment over the whole field (a ramp of the phase through its
    vacuum). ``isolated`` embeds the field in vacuum :data:`ISOLATED_PAD` times its size first,
    as a specimen sits in the microscope, so that the flux returns around it and far vacuum is
    flat; a texture that is itself periodic over the field (a lattice filling it) is not.
    Either way the phase returned has its mean over the field removed.
    """
    shape = np.shape(mx)
    if isolated:
        pad = [(0, (ISOLATED_PAD - 1) * n) for n in shape]
        mx, my, thickness_nm = (np.pad(np.broadcast_to(a, shape), pad) for a in (mx, my, thickness_nm))
    full = np.shape(mx)
    qy = np.fft.fftfreq(full[0], d=pixel_size_nm)[:, None]
    qx = np.fft.rfftfreq(full[1], d=pixel_size_nm)[None, :]
    q2 = qx**2 + qy**2
    q2[0, 0] = 1.0
    tmx = np.fft.rfft2(thickness_nm * mx)
    tmy = np.fft.rfft2(thickness_nm * my)
    spectrum = 1j * b0_t / (2 * PHI0_T_NM2) * (qx * tmy - qy * tmx) / q2
    spectrum[0, 0] = 0.0
    phase = np.fft.irfft2(spectrum, s=full)[: shape[0], : shape[1]]
    return phase - phase.mean()


def induction_from_phase(phase: np.ndarray, pixel_size_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """In-plane integrated induction (B_x t, B_y t) in T nm from the magnetic phase."""
    dphi_dy, dphi_dx = np.gradient(phase, pixel_size_nm)
    return PHI0_T_NM2 / np.pi * dphi_dy, -PHI0_T_NM2 / np.pi * dphi_dx

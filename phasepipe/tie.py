"""Transport-of-intensity (TIE) phase: the classic baseline and the AD model's initial guess.

k dI/dz = -div(I grad phi), solved with FFT inverse Laplacians on mirror-symmetrised images
(against periodic-boundary artefacts) and Tikhonov regularisation 1/q^2 -> q^2 / (q^2 + q_c^2)^2.
"""

from __future__ import annotations

import numpy as np

from phasepipe import physics


def _mirror(a: np.ndarray) -> np.ndarray:
    top = np.concatenate([a, a[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1, :]], axis=0)


def intensity_derivative(images: np.ndarray, defocus_nm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dI/dz by a least-squares line through all images, and the in-focus intensity.

    Images are first normalised to equal mean, since the beam current drifts between exposures.
    """
    images = images / images.mean(axis=(1, 2), keepdims=True)
    df = np.asarray(defocus_nm, float)
    centred = df - df.mean()
    slope = np.tensordot(centred, images, axes=(0, 0)) / np.sum(centred**2)
    focus = images[np.argmin(np.abs(df))]
    return slope, focus


def tie_phase(
    images: np.ndarray,
    defocus_nm: np.ndarray,
    pixel_size_nm: float,
    voltage_v: float,
    qc_cycles: float = 1.0,
) -> np.ndarray:
    """TIE phase (rad, zero mean) from a through-focus series (N, y, x).

    ``qc_cycles``: the regularisation frequency q_c in cycles over the mirrored field. The default,
    one, suppresses only what TIE cannot know; films that the field cuts through do better with
    more, islands with less (docs/physics.md, "What the data identify").
    """
    didz, focus = intensity_derivative(images, defocus_nm)
    return phase_from_derivative(didz, focus, pixel_size_nm, voltage_v, qc_cycles)


def phase_from_derivative(
    didz: np.ndarray, focus: np.ndarray, pixel_size_nm: float, voltage_v: float, qc_cycles: float = 1.0
) -> np.ndarray:
    """TIE phase (rad, zero mean) from dI/dz and the in-focus intensity (both mean-normalised)."""
    h, w = focus.shape
    didz_m = _mirror(didz)
    focus_m = np.clip(_mirror(focus), 0.05 * focus.mean(), None)
    qy, qx = physics.frequency_grid(didz_m.shape, pixel_size_nm)
    q2 = qy**2 + qx**2
    qc_per_nm = qc_cycles / (max(h, w) * 2 * pixel_size_nm)
    inv_lap = -(q2 / (q2 + qc_per_nm**2) ** 2) / (4 * np.pi**2)  # regularised 1 / (-4 pi^2 q^2)
    k = 2 * np.pi / physics.wavelength_nm(voltage_v)

    def solve(f: np.ndarray) -> np.ndarray:
        return np.fft.ifft2(np.fft.fft2(f) * inv_lap)

    chi = solve(-k * didz_m)  # I grad(phi) = grad(chi)
    chi_f = np.fft.fft2(chi)
    gy = np.fft.ifft2(2j * np.pi * qy * chi_f).real / focus_m
    gx = np.fft.ifft2(2j * np.pi * qx * chi_f).real / focus_m
    div = np.fft.ifft2(2j * np.pi * (qy * np.fft.fft2(gy) + qx * np.fft.fft2(gx))).real
    phase = solve(div).real[:h, :w]
    return phase - phase.mean()


def separation(
    anchor: tuple[np.ndarray, np.ndarray],
    partner: tuple[np.ndarray, np.ndarray],
    relation: str,
    pixel_size_nm: float,
    voltage_v: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(phi_e, phi_m) by TIE from two series of the same area, as PyLorentz separates a flip
    pair: ``anchor`` and ``partner`` are (images, nominal defocus), the partner's images already
    brought into the anchor's frame (mirrored back, registered). ``flip``: phi_e from the mean of
    the two dI/dz, phi_m from half their difference; ``reference`` (the partner holds no magnetic
    contrast): phi_e from the partner's dI/dz, phi_m from the difference. The baseline the joint
    fit is judged against."""
    didz_a, focus_a = intensity_derivative(*anchor)
    didz_b, focus_b = intensity_derivative(*partner)
    focus = (focus_a + focus_b) / 2
    if relation == "flip":
        electrostatic, magnetic = (didz_a + didz_b) / 2, (didz_a - didz_b) / 2
    else:
        electrostatic, magnetic = didz_b, didz_a - didz_b
    return (
        phase_from_derivative(electrostatic, focus, pixel_size_nm, voltage_v),
        phase_from_derivative(magnetic, focus, pixel_size_nm, voltage_v),
    )

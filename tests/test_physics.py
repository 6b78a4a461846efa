"""Image formation and magnetic phase against cases with known answers (docs/physics.md)."""

import numpy as np
import pytest
import torch

from phasepipe import physics, simulate

PIXEL_NM = 5.0
LAMBDA_200KV = physics.wavelength_nm(200e3)
CS_NM = 1e6  # 1 mm


def smooth_field(n: int, corr_px: float, rng: np.random.Generator) -> np.ndarray:
    """Periodic Gaussian-correlated random field, zero mean and unit peak magnitude."""
    field = simulate.smooth_noise(n, corr_px, rng)
    return field / np.abs(field).max()


def coherent_series(psi: np.ndarray, defocus_nm, cs_nm: float = 0.0) -> np.ndarray:
    """Intensities of ``psi`` at each defocus with no partial-coherence envelopes."""
    qy, qx = physics.frequency_grid(psi.shape, PIXEL_NM)
    df = np.asarray(defocus_nm, float)[:, None, None]
    transfer = physics.transfer_function(qx**2 + qy**2, df, LAMBDA_200KV, cs_nm, 0.0, 0.0)
    return physics.image_intensities(psi, transfer)


def test_wavelength_and_interaction_constant_at_200kv():
    """Relativistic wavelength 2.5079 pm and sigma 0.00729 rad/(V nm) at 200 kV."""
    assert physics.wavelength_nm(200e3) == pytest.approx(0.0025079, rel=1e-4)
    assert physics.interaction_constant(200e3) == pytest.approx(0.00729, rel=2e-3)


def test_in_focus_image_without_aberrations_is_exit_wave_intensity():
    """With df = 0, Cs = 0 and no envelopes T = 1, so the image is |psi|^2 exactly."""
    rng = np.random.default_rng(0)
    psi = rng.standard_normal((64, 64)) + 1j * rng.standard_normal((64, 64))
    image = coherent_series(psi, [0.0])[0]
    np.testing.assert_allclose(image, np.abs(psi) ** 2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("defocus_nm", [-1.6e6, -3e4, 250.0, 8e5])
def test_coherent_propagation_conserves_intensity(defocus_nm):
    """|T| = 1 without envelopes (Parseval), so the mean intensity equals mean |psi|^2 at any defocus."""
    rng = np.random.default_rng(1)
    amplitude = 1 + 0.3 * smooth_field(64, 3.0, rng)
    psi = amplitude * np.exp(2j * smooth_field(64, 2.0, rng))
    image = coherent_series(psi, [defocus_nm], cs_nm=CS_NM)[0]
    assert image.mean() == pytest.approx(np.mean(np.abs(psi) ** 2), rel=1e-12)
    assert image.std() > 0.01  # the defocused image does carry contrast


def test_phase_object_at_plus_df_matches_negated_phase_at_minus_df():
    """For Cs = 0, T(-df) = conj T(df), and conj(F[exp(i phi)] T) is the spectrum of exp(-i phi) mirrored in q,
    so I[phi](+df) = I[-phi](-df) exactly."""
    rng = np.random.default_rng(2)
    phase = 1.5 * smooth_field(64, 2.0, rng)
    defocus = [4e4, 1.6e6]
    plus = coherent_series(np.exp(1j * phase), defocus)
    minus = coherent_series(np.exp(-1j * phase), [-d for d in defocus])
    assert plus.std() > 0.05
    np.testing.assert_allclose(plus, minus, rtol=0, atol=1e-12)


def test_weak_phase_object_follows_transport_of_intensity():
    """At small defocus a weak phase object gives I(df) = 1 - (df / k) laplacian(phi), k = 2 pi / lambda."""
    n = 128
    rng = np.random.default_rng(3)
    phase = 0.05 * smooth_field(n, 4.0, rng)
    df = 1e4
    image = coherent_series(np.exp(1j * phase), [df])[0]
    qy, qx = physics.frequency_grid((n, n), PIXEL_NM)
    laplacian = np.fft.ifft2(-4 * np.pi**2 * (qx**2 + qy**2) * np.fft.fft2(phase)).real
    k = 2 * np.pi / LAMBDA_200KV
    predicted = -(df / k) * laplacian
    contrast = image - 1
    assert np.std(contrast) > 1e-4
    assert np.linalg.norm(contrast - predicted) / np.linalg.norm(predicted) < 0.01


@pytest.mark.parametrize("defocus_nm", [-1.6e6, -2e4, 2e4, 1.6e6])
def test_partial_coherence_envelopes_decay(defocus_nm):
    """|T| is E_s (beam divergence), E_t (defocus spread) or both: each <= 1, non-increasing in q
    and strictly below 1 at high q. A factor growing with q would be the known sign error."""
    q = np.linspace(0, 0.5, 400)  # cycles / nm, beyond Nyquist of 1 nm pixels
    q2 = q**2
    theta_c, spread = 1e-5, 500.0

    def magnitude(divergence, defocus_spread):
        return np.abs(physics.transfer_function(q2, defocus_nm, LAMBDA_200KV, CS_NM, divergence, defocus_spread))

    for envelope in (magnitude(theta_c, 0.0), magnitude(0.0, spread), magnitude(theta_c, spread)):
        assert envelope[0] == pytest.approx(1.0, abs=1e-15)
        assert np.all(envelope <= 1.0)
        assert np.all(np.diff(envelope) <= 1e-15)
        assert envelope[-1] < 0.99
    np.testing.assert_allclose(magnitude(0.0, 0.0), 1.0, rtol=1e-14)


def test_numpy_and_torch_give_the_same_series():
    """The simulator (NumPy, float64) and the model (PyTorch, float32) share one implementation:
    a 3-image series with envelopes, Cs and sub-pixel drift agrees to float32 precision."""
    n = 64
    rng = np.random.default_rng(4)
    psi = (1 + 0.2 * smooth_field(n, 3.0, rng)) * np.exp(1.5j * smooth_field(n, 2.0, rng))
    defocus = np.array([-1.6e6, 0.0, 1.6e6])
    shifts = np.array([[1.3, -0.7], [0.0, 0.0], [-2.25, 0.4]])
    theta_c, spread = 1e-5, 500.0
    qy, qx = physics.frequency_grid((n, n), PIXEL_NM)

    transfer = physics.transfer_function(qx**2 + qy**2, defocus[:, None, None], LAMBDA_200KV, CS_NM, theta_c, spread)
    ramp = physics.shift_ramp(qy, qx, shifts, PIXEL_NM)
    expected = physics.image_intensities(psi, transfer, ramp, scale=np.array([1.0, 0.9, 1.1]))

    tqy = torch.as_tensor(qy, dtype=torch.float32)
    tqx = torch.as_tensor(qx, dtype=torch.float32)
    t_transfer = physics.transfer_function(
        tqx**2 + tqy**2,
        torch.as_tensor(defocus, dtype=torch.float32)[:, None, None],
        LAMBDA_200KV,
        CS_NM,
        torch.tensor(theta_c),
        torch.tensor(spread),
    )
    t_ramp = physics.shift_ramp(tqy, tqx, torch.as_tensor(shifts, dtype=torch.float32), PIXEL_NM)
    t_psi = torch.as_tensor(psi, dtype=torch.complex64)
    got = physics.image_intensities(t_psi, t_transfer, t_ramp, scale=torch.tensor([1.0, 0.9, 1.1]))

    assert got.dtype == torch.float32
    assert expected.std(axis=(1, 2)).min() > 0.05
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-4 * expected.max())


def _stripe_magnetisation(n: int):
    """m = (f(y), 0): domains alternating along y, divergence-free since m_x depends on y only."""
    y = np.arange(n)[:, None] * np.ones((1, n))
    return np.tanh(2 * np.sin(2 * np.pi * 3 * y / n)), np.zeros((n, n))


def _vortex_magnetisation(n: int):
    """m = curl(psi z) of a smooth periodic stream function: a vortex-antivortex cell, divergence-free."""
    y, x = np.meshgrid(2 * np.pi * np.arange(n) / n, 2 * np.pi * np.arange(n) / n, indexing="ij")
    # psi = sin(x) sin(y) / 2 -> m_x = d psi / dy, m_y = -d psi / dx
    return 0.5 * np.sin(x) * np.cos(y), -0.5 * np.cos(x) * np.sin(y)


@pytest.mark.parametrize("texture", [_stripe_magnetisation, _vortex_magnetisation])
def test_induction_from_magnetic_phase_recovers_magnetisation(texture):
    """B t = (Phi0 / pi) (d phi / dy, -d phi / dx) inverts phi_m for a divergence-free m, giving B0 t m."""
    n, thickness, b0 = 128, 40.0, 1.2
    mx, my = texture(n)
    phase = physics.magnetic_phase(mx, my, thickness, b0, PIXEL_NM)
    bx_t, by_t = physics.induction_from_phase(phase, PIXEL_NM)
    inner = (slice(4, -4), slice(4, -4))
    got = np.stack([bx_t[inner], by_t[inner]]).ravel()
    expected = b0 * thickness * np.stack([mx[inner], my[inner]]).ravel()
    assert np.corrcoef(got, expected)[0, 1] > 0.99
    assert np.dot(got, expected) / np.dot(expected, expected) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize(("beam_divergence_rad", "atol"), [(0.0, 1e-12), (1e-5, 5e-4)])
def test_defocus_spread_is_a_low_pass_of_the_exit_wave(beam_divergence_rad, atol):
    """The temporal-coherence envelope does not depend on defocus: a series with spread Delta equals,
    at every defocus, the series of the exit wave low-passed by E_t with no spread (exactly without
    beam divergence, to within the envelopes' coupling term otherwise). So a through-focus series
    cannot tell Delta from the object's own resolution (docs/physics.md). 1 nm pixels, +-0.1 mm: at
    5 nm pixels E_t is within 0.3 % of 1 everywhere."""
    rng = np.random.default_rng(5)
    n, spread_nm, pixel_nm, defocus_nm = 64, 500.0, 1.0, 1e5
    psi = np.exp(0.3 * rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n)))
    qy, qx = physics.frequency_grid((n, n), pixel_nm)
    q2 = qy**2 + qx**2
    lam = physics.wavelength_nm(200e3)
    envelope = np.exp(-((np.pi * lam * spread_nm) ** 2) * q2**2 / 2)
    low_passed = np.fft.ifft2(np.fft.fft2(psi) * envelope)
    defocus = np.array([-defocus_nm, 0.0, defocus_nm])[:, None, None]

    def series(wave, spread):
        return physics.image_intensities(
            wave, physics.transfer_function(q2, defocus, lam, 1e6, beam_divergence_rad, spread)
        )

    assert np.abs(envelope - 1).max() > 0.05  # the spread does damp these frequencies
    np.testing.assert_allclose(series(psi, spread_nm), series(low_passed, 0.0), atol=atol)

"""The fast path's kernels (phasepipe/kernels.py): exp, cos and sin as vectorisable float32 polynomials.

The fast path's misfit and gradients against autograd are checked in test_reconstruct.py.
"""

import subprocess
import sys

import numpy as np

from phasepipe import kernels


def test_exp_row_is_within_three_ulp_and_clamped():
    """exp over the range a transfer function's envelope and an amplitude need, within 3.6e-7
    (3 float32 ulp) of float64's; arguments below -87 or above 88 give the clamp's finite values,
    NaN and +-inf give NaN."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(-87, 88, 4000), rng.uniform(-1, 1, 4000), [0.0, -0.0, 1e-30, -1e-30]])
    row = values.astype(np.float32)
    kernels.exp_row(row, np.empty(len(row), np.int32))
    expected = np.exp(values.astype(np.float32).astype(np.float64))
    assert np.max(np.abs(row / expected - 1)) <= 3.6e-7
    extremes = np.array([-1e4, -88.0, 89.0, 1e4], np.float32)
    kernels.exp_row(extremes, np.empty(4, np.int32))
    np.testing.assert_allclose(extremes, np.exp([-87.0, -87.0, 88.0, 88.0]), rtol=1e-6)
    # What a diverging fit produces stays visible as such.
    not_finite = np.array([np.nan, np.inf, -np.inf, 0.0], np.float32)
    kernels.exp_row(not_finite, np.empty(4, np.int32))
    assert np.isnan(not_finite[:3]).all() and not_finite[3] == 1.0


def test_wave_is_exp_of_log_amplitude_and_phase():
    """psi = exp(log a + i phi) within 2 float32 ulp of the phase (whose rounding bounds what any
    float32 cos and sin can do) plus 3e-7 of the amplitude, for phases of either sign up to
    +-300 rad (every quadrant, the thickest films' range) and at multiples of pi / 2; a NaN phase or
    log amplitude gives a NaN psi."""
    rng = np.random.default_rng(1)
    phase = np.concatenate([rng.uniform(-300, 300, (8, 256)), rng.uniform(-3.2, 3.2, (8, 256))]).astype(np.float32)
    phase[0, :8] = np.float32(np.pi / 2) * np.arange(-4, 4)
    log_amplitude = rng.uniform(-2, 0.5, phase.shape).astype(np.float32)
    psi = np.empty((*phase.shape, 2), np.float32)
    kernels.wave(phase, log_amplitude, psi)
    amplitude = np.exp(log_amplitude.astype(np.float64))
    expected = amplitude * np.exp(1j * phase.astype(np.float64))
    error = np.abs(psi[..., 0] + 1j * psi[..., 1] - expected)
    bound = amplitude * (2 * np.spacing(np.abs(phase)).astype(np.float64) + 3e-7)
    assert np.all(error <= bound)
    phase[0, 0], log_amplitude[0, 1] = np.nan, np.nan
    kernels.wave(phase, log_amplitude, psi)
    assert np.isnan(psi[0, :2]).all() and np.isfinite(psi[0, 2:]).all()


def test_kernels_compile_where_no_cache_can_be_written():
    """Where numba finds no writable cache folder (a read-only install and home), the module still
    imports and its kernels compile in the process instead of failing the import."""
    script = (
        "from numba.core import caching\n"
        "caching.CacheImpl._locator_classes = []\n"  # no cache location anywhere
        "import numpy as np\n"
        "from phasepipe import kernels\n"
        "row = np.zeros(4, np.float32)\n"
        "kernels.exp_row(row, np.empty(4, np.int32))\n"
        "print(row.sum())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == 4.0

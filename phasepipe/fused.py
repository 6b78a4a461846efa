"""The reconstruction's misfit and total variation with analytic gradients: the fast path of a fit.

Autograd through the forward model (:class:`phasepipe.model.ForwardModel`) spends most of an
iteration on element-wise complex work: a full-size pass per operation and direction, fresh
buffers, dtype promotions. :class:`SeriesMisfit` computes the misfit of a series and its gradient
together, in the 2N + 2 FFTs they need, with three kernels per image between them:

- spectrum: T R, the transfer function of :mod:`phasepipe.physics` times the drift ramp, and
  S = Psi T R, Psi psi's spectrum. T R's phase is p0 + df p1 + the shift angle, and
  p1 = -pi lambda q^2 and the shift angle are a function of qy plus one of qx: exp(i phase) is a
  fixed map times the outer product of two vectors made per image, so a pixel costs one real exp
  (the coherence envelopes, not separable) and no cos or sin;
- residual, on W = F^-1 S: the image mean m over the measured pixels M and
  C = sum M r J (J = |W|^2 / m, r = J - D) from sums of |W|^2, |W|^4 and D |W|^2 in one pass;
  the misfit and F^-1[dL/dS] = a M (r - C / P_M) W (the mean normalisation's term included)
  in a second, written over W;
- adjoint, on G = F[...] = dL/dS: h = conj(T R) G summed into dL/dPsi, and the gradient of each
  image's defocus and drift, Re sum conj(G) S d log(T R)/d theta, with d log T/d df linear in
  df and d log R/d shift independent of the shift: q-maps made once.

Each image is done start to end, forward and backward, before the next, while its buffers are in
cache; images of weight 0 (not yet admitted by the defocus continuation) are skipped. The total
variation penalty's value and gradient are made in the pass that turns dL/dpsi into the phase's
gradient: the loss of a fit comes out whole, with no further pass or autograd node.

The kernels are numba loops, over complex maps' (y, x, 2) float32 view (:func:`_pairs`),
compiled on first use for every image size at once, cached on disk for later processes
(:func:`_jit`), and released from the GIL; exp, cos and sin are float32 polynomials that LLVM
vectorises (:func:`_exp_row`, :func:`_cos_sin`).
They are numba loops because torch inductor, which compiled them before, writes scalar or slow
code for complex data on many CPUs and compiles again for every image size in every process (the
measurements: docs/performance.md). The kernels write into buffers kept between iterations or
over their input; the FFTs return fresh tensors (ATen's FFT with ``out=`` computes into a
temporary and copies it). Fresh maps are cheaper where the allocator hands back memory just
freed, still in cache, than where an FFT's output goes to memory out of cache, so each FFT's
output is freed as soon as it is dead.

First order only. Refining the coherence parameters, double backward (the defocus uncertainty's
Hessian) and float64 models use autograd through the forward model instead.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from phasepipe import physics

TV_EPS = 1e-3  # smoothing of the total variation's norm, rad per px
# What this backend covers: the parameters (phasepipe.parameters.Parameters) whose gradients its
# result carries, through the phase and log-amplitude maps, Parameters.defocus_nm() and
# Parameters.shifts_px(); and those it models at fixed values (the coherence envelopes, as fixed
# maps). A fit whose parameters include one it does not model, or that refines one it does not
# differentiate, takes autograd instead (ForwardModel.objective); tests/test_reconstruct.py checks
# every name here against autograd.
DIFFERENTIATES = frozenset({"phase", "log_amplitude", "defocus_scale", "defocus", "shifts"})
COVERS = DIFFERENTIATES | {"beam_divergence", "defocus_spread"}

# Contracted multiply-adds and reordered sums (so that LLVM vectorises the reductions); NaN and inf
# keep their meaning, so that a diverging fit is still seen as one.
_OPTIONS = {"nogil": True, "error_model": "numpy", "fastmath": {"contract", "reassoc", "nsz"}}


def _jit(function):
    """``function`` compiled by numba on its first call, the machine code cached on disk where
    numba finds a writable place (beside this file, ``NUMBA_CACHE_DIR``, the user's cache folder),
    otherwise compiled anew in every process (a read-only install and home, as in some containers,
    where ``cache=True`` alone would fail the import)."""
    try:
        return numba.njit(cache=True, **_OPTIONS)(function)
    except RuntimeError:  # numba's "cannot cache function ...: no locator available"
        return numba.njit(**_OPTIONS)(function)


def _pairs(z: torch.Tensor) -> np.ndarray:
    """The complex64 map ``z`` (y, x) as the float32 array (y, x, 2) of its real and imaginary
    parts, sharing its memory: the form the numba kernels read and write."""
    return torch.view_as_real(z).numpy()


# exp and sin/cos as float32 polynomials (Cephes' expf, sinf and cosf: within 3 ulp): numba has no
# vectorised exp, cos or sin without Intel's SVML, and libm's scalar calls cost several times the
# rest of a kernel. Plain arithmetic, LLVM vectorises it.
_LOG2E, _LN2_HI, _LN2_LO = np.float32(1.4426950408889634), np.float32(0.693359375), np.float32(-2.12194440e-4)
_TWO_OVER_PI = np.float32(0.6366197723675814)
_PIO2_1, _PIO2_2, _PIO2_3 = np.float32(1.5703125), np.float32(4.837512969970703e-4), np.float32(7.549789954891882e-8)


@_jit
def _exp_row(row, bits):
    """row = exp(row) in place (float32), finite arguments clamped to [-87, 88] (results
    1.6e-38 ... 1.7e38: no underflow to 0), NaN and +-inf giving NaN (a diverging fit is still seen
    as one); ``bits`` an int32 row of the same length, for 2^n."""
    power = bits.view(np.float32)
    for i in range(len(row)):
        argument = row[i]
        value = min(max(argument, np.float32(-87.0)), np.float32(88.0))
        n = np.floor(value * _LOG2E + np.float32(0.5))
        r = value - n * _LN2_HI - n * _LN2_LO  # |r| <= ln 2 / 2, in two steps for precision
        p = np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)
        p = ((p * r + np.float32(8.3334519073e-3)) * r + np.float32(4.1665795894e-2)) * r
        p = (p + np.float32(1.6666665459e-1)) * r + np.float32(5.0000001201e-1)
        finite = abs(argument) <= np.float32(3.4e38)  # False for NaN and +-inf
        row[i] = (p * r * r + r + np.float32(1.0)) if finite else np.float32(np.nan)
        bits[i] = (np.int32(n) + 127) << 23  # 2^n as float32 bits
    for i in range(len(row)):
        row[i] *= power[i]


@_jit
def _cos_sin(angle):
    """(cos, sin) of a float32 angle: reduced to |r| <= pi / 4 by multiples n of pi / 2 (in three
    steps: exact for |angle| up to about 1e4), the quadrant n mod 4 picking and signing the two."""
    n = np.floor(angle * _TWO_OVER_PI + np.float32(0.5))
    r = ((angle - n * _PIO2_1) - n * _PIO2_2) - n * _PIO2_3
    z = r * r
    s = ((np.float32(-1.9515295891e-4) * z + np.float32(8.3321608736e-3)) * z - np.float32(1.6666654611e-1)) * z * r + r
    c = (np.float32(2.443315711809948e-5) * z - np.float32(1.388731625493765e-3)) * z + np.float32(4.166664568298827e-2)
    c = c * z * z - np.float32(0.5) * z + np.float32(1.0)
    quadrant = np.int32(n)
    odd = (quadrant & 1) != 0
    cos, sin = (s if odd else c), (c if odd else s)
    return (-cos if ((quadrant + 1) & 2) != 0 else cos), (-sin if (quadrant & 2) != 0 else sin)


@_jit
def _wave(phase, log_amplitude, psi):
    """psi (y, x, 2) = exp(log_amplitude + i phase)."""
    width = phase.shape[1]
    amplitude, bits = np.empty(width, np.float32), np.empty(width, np.int32)
    re, im = np.empty(width, np.float32), np.empty(width, np.float32)
    for y in range(phase.shape[0]):
        # Row by row, each step its own loop over the row: LLVM vectorises a loop that stores
        # planar values, not one that also stores the interleaved pairs.
        row, out = phase[y], psi[y]
        amplitude[:] = log_amplitude[y]
        _exp_row(amplitude, bits)
        for x in range(width):
            cos, sin = _cos_sin(row[x])
            re[x] = amplitude[x] * cos
            im[x] = amplitude[x] * sin
        for x in range(width):
            out[x, 0] = re[x]
            out[x, 1] = im[x]


@_jit
def _spectrum(psi_spectrum, a_re, a_im, e1, e2, ramp_y, ramp_x, defocus_nm, t_re, t_im, spectrum):
    """T R of one image into ``t_re`` and ``t_im``, and S = Psi T R into ``spectrum`` (Psi =
    ``psi_spectrum``, both (y, x, 2)).

    T R = A exp(df e1 + df^2 e2) u_y u_x: A = exp(e0 + i p0) (:func:`physics.transfer_coefficients`)
    and the rest of the phase, exp(i (df p1 + shift angle)), separable into u_y (2, y) times
    u_x (2, x) because p1 and the shift angle are sums of a function of qy and one of qx: a real
    exp per pixel and no cos or sin.
    """
    width = e1.shape[1]
    bits = np.empty(width, np.int32)
    ux_re, ux_im = ramp_x[0], ramp_x[1]
    for y in range(e1.shape[0]):
        # Row by row in three loops, as in _wave.
        e1_row, e2_row, tr_row, ti_row = e1[y], e2[y], t_re[y], t_im[y]
        for x in range(width):
            tr_row[x] = defocus_nm * (e1_row[x] + defocus_nm * e2_row[x])
        _exp_row(tr_row, bits)
        uy_re, uy_im, ar_row, ai_row = ramp_y[0, y], ramp_y[1, y], a_re[y], a_im[y]
        for x in range(width):
            u_re = uy_re * ux_re[x] - uy_im * ux_im[x]
            u_im = uy_re * ux_im[x] + uy_im * ux_re[x]
            magnitude = tr_row[x]
            tr_row[x] = magnitude * (ar_row[x] * u_re - ai_row[x] * u_im)
            ti_row[x] = magnitude * (ar_row[x] * u_im + ai_row[x] * u_re)
        psi_row, out = psi_spectrum[y], spectrum[y]
        for x in range(width):
            p_re, p_im, tr, ti = psi_row[x, 0], psi_row[x, 1], tr_row[x], ti_row[x]
            out[x, 0] = p_re * tr - p_im * ti
            out[x, 1] = p_re * ti + p_im * tr


@_jit
def _residual(wave, data, measured, count, weight):
    """Misfit term of one image; F^-1[dL/dS] written over W = ``wave`` (y, x, 2).

    With I = |W|^2, M the measured pixels (``measured``, 1 or 0) and P_M = ``count`` of them:
    m = sum M I / P_M, J = I / m, r = J - D, L = w sum M r^2 / P_M and
    dL/dW = 4 w M (r - C / P_M) W / (P_M m) with C = sum M r J. L and C are polynomials in 1 / m
    of S1 = sum M I, S2 = sum M I^2, S3 = sum M D I and S4 = sum M D^2, sums that need no m: one
    pass over W finds them, a second writes the gradient. The 1 / P of F^-1's adjoint is folded in.
    """
    height, width = data.shape
    # float64 products and sums: L and C are small differences of sums of the size of P_M.
    s1 = s2 = s3 = s4 = 0.0
    for y in range(height):
        for x in range(width):
            w_re, w_im = wave[y, x, 0], wave[y, x, 1]
            intensity, d, m = np.float64(w_re * w_re + w_im * w_im), np.float64(data[y, x]), measured[y, x]
            s1 += m * intensity
            s2 += m * intensity * intensity
            s3 += m * d * intensity
            s4 += m * d * d
    mean = s1 / count
    cross = s2 / mean**2 - s3 / mean
    misfit = weight * (cross - s3 / mean + s4) / count  # sum M (J - D)^2 = C - sum M D J + S4
    # dL/dW = M (a |W|^2 - b D - c) W: the constants folded (no division per pixel).
    scale = 4 * weight / (height * width * count * mean)
    a, b, c = np.float32(scale / mean), np.float32(scale), np.float32(scale * cross / count)
    for y in range(height):
        for x in range(width):
            w_re, w_im = wave[y, x, 0], wave[y, x, 1]
            g = measured[y, x] * (a * (w_re * w_re + w_im * w_im) - b * data[y, x] - c)
            wave[y, x, 0] = g * w_re
            wave[y, x, 1] = g * w_im
    return misfit


@_jit
def _adjoint(grad, spectrum, t_re, t_im, real, half_slope, p1_y, p1_x, along_y, along_x, defocus_nm, h_sum):
    """h = conj(T R) G added to ``h_sum``; the gradients of the image's defocus and shift (y, x).
    G = dL/dS, S = ``spectrum`` and h_sum are (y, x, 2).

    dL/d theta = Re sum conj(G) S d log(T R)/d theta, S = Psi T R:
    d log T/d df = real + slope df + i p1 (:func:`physics.transfer_log_derivative`), evaluated
    as real + (2 df) ``half_slope`` (half_slope = slope / 2, exact): the float32 order in which
    the releases so far were computed, whose fits another order would not reproduce bit for bit
    (a long fit amplifies a different rounding); and
    d log R/d shift = i times the shift angle of a unit shift (``along_y``, ``along_x``).
    p1 = p1_y + p1_x and the unit shift angles are given as vectors along y and x: full maps
    would be read from memory for each image.
    """
    d_defocus = d_y = d_x = 0.0
    twice_defocus = 2 * defocus_nm
    for y in range(t_re.shape[0]):
        # float32 sums along a row (vectorised), float64 across rows.
        row_defocus = row_y = row_x = np.float32(0)
        for x in range(t_re.shape[1]):
            g_re, g_im, tr, ti = grad[y, x, 0], grad[y, x, 1], t_re[y, x], t_im[y, x]
            h_sum[y, x, 0] += tr * g_re + ti * g_im
            h_sum[y, x, 1] += tr * g_im - ti * g_re
            s_re, s_im = spectrum[y, x, 0], spectrum[y, x, 1]
            c_re = g_re * s_re + g_im * s_im
            c_im = g_re * s_im - g_im * s_re
            row_defocus += c_re * (real[y, x] + twice_defocus * half_slope[y, x]) - c_im * (p1_y[y] + p1_x[x])
            row_y += c_im
            row_x += c_im * along_x[x]
        d_defocus += row_defocus
        d_y += row_y * along_y[y]
        d_x += row_x
    return d_defocus, -d_y, -d_x


@_jit
def _normalised_row(phase, y, eps, dy_norm, dx_norm):
    """Backward differences of the (periodic) phase along y and x on row ``y``, each divided by
    their smoothed norm sqrt(dy^2 + dx^2 + eps^2), into ``dy_norm`` and ``dx_norm``; the sum of
    the norms along the row."""
    height, width = phase.shape
    above = phase[y - 1 if y > 0 else height - 1]
    row = phase[y]
    total = np.float32(0)
    eps2 = eps * eps
    for x in range(width):
        dy = row[x] - above[x]
        dx = row[x] - row[x - 1 if x > 0 else width - 1]
        norm = np.sqrt(dy * dy + dx * dx + eps2)
        dy_norm[x] = dy / norm
        dx_norm[x] = dx / norm
        total += norm
    return total


@_jit
def _total_variation(phase, eps, gradient):
    """Isotropic, smoothed, periodic total variation (mean over pixels), its gradient into
    ``gradient``.

    The gradient at a pixel needs the normalised differences at its neighbours below and to the
    right too: they are made a row ahead and kept for two rows, not as maps.
    """
    height, width = phase.shape
    eps = np.float32(eps)
    scale = np.float32(1 / (height * width))
    dy_norm, dx_norm = np.empty(width, np.float32), np.empty(width, np.float32)
    below_dy, below_dx = np.empty(width, np.float32), np.empty(width, np.float32)
    total = np.float64(_normalised_row(phase, 0, eps, dy_norm, dx_norm))
    for y in range(height):
        below = y + 1 if y + 1 < height else 0
        row_total = _normalised_row(phase, below, eps, below_dy, below_dx)
        if below:
            total += row_total
        for x in range(width):
            right = x + 1 if x + 1 < width else 0
            gradient[y, x] = scale * (dy_norm[x] + dx_norm[x] - below_dy[x] - dx_norm[right])
        dy_norm, dx_norm, below_dy, below_dx = below_dy, below_dx, dy_norm, dx_norm
    return total / (height * width)


@_jit
def _object_gradient(grad_wave, psi, phase, tv_weight, eps, d_phase, d_log_amplitude):
    """dL/dphi = Re(conj(g) i psi) + tv_weight dTV/dphi into ``d_phase`` and
    dL/d(log a) = Re(conj(g) psi) into ``d_log_amplitude``, for g = dL/dpsi (g and psi (y, x, 2));
    returns TV(phase)."""
    tv = _total_variation(phase, eps, d_phase)
    weight = np.float32(tv_weight)
    for y in range(phase.shape[0]):
        for x in range(phase.shape[1]):
            g_re, g_im, p_re, p_im = grad_wave[y, x, 0], grad_wave[y, x, 1], psi[y, x, 0], psi[y, x, 1]
            d_phase[y, x] = g_im * p_re - g_re * p_im + weight * d_phase[y, x]
            d_log_amplitude[y, x] = g_re * p_re + g_im * p_im
    return tv


class _Maps:
    """q-maps and q-vectors of T R for one image size and coherence (theta_c, Delta), made in
    float64 and kept as float32."""

    def __init__(self, qy, qx, wavelength_nm: float, cs_nm: float, coherence: tuple, pixel_size_nm: float):
        qy, qx = qy.double(), qx.double()
        coefficients = physics.transfer_coefficients(qy * qy + qx * qx, wavelength_nm, cs_nm, *coherence)
        e0, e1, e2, p0, p1 = coefficients
        amplitude = torch.exp(e0)
        unit = torch.eye(2, dtype=torch.float64)
        along_y = physics.shift_angle(qy, qx, unit[0], pixel_size_nm)
        along_x = physics.shift_angle(qy, qx, unit[1], pixel_size_nm)
        # T R's fixed parts (_spectrum): A = exp(e0 + i p0), real and imaginary, e1 and e2.
        self.transfer = tuple(x.float().numpy() for x in (amplitude * torch.cos(p0), amplitude * torch.sin(p0), e1, e2))
        # p1 = -pi lambda q^2 and the shift angle are a function of qy plus one of qx; qy = qx = 0
        # in the first row and column, which hold them.
        self.vectors = tuple(v.numpy() for v in (p1[:, 0], p1[0], along_y[:, 0], along_x[0]))
        # d log(T R)/d theta (_adjoint), from physics: the real part real + slope df (defocus, the
        # slope halved for _adjoint's order), the imaginary part p1 (defocus) as a vector along y
        # plus one along x, unit shifts (y and x).
        real, _, slope = physics.transfer_log_derivative(coefficients)
        self.derivatives = (
            real.float().numpy(),
            (slope / 2).float().numpy(),
            *(v.astype(np.float32) for v in self.vectors),
        )

    def ramps(self, defocus_nm: torch.Tensor, shifts_px: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """u_y (N, 2, y) and u_x (N, 2, x), real and imaginary parts: exp(i (df p1 + shift angle))
        = u_y u_x, per image."""
        n_images, (height, width) = len(defocus_nm), (len(v) for v in self.vectors[:2])
        ramp_y, ramp_x = np.empty((n_images, 2, height), np.float32), np.empty((n_images, 2, width), np.float32)
        _ramps(defocus_nm.double().numpy(), shifts_px.double().numpy(), *self.vectors, ramp_y, ramp_x)
        return ramp_y, ramp_x


@_jit
def _ramps(defocus_nm, shifts_px, p1_y, p1_x, along_y, along_x, ramp_y, ramp_x):
    """:meth:`_Maps.ramps` into ``ramp_y`` and ``ramp_x``: the angles in float64."""
    for k in range(len(defocus_nm)):
        _ramp(defocus_nm[k], shifts_px[k, 0], p1_y, along_y, ramp_y[k])
        _ramp(defocus_nm[k], shifts_px[k, 1], p1_x, along_x, ramp_x[k])


@_jit
def _ramp(defocus_nm, shift_px, p1, along, out):
    """cos and sin of df p1 + shift along (one image, one axis) into out (2, n)."""
    for j in range(len(p1)):
        angle = defocus_nm * p1[j] + shift_px * along[j]
        out[0, j] = np.cos(angle)
        out[1, j] = np.sin(angle)


class _Workspace:
    """Buffers of one image shape for the kernels' outputs, reused by every image and iteration."""

    def __init__(self, shape: tuple[int, int], device: torch.device):
        self.key = (shape, device)
        # psi, S = Psi T R and dL/dPsi, and the same memory as the numba kernels see it (_pairs).
        self.psi, self.spectrum, self.h_sum = (torch.empty(shape, dtype=torch.complex64) for _ in range(3))
        self.psi_pairs, self.spectrum_pairs, self.h_sum_pairs = map(_pairs, (self.psi, self.spectrum, self.h_sum))
        # T R of the image at hand, real and imaginary: made by _spectrum, read by _adjoint.
        self.t_re, self.t_im = np.empty(shape, np.float32), np.empty(shape, np.float32)
        self.maps: _Maps | None = None
        self.maps_key: tuple = ()


class SeriesMisfit:
    """Misfit of a through-focus series and its first-order gradient in one pass (see module doc).

    Parameters
    ----------
    qy, qx : float32 frequency grid (:func:`physics.frequency_grid`), cycles per nm.
    wavelength_nm, cs_nm, pixel_size_nm : the fixed optics.
    measured : optional (y, x) weights of the pixels, 1 where data exist and 0 elsewhere (a
        tile's canvas): the images' means and the misfit are taken over them.
    """

    def __init__(
        self,
        qy: torch.Tensor,
        qx: torch.Tensor,
        wavelength_nm: float,
        cs_nm: float,
        pixel_size_nm: float,
        measured: torch.Tensor | None = None,
    ):
        self.qy, self.qx = qy, qx
        self.wavelength_nm, self.cs_nm, self.pixel_size_nm = wavelength_nm, cs_nm, pixel_size_nm
        shape = (qy.numel(), qx.numel())
        # All pixels measured: a map of ones (one more read per pass) keeps one compiled kernel.
        self.measured = np.ones(shape, np.float32) if measured is None else measured.cpu().numpy()
        self.count = float(self.measured.sum(dtype=np.float64))
        self._workspace: _Workspace | None = None

    def __call__(
        self,
        phase: torch.Tensor,
        log_amplitude: torch.Tensor,
        defocus_nm: torch.Tensor,
        shifts_px: torch.Tensor,
        data: torch.Tensor,
        weight: torch.Tensor,
        beam_divergence_rad: torch.Tensor,
        defocus_spread_nm: torch.Tensor,
        tv_weight: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss misfit + tv_weight :func:`total_variation` (phase), and the misfit
        sum_k weight_k mean_M((I_k / mean_M(I_k) - data_k)^2), I_k = |F^-1[F[psi] T_k R_k]|^2,
        means over the measured pixels M.

        ``phase`` and ``log_amplitude`` (y, x) give psi = exp(log_amplitude + i phase);
        ``defocus_nm`` (N,) and ``shifts_px`` (N, 2) every image's defocus and drift (y, x);
        ``data`` (N, y, x) the mean-normalised images, ``weight`` (N,) their weights (summing to
        1; images of weight 0 are skipped); the coherence parameters are not differentiated.
        Returns two 0-d float32 tensors: the loss, whose gradient flows to phase, log_amplitude,
        defocus_nm and shifts_px, and the misfit, which has none. The total variation's value and
        gradient come from the pass that makes the phase's gradient: no pass, kernel or autograd
        node of their own.
        """
        key = (tuple(data.shape[1:]), data.device)
        if self._workspace is None or self._workspace.key != key:
            self._workspace = _Workspace(*key)
        ws = self._workspace
        coherence = (float(beam_divergence_rad), float(defocus_spread_nm))
        if ws.maps_key != coherence:  # fixed unless the coherence changes
            ws.maps = _Maps(self.qy, self.qx, self.wavelength_nm, self.cs_nm, coherence, self.pixel_size_nm)
            ws.maps_key = coherence
        return _SeriesMisfitFunction.apply(
            phase, log_amplitude, defocus_nm, shifts_px, data, weight, tv_weight, self, ws
        )

    def forward(self, ctx, phase, log_amplitude, defocus_nm, shifts_px, data, weight, tv_weight, ws: _Workspace):
        """Loss and misfit, and with ``ctx.needs_input_grad`` the gradients, which it saves in ``ctx``.

        Each image is done start to end (S, W, residual, gradient) while its buffers are in
        cache.
        """
        maps = ws.maps
        phase = phase.detach()
        _wave(phase.numpy(), log_amplitude.detach().numpy(), ws.psi_pairs)
        spectrum = torch.fft.fft2(ws.psi)
        spectrum_pairs = _pairs(spectrum)
        defocus = defocus_nm.detach()
        ramp_y, ramp_x = maps.ramps(defocus, shifts_px.detach())
        needs_grad = any(ctx.needs_input_grad[:4])
        ws.h_sum.zero_()
        # Every image's views made before the loop: a small operation right after an FFT costs
        # several times what it does alone (the FFT has evicted the interpreter's working set).
        per_image = list(
            zip(
                ramp_y,
                ramp_x,
                defocus.numpy().astype(np.float32),
                data.numpy(),
                weight.tolist(),
                strict=True,
            )
        )
        misfits, gradients = [], [(0.0, 0.0, 0.0)] * len(data)
        for k in [k for k, w in enumerate(weight.tolist()) if w != 0]:
            ramp_y_k, ramp_x_k, defocus_k, data_k, weight_k = per_image[k]
            _spectrum(
                spectrum_pairs, *maps.transfer, ramp_y_k, ramp_x_k, defocus_k, ws.t_re, ws.t_im, ws.spectrum_pairs
            )
            wave = torch.fft.ifft2(ws.spectrum)  # W_k
            misfits.append(_residual(_pairs(wave), data_k, self.measured, self.count, weight_k))
            if not needs_grad:
                del wave
                continue
            # Each FFT's output is freed as soon as it is dead: the next one then reuses memory
            # still in cache (module doc).
            grad = torch.fft.fft2(wave)  # dL/dS_k
            del wave
            gradients[k] = _adjoint(
                _pairs(grad), ws.spectrum_pairs, ws.t_re, ws.t_im, *maps.derivatives, defocus_k, ws.h_sum_pairs
            )
            del grad
        if needs_grad:
            gradients = torch.tensor(gradients, dtype=torch.float64)
            # The adjoint of fft2 is the unnormalised inverse transform; without images, dL/dPsi = 0.
            h_psi = torch.fft.ifft2(ws.h_sum, norm="forward")
            d_phase, d_log_amplitude = torch.empty_like(phase), torch.empty_like(phase)
            tv = _object_gradient(
                _pairs(h_psi), ws.psi_pairs, phase.numpy(), tv_weight, TV_EPS, d_phase.numpy(), d_log_amplitude.numpy()
            )
            d_defocus = gradients[:, 0].to(defocus_nm.dtype)
            d_shift = gradients[:, 1:].to(shifts_px.dtype)
            ctx.save_for_backward(d_phase, d_log_amplitude, d_defocus, d_shift)
        else:
            tv = _total_variation(phase.numpy(), TV_EPS, np.empty(phase.shape, np.float32))
        misfit = torch.tensor(sum(misfits), dtype=torch.float32)
        return misfit + tv_weight * torch.tensor(tv, dtype=torch.float32), misfit


class _SeriesMisfitFunction(torch.autograd.Function):
    """Loss, misfit and gradient in one forward pass; the backward only scales the stored gradient."""

    @staticmethod
    def forward(ctx, phase, log_amplitude, defocus_nm, shifts_px, data, weight, tv_weight, series, workspace):
        loss, misfit = series.forward(
            ctx, phase, log_amplitude, defocus_nm, shifts_px, data, weight, tv_weight, workspace
        )
        ctx.mark_non_differentiable(misfit)
        return loss, misfit

    @staticmethod
    def backward(ctx, grad_loss, grad_misfit):
        gradients = ctx.saved_tensors
        if grad_loss != 1:  # a loss's own backward passes 1: no full-size pass for it
            gradients = [grad_loss * d for d in gradients]
        return (*gradients, None, None, None, None, None)


class _TotalVariationFunction(torch.autograd.Function):
    """:func:`_total_variation` of a CPU float32 phase, its analytic gradient kept for the backward."""

    @staticmethod
    def forward(ctx, phase, eps):
        gradient = torch.empty_like(phase)
        value = _total_variation(phase.detach().numpy(), eps, gradient.numpy())
        ctx.save_for_backward(gradient)
        return torch.tensor(value, dtype=phase.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (gradient,) = ctx.saved_tensors
        return gradient if grad_output == 1 else grad_output * gradient, None


def total_variation(phase: torch.Tensor, eps: float = TV_EPS) -> torch.Tensor:
    """Isotropic, slightly smoothed, periodic total variation (mean over pixels):
    mean(sqrt(dy^2 + dx^2 + eps^2)), dy and dx backward differences. A CPU float32 phase takes the
    numba kernel with its analytic gradient; others (float64, a GPU's) the formula, by autograd."""
    if phase.device.type == "cpu" and phase.dtype == torch.float32:
        return _TotalVariationFunction.apply(phase, eps)
    dy = phase - torch.roll(phase, 1, 0)
    dx = phase - torch.roll(phase, 1, 1)
    return torch.sqrt(dy * dy + dx * dx + eps**2).mean()

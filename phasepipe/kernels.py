"""The fast path's numba kernels (:mod:`phasepipe.fused` is their torch interface and says what
each computes and why): loops over complex maps' (y, x, 2) float32 view, compiled on first use
for every image size at once, cached on disk for later processes (:func:`jit`), released from the
GIL; exp, cos and sin are float32 polynomials that LLVM vectorises.
"""

from __future__ import annotations

import numba
import numpy as np

# Contracted multiply-adds and reordered sums (so that LLVM vectorises the reductions); NaN and inf
# keep their meaning, so that a diverging fit is still seen as one.
OPTIONS = {"nogil": True, "error_model": "numpy", "fastmath": {"contract", "reassoc", "nsz"}}


def jit(function):
    """``function`` compiled by numba on its first call, the machine code cached on disk where
    numba finds a writable place (beside this file, ``NUMBA_CACHE_DIR``, the user's cache folder),
    otherwise compiled anew in every process (a read-only install and home, as in some containers,
    where ``cache=True`` alone would fail the import)."""
    try:
        return numba.njit(cache=True, **OPTIONS)(function)
    except RuntimeError:  # numba's "cannot cache function ...: no locator available"
        return numba.njit(**OPTIONS)(function)


# exp and sin/cos as float32 polynomials (Cephes' expf, sinf and cosf: within 3 ulp): numba has no
# vectorised exp, cos or sin without Intel's SVML, and libm's scalar calls cost several times the
# rest of a kernel. Plain arithmetic, LLVM vectorises it.
_LOG2E, _LN2_HI, _LN2_LO = np.float32(1.4426950408889634), np.float32(0.693359375), np.float32(-2.12194440e-4)
_TWO_OVER_PI = np.float32(0.6366197723675814)
_PIO2_1, _PIO2_2, _PIO2_3 = np.float32(1.5703125), np.float32(4.837512969970703e-4), np.float32(7.549789954891882e-8)


@jit
def exp_row(row, bits):
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


@jit
def cos_sin(angle):
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


@jit
def wave(phase, log_amplitude, psi):
    """psi (y, x, 2) = exp(log_amplitude + i phase)."""
    width = phase.shape[1]
    amplitude, bits = np.empty(width, np.float32), np.empty(width, np.int32)
    re, im = np.empty(width, np.float32), np.empty(width, np.float32)
    for y in range(phase.shape[0]):
        # Row by row, each step its own loop over the row: LLVM vectorises a loop that stores
        # planar values, not one that also stores the interleaved pairs.
        row, out = phase[y], psi[y]
        amplitude[:] = log_amplitude[y]
        exp_row(amplitude, bits)
        for x in range(width):
            cos, sin = cos_sin(row[x])
            re[x] = amplitude[x] * cos
            im[x] = amplitude[x] * sin
        for x in range(width):
            out[x, 0] = re[x]
            out[x, 1] = im[x]


@jit
def spectrum(psi_spectrum, a_re, a_im, e1, e2, ramp_y, ramp_x, defocus_nm, t_re, t_im, spectrum):
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
        # Row by row in three loops, as in wave.
        e1_row, e2_row, tr_row, ti_row = e1[y], e2[y], t_re[y], t_im[y]
        for x in range(width):
            tr_row[x] = defocus_nm * (e1_row[x] + defocus_nm * e2_row[x])
        exp_row(tr_row, bits)
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


@jit
def residual(wave, data, measured, count, weight):
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


@jit
def adjoint(grad, spectrum, t_re, t_im, real, half_slope, p1_y, p1_x, along_y, along_x, defocus_nm, h_sum):
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


@jit
def normalised_row(phase, y, eps, dy_norm, dx_norm):
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


@jit
def total_variation(phase, eps, gradient):
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
    total = np.float64(normalised_row(phase, 0, eps, dy_norm, dx_norm))
    for y in range(height):
        below = y + 1 if y + 1 < height else 0
        row_total = normalised_row(phase, below, eps, below_dy, below_dx)
        if below:
            total += row_total
        for x in range(width):
            right = x + 1 if x + 1 < width else 0
            gradient[y, x] = scale * (dy_norm[x] + dx_norm[x] - below_dy[x] - dx_norm[right])
        dy_norm, dx_norm, below_dy, below_dx = below_dy, below_dx, dy_norm, dx_norm
    return total / (height * width)


@jit
def object_gradient(grad_wave, psi, phase, tv_weight, eps, d_phase, d_log_amplitude):
    """dL/dphi = Re(conj(g) i psi) + tv_weight dTV/dphi into ``d_phase`` and
    dL/d(log a) = Re(conj(g) psi) into ``d_log_amplitude``, for g = dL/dpsi (g and psi (y, x, 2));
    returns TV(phase)."""
    tv = total_variation(phase, eps, d_phase)
    weight = np.float32(tv_weight)
    for y in range(phase.shape[0]):
        for x in range(phase.shape[1]):
            g_re, g_im, p_re, p_im = grad_wave[y, x, 0], grad_wave[y, x, 1], psi[y, x, 0], psi[y, x, 1]
            d_phase[y, x] = g_im * p_re - g_re * p_im + weight * d_phase[y, x]
            d_log_amplitude[y, x] = g_re * p_re + g_im * p_im
    return tv


@jit
def ramps(defocus_nm, shifts_px, p1_y, p1_x, along_y, along_x, ramp_y, ramp_x):
    """:meth:`_Maps.ramps` into ``ramp_y`` and ``ramp_x``: the angles in float64."""
    for k in range(len(defocus_nm)):
        ramp(defocus_nm[k], shifts_px[k, 0], p1_y, along_y, ramp_y[k])
        ramp(defocus_nm[k], shifts_px[k, 1], p1_x, along_x, ramp_x[k])


@jit
def ramp(defocus_nm, shift_px, p1, along, out):
    """cos and sin of df p1 + shift along (one image, one axis) into out (2, n)."""
    for j in range(len(p1)):
        angle = defocus_nm * p1[j] + shift_px * along[j]
        out[0, j] = np.cos(angle)
        out[1, j] = np.sin(angle)

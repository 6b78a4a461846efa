"""The reconstruction's misfit and total variation with analytic gradients: the fast path of a fit.

Autograd through the forward model (:class:`phasepipe.reconstruct.ForwardModel`) spends most of an
iteration on element-wise complex work: a full-size pass per operation and direction, fresh
buffers, dtype promotions. :class:`SeriesMisfit` computes the misfit of a series and its gradient
together, in the 2N + 2 FFTs they need, with three compiled kernels per image between them:

- spectrum: S = Psi T R (psi's spectrum times the transfer function of :mod:`phasepipe.physics`
  and the drift ramp). T R's phase is p0 + df p1 + the shift angle, and p1 = -pi lambda q^2 and
  the shift angle are a function of qy plus one of qx: exp(i phase) is a fixed map times the
  outer product of two vectors made per image, so a pixel costs one real exp (the coherence
  envelopes, not separable) and no cos or sin;
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

Kernels are compiled by torch inductor on first use for each image size (eager where compilation
is unavailable). They see complex maps as one int64 word per pixel (:func:`_split`,
:func:`_join`): inductor's code for the (y, x, 2) float view is scalar on CPU, the 64-bit words
keep loads and stores contiguous and vectorised, and the kernels read and write the FFTs' inputs
and outputs directly. The spectrum kernel returns fresh maps: when it wrote them into kept
buffers, inductor split it into two loops with temporaries between them (30 % slower alone, 4 %
per call of the misfit at 512^2). The other kernels write into buffers kept between iterations
or over their input; the FFTs return fresh tensors (ATen's FFT with ``out=`` computes into a
temporary and copies it). Fresh maps are cheaper where the allocator hands back memory just
freed, still in cache: a 512^2 FFT whose output goes to memory out of cache takes 1.4-1.7 times
as long. Each map is therefore freed as soon as it is dead (the misfit call 6-9 % faster).

First order only. Refining the coherence parameters, double backward (the defocus uncertainty's
Hessian) and float64 models use autograd through the forward model instead.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import torch

from phasepipe import physics

log = logging.getLogger(__name__)


RECOMPILE_LIMIT = 64  # image sizes compiled per kernel and process
TV_EPS = 1e-3  # smoothing of the total variation's norm, rad per px


class _Kernel:
    """``fn`` compiled by torch inductor on its first call, or ``fn`` itself if compilation fails."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.run: Callable | None = None

    def __call__(self, *args):
        # One compilation per image size: a worker fitting tiles of several sizes (edge tiles,
        # their coarse fits) needs more than dynamo's default of 8, past which it would quietly
        # run the kernel eagerly: slower, and rounded otherwise, so that a tile's bytes would
        # depend on which worker fitted it. The setting is per thread (a Dask worker's tasks run
        # on threads of their own), hence here, on every call.
        if torch._dynamo.config.recompile_limit < RECOMPILE_LIMIT:
            torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
        if self.run is None:
            # Static shapes vectorise better than dynamic ones.
            compiled = torch.compile(self.fn, dynamic=False)
            try:
                result = compiled(*args)
            except Exception as error:  # any compiler failure: the eager kernel computes the same
                log.warning("torch.compile of %s failed (%s); running it eagerly", self.fn.__name__, error)
                self.run = self.fn
            else:
                self.run = compiled
                return result
        return self.run(*args)


def _split(bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of a complex64 map seen as int64 (``z.view(torch.int64)``).

    Inductor's code for the strided (y, x, 2) view of complex data is scalar on CPU; one 64-bit
    word per pixel, split by bit operations, keeps every load contiguous and vectorised. The real
    part is the low word (little-endian, checked in :class:`_Workspace`).
    """
    return bits.to(torch.int32).view(torch.float32), (bits >> 32).to(torch.int32).view(torch.float32)


def _join(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    """The int64 words of the complex64 map re + i im (inverse of :func:`_split`)."""
    return (im.view(torch.int32).to(torch.int64) << 32) | (re.view(torch.int32).to(torch.int64) & 0xFFFFFFFF)


def _wave(phase, log_amplitude, psi):
    """psi = exp(log_amplitude + i phase) into the complex map ``psi`` (int64 words)."""
    amplitude = torch.exp(log_amplitude)
    psi.copy_(_join(amplitude * torch.cos(phase), amplitude * torch.sin(phase)))


def _spectrum(psi, a_re, a_im, e1, e2, ramp_y, ramp_x, defocus_nm):
    """T R (planar, real and imaginary maps) and S = Psi T R (int64 words) from Psi (int64 words).

    T R = A exp(df e1 + df^2 e2) u_y u_x: A = exp(e0 + i p0) (:func:`physics.transfer_coefficients`)
    and the rest of the phase, exp(i (df p1 + shift angle)), separable into u_y (2, y) times
    u_x (2, x) because p1 and the shift angle are sums of a function of qy and one of qx: a real
    exp per pixel and no cos or sin.
    """
    magnitude = torch.exp(defocus_nm * (e1 + defocus_nm * e2))
    uy_re, uy_im, ux_re, ux_im = ramp_y[0, :, None], ramp_y[1, :, None], ramp_x[0], ramp_x[1]
    u_re = uy_re * ux_re - uy_im * ux_im
    u_im = uy_re * ux_im + uy_im * ux_re
    tr_re = magnitude * (a_re * u_re - a_im * u_im)
    tr_im = magnitude * (a_re * u_im + a_im * u_re)
    p_re, p_im = _split(psi)
    return tr_re, tr_im, _join(p_re * tr_re - p_im * tr_im, p_re * tr_im + p_im * tr_re)


def _residual(image, data, measured, count, weight):
    """Misfit term of one image; F^-1[dL/dS] written over W = ``image`` (int64 words).

    With I = |W|^2, M the measured pixels (``measured``, None: all) and P_M = ``count`` of them:
    m = sum M I / P_M, J = I / m, r = J - D, L = w sum M r^2 / P_M and
    dL/dW = 4 w M (r - C / P_M) W / (P_M m) with C = sum M r J. L and C are polynomials in 1 / m
    of S1 = sum M I, S2 = sum M I^2, S3 = sum M D I and S4 = sum M D^2, sums that need no m: one
    pass over W finds them, a second writes the gradient. The 1 / P of F^-1's adjoint is folded in.
    """
    w_re, w_im = _split(image)
    intensity = w_re * w_re + w_im * w_im
    weighted, data_weighted = (intensity, data) if measured is None else (measured * intensity, measured * data)
    # float64 products and sums: L and C are small differences of sums of the size of P_M.
    intensity64, data64 = intensity.double(), data.double()
    s1, s2 = weighted.double().sum(), (weighted.double() * intensity64).sum()
    s3, s4 = (data_weighted.double() * intensity64).sum(), (data_weighted.double() * data64).sum()
    mean = s1 / count
    cross = s2 / mean**2 - s3 / mean
    misfit = weight.double() * (cross - s3 / mean + s4) / count  # sum M (J - D)^2 = C - sum M D J + S4
    scale = (4 * weight / (data.numel() * count * mean)).float()
    gradient = intensity / mean.float() - data - (cross / count).float()
    gradient = scale * (gradient if measured is None else measured * gradient)
    image.copy_(_join(gradient * w_re, gradient * w_im))
    return misfit


def _adjoint(grad, psi, t_re, t_im, e1, e2, p1_y, p1_x, along_y, along_x, defocus_nm, h_sum):
    """h = conj(T R) G added to ``h_sum``; the gradients of the image's defocus and shift (y, x).
    G = dL/dS, Psi and h_sum are complex maps as int64 words.

    dL/d theta = Re sum conj(G) S d log(T R)/d theta, S = Psi T R:
    d log T/d df = e1 + 2 e2 df + i p1 (:func:`physics.transfer_log_derivative`), and
    d log R/d shift = i times the shift angle of a unit shift (``along_y``, ``along_x``).
    p1 = p1_y + p1_x and the unit shift angles are given as a column (y, 1) and a row (1, x):
    full maps would be read from memory for each image.
    """
    g_re, g_im = _split(grad)
    h_re, h_im = _split(h_sum)
    h_sum.copy_(_join(h_re + t_re * g_re + t_im * g_im, h_im + t_re * g_im - t_im * g_re))
    p_re, p_im = _split(psi)
    s_re = p_re * t_re - p_im * t_im
    s_im = p_re * t_im + p_im * t_re
    # float32 sums (a fifth faster than float64 here): a gradient needs no more than float32's
    # relative precision; the misfit's sums (_residual) do.
    c_re = g_re * s_re + g_im * s_im
    c_im = g_re * s_im - g_im * s_re
    d_defocus = (c_re * (e1 + 2 * defocus_nm * e2) - c_im * (p1_y + p1_x)).sum()
    return torch.stack([d_defocus, -(c_im * along_y).sum(), -(c_im * along_x).sum()]).double()


def _object_gradient(grad_wave, psi, phase, tv_weight, eps: float):
    """dL/dphi = Re(conj(g) i psi) + tv_weight dTV/dphi and dL/d(log a) = Re(conj(g) psi) for
    g = dL/dpsi (g and psi int64 words); TV(phase), in the same pass over the maps."""
    g_re, g_im = _split(grad_wave)
    psi_re, psi_im = _split(psi)
    tv, tv_gradient = _total_variation(phase, eps)
    return g_im * psi_re - g_re * psi_im + tv_weight * tv_gradient, g_re * psi_re + g_im * psi_im, tv


def _total_variation(phase, eps: float):
    """Isotropic, smoothed, periodic total variation (mean over pixels) and its gradient.

    The gradient at a pixel needs the normalised differences at its neighbours below and to the
    right too: they are made again here from slices of the phase padded periodically by one
    pixel, rather than stored as maps and read back shifted. Inductor's code for the object
    gradient then holds two temporary maps (the padding's) instead of four, and takes an eighth
    less time at 512^2.
    """
    height, width = phase.shape
    padded = torch.cat([phase[-1:], phase, phase[:1]], 0)
    padded = torch.cat([padded[:, -1:], padded, padded[:, :1]], 1)

    def shifted(dy: int, dx: int):
        """phase[y + dy, x + dx], periodically."""
        return padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    def normalised(y: int, x: int):
        """Backward differences along y and x at the pixel (y, x) away, and their smoothed norm."""
        centre = shifted(y, x)
        dy, dx = centre - shifted(y - 1, x), centre - shifted(y, x - 1)
        return dy, dx, torch.sqrt(dy * dy + dx * dx + eps**2)

    dy, dx, norm = normalised(0, 0)
    below_dy, _, below_norm = normalised(1, 0)
    _, right_dx, right_norm = normalised(0, 1)
    gradient = (dy / norm + dx / norm - below_dy / below_norm - right_dx / right_norm) / phase.numel()
    return norm.mean(), gradient


_WAVE = _Kernel(_wave)
_SPECTRUM = _Kernel(_spectrum)
_RESIDUAL = _Kernel(_residual)
_ADJOINT = _Kernel(_adjoint)
_OBJECT_GRADIENT = _Kernel(_object_gradient)
_TOTAL_VARIATION = _Kernel(_total_variation)


class _Maps:
    """q-maps and q-vectors of T R for one image size and coherence (theta_c, Delta), made in
    float64 and kept as float32."""

    def __init__(self, qy, qx, wavelength_nm: float, cs_nm: float, coherence: tuple, pixel_size_nm: float):
        qy, qx = qy.double(), qx.double()
        e0, e1, e2, p0, p1 = physics.transfer_coefficients(qy * qy + qx * qx, wavelength_nm, cs_nm, *coherence)
        amplitude = torch.exp(e0)
        unit = torch.eye(2, dtype=torch.float64)
        along_y = physics.shift_angle(qy, qx, unit[0], pixel_size_nm)
        along_x = physics.shift_angle(qy, qx, unit[1], pixel_size_nm)
        # T R's fixed parts (_spectrum): A = exp(e0 + i p0), real and imaginary, e1 and e2.
        self.transfer = tuple(x.float() for x in (amplitude * torch.cos(p0), amplitude * torch.sin(p0), e1, e2))
        # p1 = -pi lambda q^2 and the shift angle are a function of qy plus one of qx; qy = qx = 0
        # in the first row and column, which hold them.
        self.vectors = (p1[:, 0], p1[0], along_y[:, 0], along_x[0])
        # d log(T R)/d theta: e1 and e2 (defocus, real part), p1 (defocus, imaginary) as a column
        # plus a row, unit shifts (a column and a row).
        p1_y, p1_x, along_y, along_x = (v.float() for v in self.vectors)
        self.derivatives = (*self.transfer[2:], p1_y[:, None], p1_x[None], along_y[:, None], along_x[None])

    def ramps(self, defocus_nm: torch.Tensor, shifts_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u_y (N, 2, y) and u_x (N, 2, x), real and imaginary parts: exp(i (df p1 + shift angle))
        = u_y u_x, per image."""
        return _RAMPS(defocus_nm.double(), shifts_px.double(), *self.vectors)


def _ramps(defocus_nm, shifts_px, p1_y, p1_x, along_y, along_x):
    """:meth:`_Maps.ramps` in one compiled call (a dozen small operations otherwise)."""
    defocus = defocus_nm[:, None]
    angle_y = defocus * p1_y + shifts_px[:, :1] * along_y
    angle_x = defocus * p1_x + shifts_px[:, 1:] * along_x
    return tuple(torch.stack([a.cos(), a.sin()], 1).float() for a in (angle_y, angle_x))


_RAMPS = _Kernel(_ramps)


class _Workspace:
    """Buffers of one image shape for the kernels' outputs, reused by every image and iteration."""

    def __init__(self, shape: tuple[int, int], device: torch.device):
        if sys.byteorder != "little":  # _split reads the real part from the low word
            raise RuntimeError("the fast path needs a little-endian machine")
        self.key = (shape, device)
        # Complex maps as the compiled kernels see them (_split): psi and dL/dPsi.
        self.psi, self.h_sum = (torch.empty(shape, dtype=torch.int64, device=device) for _ in range(2))
        # The same memory as the FFTs take it (a view made once: see SeriesMisfit.forward's loop).
        self.psi_complex, self.h_sum_complex = (x.view(torch.complex64) for x in (self.psi, self.h_sum))
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
        self.measured = measured
        count = qy.numel() * qx.numel() if measured is None else measured.sum()
        self.count = torch.as_tensor(count, dtype=torch.float64, device=qy.device)
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
        # FFTs into fresh tensors (module doc); kernels write W's gradient over W.
        phase = phase.detach()
        _WAVE(phase, log_amplitude.detach(), ws.psi)
        spectrum = torch.fft.fft2(ws.psi_complex).view(torch.int64)
        defocus = defocus_nm.detach().float()
        ramp_y, ramp_x = maps.ramps(defocus_nm.detach(), shifts_px.detach())
        needs_grad = any(ctx.needs_input_grad[:4])
        ws.h_sum.zero_()
        # Every image's views made before the loop: a small operation right after an FFT costs
        # several times what it does alone (the FFT has evicted the interpreter's working set).
        per_image = list(
            zip(ramp_y.unbind(), ramp_x.unbind(), defocus.unbind(), data.unbind(), weight.unbind(), strict=True)
        )
        misfits, gradients = [], [torch.zeros(3, dtype=torch.float64, device=data.device)] * len(data)
        for k in [k for k, w in enumerate(weight.tolist()) if w != 0]:
            ramp_y_k, ramp_x_k, defocus_k, data_k, weight_k = per_image[k]
            # Each map is freed as soon as it is dead: the next fresh one (an FFT's output, the next
            # image's spectrum) then reuses memory still in cache (module doc).
            t_re, t_im, image = _SPECTRUM(spectrum, *maps.transfer, ramp_y_k, ramp_x_k, defocus_k)
            wave = torch.fft.ifft2(image.view(torch.complex64))  # W_k
            del image
            misfits.append(_RESIDUAL(wave.view(torch.int64), data_k, self.measured, self.count, weight_k))
            if not needs_grad:
                del t_re, t_im, wave
                continue
            grad = torch.fft.fft2(wave).view(torch.int64)  # dL/dS_k
            del wave
            gradients[k] = _ADJOINT(grad, spectrum, t_re, t_im, *maps.derivatives, defocus_k, ws.h_sum)
            del grad, t_re, t_im
        if needs_grad:
            gradients = torch.stack(gradients)
            # The adjoint of fft2 is the unnormalised inverse transform; without images, dL/dPsi = 0.
            h_psi = torch.fft.ifft2(ws.h_sum_complex, norm="forward").view(torch.int64)
            # The weight as a tensor: a float would be compiled in as a constant, once per value.
            weight_tv = torch.as_tensor(tv_weight, dtype=phase.dtype, device=phase.device)
            d_phase, d_log_amplitude, tv = _OBJECT_GRADIENT(h_psi, ws.psi, phase, weight_tv, TV_EPS)
            d_defocus = gradients[:, 0].to(defocus_nm.dtype)
            d_shift = gradients[:, 1:].to(shifts_px.dtype)
            ctx.save_for_backward(d_phase, d_log_amplitude, d_defocus, d_shift)
        else:
            tv = _TOTAL_VARIATION(phase, TV_EPS)[0]
        misfit = torch.stack(misfits).sum().float() if misfits else torch.zeros((), device=data.device)
        return misfit + tv_weight * tv, misfit


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
    @staticmethod
    def forward(ctx, phase, eps):
        value, gradient = _TOTAL_VARIATION(phase.detach(), eps)
        ctx.save_for_backward(gradient)
        return value

    @staticmethod
    def backward(ctx, grad_output):
        (gradient,) = ctx.saved_tensors
        return gradient if grad_output == 1 else grad_output * gradient, None


def total_variation(phase: torch.Tensor, eps: float = TV_EPS) -> torch.Tensor:
    """Isotropic, slightly smoothed, periodic total variation (mean over pixels), with an analytic
    first-order gradient: mean(sqrt(dy^2 + dx^2 + eps^2)), dy and dx backward differences."""
    return _TotalVariationFunction.apply(phase, eps)

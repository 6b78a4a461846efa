"""The reconstruction's misfit and total variation with analytic gradients: the fast path of a fit.

Autograd through the forward model (:class:`phasepipe.reconstruct.ForwardModel`) spends most of an
iteration on element-wise complex work: a full-size pass per operation and direction, fresh
buffers, dtype promotions. :class:`SeriesMisfit` computes the misfit of a series and its gradient
together, in the 2N + 2 FFTs they need, with every image's work between them fused:

- forward, per image: S = Psi T R (psi's spectrum times the transfer function of
  :mod:`phasepipe.physics` and the drift ramp, T R from one compiled kernel); the image mean by
  Parseval from sum |S|^2, so that W = F^-1 S is read once, by the kernel that forms the residual
  of the mean-normalised image and dL/dW;
- backward, per image: dL/dS = F[dL/dW] / P minus the mean normalisation's term, a multiple of S;
  h = conj(T R) dL/dS, summed into dL/dPsi. The gradient of any scalar microscope parameter theta is
  Re <h, Psi d log(T R)/d theta>: a dot product with a map made once per iteration, because
  d log T/d df is linear in df and d log R/d shift does not depend on the shift.

Each image is done start to end, forward and backward, before the next, while its buffers are in
cache; images of weight 0 (not yet admitted by the defocus continuation) are skipped.

Compiled kernels (torch inductor, on first use for each image size; eager where compilation is
unavailable) do the real arithmetic on planar float32 maps, and ATen's vectorised complex ops and
FFTs the rest: inductor's code for interleaved complex data is slow on CPU. Buffers are kept
between iterations: fresh multi-megabyte buffers cost page faults every time.

First order only. Refining the coherence parameters, double backward (the defocus uncertainty's
Hessian) and float64 models use autograd through the forward model instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from phasepipe import physics

log = logging.getLogger(__name__)


class _Kernel:
    """``fn`` compiled by torch inductor on its first call, or ``fn`` itself if compilation fails."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.run: Callable | None = None

    def __call__(self, *args):
        if self.run is None:
            # One compilation per image size: static shapes vectorise better than dynamic ones.
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


def _wave(phase, log_amplitude, wave_re, wave_im):
    amplitude = torch.exp(log_amplitude)
    wave_re.copy_(amplitude * torch.cos(phase))
    wave_im.copy_(amplitude * torch.sin(phase))


def _transfer(qy, qx, defocus_nm, shift_px, optics: tuple, t_re, t_im):
    """Real and imaginary parts of T R, one image's transfer function times its drift ramp."""
    wavelength_nm, cs_nm, theta, spread, pixel_size_nm = optics
    coefficients = physics.transfer_coefficients(qy * qy + qx * qx, wavelength_nm, cs_nm, theta, spread)
    log_magnitude, angle = physics.transfer_exponent(coefficients, defocus_nm)
    angle = angle + physics.shift_angle(qy, qx, shift_px, pixel_size_nm)
    magnitude = torch.exp(log_magnitude)
    t_re.copy_(magnitude * torch.cos(angle))
    t_im.copy_(magnitude * torch.sin(angle))


def _residual(wave, data, mean, scale, residual, grad_re, grad_im):
    """r = |W|^2 / m - D and the transformed part of dL/dW, a r W (see :meth:`SeriesMisfit.forward`)."""
    w_re, w_im = wave[..., 0], wave[..., 1]
    r = (w_re * w_re + w_im * w_im) / mean - data
    residual.copy_(r)
    grad_re.copy_(scale * r * w_re)
    grad_im.copy_(scale * r * w_im)


def _residual_sums(residual, data):
    """sum r^2 and sum r J (J = r + D, the normalised model image), accumulated in float64."""
    return (residual * residual).double().sum(), (residual * (residual + data)).double().sum()


def _derivative_maps(qy, qx, optics: tuple):
    """d log(T R)/d theta as (real, imag) q-maps: defocus (constant and slope in df), shift y, x."""
    wavelength_nm, cs_nm, theta, spread, pixel_size_nm = optics
    coefficients = physics.transfer_coefficients(qy * qy + qx * qx, wavelength_nm, cs_nm, theta, spread)
    real, imag, slope = physics.transfer_log_derivative(coefficients)
    # R = exp(i angle) with the angle linear in the shift: d log R = i angle(unit shift).
    along_y = physics.shift_angle(qy, qx, torch.tensor([1.0, 0.0]), pixel_size_nm)
    along_x = physics.shift_angle(qy, qx, torch.tensor([0.0, 1.0]), pixel_size_nm)
    return real, imag, slope, along_y, along_x


def _object_gradient(grad_wave, psi_re, psi_im):
    """dL/dphi = Re(conj(g) i psi) and dL/d(log a) = Re(conj(g) psi) for g = dL/dpsi."""
    g_re, g_im = grad_wave[..., 0], grad_wave[..., 1]
    return g_im * psi_re - g_re * psi_im, g_re * psi_re + g_im * psi_im


def _previous(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x shifted by one pixel along ``dim``, periodically (torch.roll, in a form inductor vectorises)."""
    return torch.cat([x.narrow(dim, -1, 1), x.narrow(dim, 0, x.shape[dim] - 1)], dim)


def _next(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cat([x.narrow(dim, 1, x.shape[dim] - 1), x.narrow(dim, 0, 1)], dim)


def _total_variation(phase, eps: float):
    """Isotropic, smoothed, periodic total variation (mean over pixels) and its gradient."""
    dy = phase - _previous(phase, 0)
    dx = phase - _previous(phase, 1)
    norm = torch.sqrt(dy * dy + dx * dx + eps**2)
    ny, nx = dy / norm, dx / norm
    gradient = (ny + nx - _next(ny, 0) - _next(nx, 1)) / phase.numel()
    return norm.mean(), gradient


_WAVE = _Kernel(_wave)
_TRANSFER = _Kernel(_transfer)
_RESIDUAL = _Kernel(_residual)
_RESIDUAL_SUMS = _Kernel(_residual_sums)
_DERIVATIVE_MAPS = _Kernel(_derivative_maps)
_OBJECT_GRADIENT = _Kernel(_object_gradient)
_TOTAL_VARIATION = _Kernel(_total_variation)


class _Workspace:
    """Buffers of one image shape, reused by every image and iteration. Kernel outputs are
    separate tensors: compiled functions that write into views of one buffer copy all of it."""

    def __init__(self, shape: tuple[int, int], device: torch.device):
        def real():
            return torch.empty(shape, device=device)

        def cplx(*lead):
            return torch.empty(*lead, *shape, dtype=torch.complex64, device=device)

        self.key = (shape, device)
        self.psi_re, self.psi_im, self.t_re, self.t_im = (real() for _ in range(4))
        self.grad_re, self.grad_im, self.residual = (real() for _ in range(3))
        self.zero = torch.zeros(shape, device=device)
        self.spectrum, self.transfer, self.image, self.grad = (cplx() for _ in range(4))
        self.h, self.h_sum = cplx(), cplx()
        # d log(T R)/d theta for defocus (constant, slope in df), shift y, x; and times Psi.
        self.derivatives, self.maps = cplx(4), cplx(4)
        self.derivatives_key: tuple = ()


class SeriesMisfit:
    """Misfit of a through-focus series and its first-order gradient in one pass (see module doc).

    Parameters
    ----------
    qy, qx : float32 frequency grid (:func:`physics.frequency_grid`), cycles per nm.
    wavelength_nm, cs_nm, pixel_size_nm : the fixed optics.
    """

    def __init__(self, qy: torch.Tensor, qx: torch.Tensor, wavelength_nm: float, cs_nm: float, pixel_size_nm: float):
        self.qy, self.qx = qy, qx
        self.wavelength_nm, self.cs_nm, self.pixel_size_nm = wavelength_nm, cs_nm, pixel_size_nm
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
    ) -> torch.Tensor:
        """sum_k weight_k mean((I_k / mean(I_k) - data_k)^2), I_k = |F^-1[F[psi] T_k R_k]|^2.

        ``phase`` and ``log_amplitude`` (y, x) give psi = exp(log_amplitude + i phase);
        ``defocus_nm`` (N,) and ``shifts_px`` (N, 2) every image's defocus and drift (y, x);
        ``data`` (N, y, x) the mean-normalised images, ``weight`` (N,) their weights (summing to
        1; images of weight 0 are skipped); the coherence parameters are not differentiated.
        Returns a 0-d float32 tensor whose gradient flows to phase, log_amplitude, defocus_nm and
        shifts_px.
        """
        optics = (
            self.wavelength_nm,
            self.cs_nm,
            beam_divergence_rad.detach().float(),
            defocus_spread_nm.detach().float(),
            self.pixel_size_nm,
        )
        key = (tuple(data.shape[1:]), data.device)
        if self._workspace is None or self._workspace.key != key:
            self._workspace = _Workspace(*key)
        return _SeriesMisfitFunction.apply(
            phase, log_amplitude, defocus_nm, shifts_px, data, weight, self, optics, self._workspace
        )

    def forward(self, ctx, phase, log_amplitude, defocus_nm, shifts_px, data, weight, optics, ws: _Workspace):
        """Misfit, and with ``ctx.needs_input_grad`` the gradients, which it saves in ``ctx``.

        Each image is done start to end (forward, residual, gradient) while its buffers are in
        cache. With P pixels per image, W = F^-1 S has mean m = sum |S|^2 / P^2 and
        J = |W|^2 / m. For L = sum_k w_k mean((J_k - D_k)^2), dL/dW = a (r - C / P) W P with
        r = J - D, C = sum r J and a = 4 w / (P^2 m); so dL/dS = F[a r W] - (a C / P) S.
        """
        pixels = data.shape[-1] * data.shape[-2]
        defocus, shifts = defocus_nm.detach().float(), shifts_px.detach().float()
        _WAVE(phase.detach(), log_amplitude.detach(), ws.psi_re, ws.psi_im)
        torch.fft.fft2(torch.complex(ws.psi_re, ws.psi_im, out=ws.spectrum), out=ws.spectrum)
        # Gradients wanted: defocus needs maps 0-1, shifts 2-3 as well.
        n_maps = 4 if ctx.needs_input_grad[3] else 2 if ctx.needs_input_grad[2] else 0
        needs_grad = any(ctx.needs_input_grad[:4])
        if n_maps:
            key = (float(optics[2]), float(optics[3]))
            if ws.derivatives_key != key:  # fixed unless the coherence changes
                re, im, slope, along_y, along_x = _DERIVATIVE_MAPS(self.qy, self.qx, optics)
                parts = [(re, im), (slope, ws.zero), (ws.zero, along_y), (ws.zero, along_x)]
                for i, (real, imag) in enumerate(parts):
                    torch.complex(real, imag, out=ws.derivatives[i])
                ws.derivatives_key = key
            for i in range(n_maps):
                torch.mul(ws.spectrum, ws.derivatives[i], out=ws.maps[i])
        dots = torch.zeros(len(data), 4, dtype=torch.float64, device=data.device)
        misfit = 0.0
        images = [(k, w) for k, w in enumerate(weight.tolist()) if w != 0]
        ws.h_sum.zero_()
        for k, w in images:
            _TRANSFER(self.qy, self.qx, defocus[k], shifts[k], optics, ws.t_re, ws.t_im)
            torch.complex(ws.t_re, ws.t_im, out=ws.transfer)
            torch.mul(ws.spectrum, ws.transfer, out=ws.image)  # S_k
            power = float(torch.vdot(ws.image.view(-1), ws.image.view(-1)).real)
            # FFTs in place, here and below: a smaller working set keeps them in cache.
            torch.fft.ifft2(ws.image, out=ws.image)  # W_k
            mean = power / pixels**2
            scale = 4 * w / (pixels**2 * mean)
            _RESIDUAL(
                torch.view_as_real(ws.image),
                data[k],
                torch.tensor(mean),
                torch.tensor(scale),
                ws.residual,
                ws.grad_re,
                ws.grad_im,
            )
            squares, cross = _RESIDUAL_SUMS(ws.residual, data[k])
            misfit += w * float(squares) / pixels
            if not needs_grad:
                continue
            torch.fft.fft2(torch.complex(ws.grad_re, ws.grad_im, out=ws.grad), out=ws.grad)
            torch.mul(ws.spectrum, ws.transfer, out=ws.image)  # S_k again: cheaper than keeping it
            ws.grad.sub_(ws.image, alpha=scale * float(cross) / pixels)  # dL/dS_k
            # h_k = conj(T_k R_k) dL/dS_k, summed into dL/dPsi.
            torch.mul(ws.transfer.conj(), ws.grad, out=ws.h)
            ws.h_sum.add_(ws.h)
            for i in range(n_maps):
                dots[k, i] = torch.vdot(ws.h.view(-1), ws.maps[i].view(-1)).real
        if needs_grad and images:
            # The adjoint of fft2 is the unnormalised inverse transform.
            torch.fft.ifft2(ws.h_sum, norm="forward", out=ws.h_sum)
            d_phase, d_log_amplitude = _OBJECT_GRADIENT(torch.view_as_real(ws.h_sum), ws.psi_re, ws.psi_im)
            d_defocus = (dots[:, 0] + defocus.double() * dots[:, 1]).to(defocus_nm.dtype)
            d_shift = dots[:, 2:].to(shifts_px.dtype)
            ctx.save_for_backward(d_phase, d_log_amplitude, d_defocus, d_shift)
        return torch.tensor(misfit, dtype=torch.float32, device=data.device)


class _SeriesMisfitFunction(torch.autograd.Function):
    """Misfit and gradient in one forward pass; the backward only scales the stored gradient."""

    @staticmethod
    def forward(ctx, phase, log_amplitude, defocus_nm, shifts_px, data, weight, series, optics, workspace):
        return series.forward(ctx, phase, log_amplitude, defocus_nm, shifts_px, data, weight, optics, workspace)

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.saved_tensors:  # no image had weight
            return (None,) * 9
        gradients = ctx.saved_tensors
        if grad_output != 1:  # a loss's own backward passes 1: no full-size pass for it
            gradients = [grad_output * d for d in gradients]
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


def total_variation(phase: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Isotropic, slightly smoothed, periodic total variation (mean over pixels), with an analytic
    first-order gradient: mean(sqrt(dy^2 + dx^2 + eps^2)), dy and dx backward differences."""
    return _TotalVariationFunction.apply(phase, eps)

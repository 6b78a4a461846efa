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
(:func:`phasepipe.kernels.jit`), and released from the GIL; exp, cos and sin are float32 polynomials that LLVM
vectorises (:func:`phasepipe.kernels.exp_row`, :func:`phasepipe.kernels.cos_sin`).
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

import numpy as np
import torch

from phasepipe import kernels, physics

TV_EPS = 1e-3  # smoothing of the total variation's norm, rad per px
# What this backend covers: the parameters (phasepipe.parameters.Parameters) whose gradients its
# result carries, through the phase and log-amplitude maps, Parameters.defocus_nm() and
# Parameters.shifts_px(); and those it models at fixed values (the coherence envelopes, as fixed
# maps). A fit whose parameters include one it does not model, or that refines one it does not
# differentiate, takes autograd instead (ForwardModel.objective); tests/test_reconstruct.py checks
# every name here against autograd.
DIFFERENTIATES = frozenset({"phase", "log_amplitude", "defocus_scale", "defocus", "shifts"})
COVERS = DIFFERENTIATES | {"beam_divergence", "defocus_spread"}


def _pairs(z: torch.Tensor) -> np.ndarray:
    """The complex64 map ``z`` (y, x) as the float32 array (y, x, 2) of its real and imaginary
    parts, sharing its memory: the form the numba kernels read and write."""
    return torch.view_as_real(z).numpy()


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
        kernels.ramps(defocus_nm.double().numpy(), shifts_px.double().numpy(), *self.vectors, ramp_y, ramp_x)
        return ramp_y, ramp_x


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
        kernels.wave(phase.numpy(), log_amplitude.detach().numpy(), ws.psi_pairs)
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
            kernels.spectrum(
                spectrum_pairs, *maps.transfer, ramp_y_k, ramp_x_k, defocus_k, ws.t_re, ws.t_im, ws.spectrum_pairs
            )
            wave = torch.fft.ifft2(ws.spectrum)  # W_k
            misfits.append(kernels.residual(_pairs(wave), data_k, self.measured, self.count, weight_k))
            if not needs_grad:
                del wave
                continue
            # Each FFT's output is freed as soon as it is dead: the next one then reuses memory
            # still in cache (module doc).
            grad = torch.fft.fft2(wave)  # dL/dS_k
            del wave
            gradients[k] = kernels.adjoint(
                _pairs(grad), ws.spectrum_pairs, ws.t_re, ws.t_im, *maps.derivatives, defocus_k, ws.h_sum_pairs
            )
            del grad
        if needs_grad:
            gradients = torch.tensor(gradients, dtype=torch.float64)
            # The adjoint of fft2 is the unnormalised inverse transform; without images, dL/dPsi = 0.
            h_psi = torch.fft.ifft2(ws.h_sum, norm="forward")
            d_phase, d_log_amplitude = torch.empty_like(phase), torch.empty_like(phase)
            tv = kernels.object_gradient(
                _pairs(h_psi), ws.psi_pairs, phase.numpy(), tv_weight, TV_EPS, d_phase.numpy(), d_log_amplitude.numpy()
            )
            d_defocus = gradients[:, 0].to(defocus_nm.dtype)
            d_shift = gradients[:, 1:].to(shifts_px.dtype)
            ctx.save_for_backward(d_phase, d_log_amplitude, d_defocus, d_shift)
        else:
            tv = kernels.total_variation(phase.numpy(), TV_EPS, np.empty(phase.shape, np.float32))
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
        value = kernels.total_variation(phase.detach().numpy(), eps, gradient.numpy())
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

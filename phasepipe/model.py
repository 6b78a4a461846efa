"""The forward model: the predicted images of a series for given parameters.

:class:`ForwardModel` turns :class:`~phasepipe.parameters.Parameters` into mean-normalised
intensities with :mod:`phasepipe.physics` (and the registered parameters' own terms), and gives
the fit its objective, through the fast CPU backend (:mod:`phasepipe.fused`) where that covers
the fit, autograd otherwise.
"""

from __future__ import annotations

import torch

from phasepipe import fused, physics
from phasepipe.fused import total_variation
from phasepipe.parameters import REGISTRY, Microscope, Parameters


class ForwardModel:
    """Predicted mean-normalised intensities of a series for given :class:`Parameters`."""

    def __init__(self, shape, pixel_size_nm: float, microscope: Microscope, device: str, measured=None):
        # measured (y, x; 1 or 0): where data exist, when the canvas is wider than the images.
        self.measured = None if measured is None else torch.as_tensor(measured, dtype=torch.float32, device=device)
        qy, qx = physics.frequency_grid(shape, pixel_size_nm)
        self.qy = torch.as_tensor(qy, dtype=torch.float32, device=device)
        self.qx = torch.as_tensor(qx, dtype=torch.float32, device=device)
        self.q2 = self.qy**2 + self.qx**2
        self.pixel_size_nm = pixel_size_nm
        self.wavelength_nm = physics.wavelength_nm(microscope.voltage_kv * 1e3)
        self.cs_nm = microscope.cs_mm * 1e6
        self._fixed_coefficients: tuple = ()
        self._fixed_key: tuple = ()
        self._series_misfit = fused.SeriesMisfit(
            self.qy, self.qx, self.wavelength_nm, self.cs_nm, self.pixel_size_nm, self.measured
        )

    def transfer(self, params: Parameters, defocus_nm: torch.Tensor) -> torch.Tensor:
        """T of every image. Its q-maps (:func:`physics.transfer_coefficients`) depend only on the
        coherence parameters: while those are not refined they are computed once and kept (keyed
        on the parameters' in-place version counters, so that any change of value recomputes)."""
        leaves = (params.beam_divergence, params.defocus_spread)
        theta, spread = params.beam_divergence_rad(), params.defocus_spread_nm()
        if any(leaf.requires_grad for leaf in leaves):
            return physics.transfer_from_coefficients(
                physics.transfer_coefficients(self.q2, self.wavelength_nm, self.cs_nm, theta, spread),
                defocus_nm.float()[:, None, None],
            )
        key = (id(params), *(leaf._version for leaf in leaves))
        if self._fixed_key != key:
            self._fixed_coefficients = physics.transfer_coefficients(
                self.q2, self.wavelength_nm, self.cs_nm, theta, spread
            )
            self._fixed_key = key
        return physics.transfer_from_coefficients(self._fixed_coefficients, defocus_nm.float()[:, None, None])

    def __call__(
        self,
        params: Parameters,
        refine_shifts: bool,
        defocus_nm: torch.Tensor | None = None,
        wave: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The images of ``params``, of the exit wave ``wave`` instead of theirs where given (a
        joint fit's shared maps, :mod:`phasepipe.joint`)."""
        ramp = physics.shift_ramp(self.qy, self.qx, params.shifts_px(), self.pixel_size_nm) if refine_shifts else None
        defocus_nm = params.defocus_nm() if defocus_nm is None else defocus_nm
        wave = params.wave() if wave is None else wave
        intensity = physics.image_intensities(wave, self.transfer(params, defocus_nm), ramp)
        for entry in REGISTRY.values():
            if entry.term is not None:
                intensity = entry.term(params, intensity)
        # Mean-normalised (over the measured pixels, as the data are): exposure and the envelopes'
        # loss of mean intensity drop out.
        return self.mean_normalised(intensity)

    def mean_normalised(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (N, y, x) divided by each one's mean over the measured pixels."""
        if self.measured is None:
            return images / images.mean(dim=(1, 2), keepdim=True)
        return images / (torch.sum(images * self.measured, dim=(1, 2), keepdim=True) / self.measured.sum())

    def objective(
        self,
        params: Parameters,
        data: torch.Tensor,
        active: torch.Tensor,
        refine_shifts: bool,
        tv_weight: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss misfit + tv_weight TV(phase) and the misfit: the mean over the ``active``
        images (N, 0 or 1) of the mean squared difference between the predicted images and
        ``data``. Only the loss carries a gradient.

        A float32 model on the CPU takes the fast path (:class:`fused.SeriesMisfit`: loss, misfit
        and analytic gradient in one pass over the series, first order only, images of ``active``
        0 skipped; with a tile's mask of measured pixels too) when it models every parameter of
        ``params`` (``fused.COVERS``) and differentiates every refined one, those that require a
        gradient (``fused.DIFFERENTIATES``). Anything else (refined coherence, a parameter the
        fast path does not declare, a float64 model, a GPU, where the fast path is untested) uses
        autograd through :meth:`__call__`, so that no parameter is ever left out of the images
        nor a refined one without a gradient.
        """
        phase = params.phase
        weight = (active / active.sum()).to(data.dtype)
        names = {name for name, _ in params.named_parameters()}
        refined = {name for name, value in params.named_parameters() if value.requires_grad}
        fast = (
            self.q2.dtype == torch.float32
            and self.q2.device.type == "cpu"
            and names <= fused.COVERS
            and refined <= fused.DIFFERENTIATES
        )
        if not fast:
            predicted = self(params, refine_shifts)
            misfit = torch.sum(misfit_per_image(predicted, data, self.measured) * weight)
            return misfit + tv_weight * total_variation(phase), misfit.detach()
        shifts = params.shifts_px() if refine_shifts else torch.zeros_like(params.shifts)
        return self._series_misfit(
            phase,
            params.log_amplitude,
            params.defocus_nm(),
            shifts,
            data,
            weight,
            params.beam_divergence_rad(),
            params.defocus_spread_nm(),
            tv_weight,
        )


def misfit_per_image(predicted: torch.Tensor, data: torch.Tensor, measured: torch.Tensor | None) -> torch.Tensor:
    """Mean squared misfit of every image, over the measured pixels when a mask is given."""
    if measured is None:
        return torch.mean((predicted - data) ** 2, dim=(1, 2))
    return torch.sum(measured * (predicted - data) ** 2, dim=(1, 2)) / measured.sum()

"""The plain reference fit: the least a differentiable reconstruction can be, as a yardstick.

Adam on phase and log amplitude from zero (rates 0.05 and 0.01) and on one common defocus
calibration factor from the first iteration (rate 1e-3), minimising the mean squared misfit of
mean-normalised images plus 1e-2 times the mean total variation of the phase, for a fixed 1000
iterations, on the images' own periodic grid, by autograd: nothing else. The validation corpus
runs it beside the engine (:mod:`phasepipe.reconstruct`) on every case, so that any part of the
engine that does not earn its cost shows (docs/physics.md, "Validation").
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from phasepipe import physics
from phasepipe.fused import total_variation
from phasepipe.parameters import Microscope

ITERATIONS = 1000
TV_WEIGHT = 1e-2
RATES = {"phase": 0.05, "log_amplitude": 0.01, "calibration": 1e-3}


@dataclass(frozen=True)
class PlainResult:
    phase: np.ndarray  # rad, mean removed
    calibration: float  # true / nominal defocus
    seconds: float


def plain_fit(
    images: np.ndarray,
    defocus_nominal_nm: np.ndarray,
    pixel_size_nm: float,
    microscope: Microscope,
    iterations: int = ITERATIONS,
) -> PlainResult:
    """Fit an aligned series (N, y, x) as described above."""
    t0 = time.perf_counter()
    data = torch.as_tensor(images / images.mean(axis=(1, 2), keepdims=True), dtype=torch.float32)
    qy, qx = physics.frequency_grid(images.shape[1:], pixel_size_nm)
    q2 = torch.as_tensor(qy**2 + qx**2, dtype=torch.float32)
    nominal = torch.as_tensor(np.asarray(defocus_nominal_nm, float), dtype=torch.float32)[:, None, None]
    wavelength = physics.wavelength_nm(microscope.voltage_kv * 1e3)
    coherence = (microscope.beam_divergence_mrad * 1e-3, microscope.defocus_spread_nm)
    phase = torch.zeros(images.shape[1:], requires_grad=True)
    log_amplitude = torch.zeros(images.shape[1:], requires_grad=True)
    log_calibration = torch.zeros((), requires_grad=True)
    optimiser = torch.optim.Adam(
        [
            {"params": [phase], "lr": RATES["phase"]},
            {"params": [log_amplitude], "lr": RATES["log_amplitude"]},
            {"params": [log_calibration], "lr": RATES["calibration"]},
        ]
    )
    for _ in range(iterations):
        optimiser.zero_grad()
        transfer = physics.transfer_function(
            q2, nominal * log_calibration.exp(), wavelength, microscope.cs_mm * 1e6, *coherence
        )
        predicted = physics.image_intensities(torch.polar(log_amplitude.exp(), phase), transfer)
        predicted = predicted / predicted.mean(dim=(1, 2), keepdim=True)
        loss = torch.mean((predicted - data) ** 2) + TV_WEIGHT * total_variation(phase)
        loss.backward()
        optimiser.step()
    result = phase.detach().numpy()
    return PlainResult(result - result.mean(), float(log_calibration.detach().exp()), time.perf_counter() - t0)

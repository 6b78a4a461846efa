"""The optimiser: a series' parameters fitted to its images by Adam.

:func:`fit` runs one Adam optimiser per parameter group (the object's maps and each refined
registered parameter), each with its own learning rate and the iteration from which it is
refined (:class:`~phasepipe.parameters.ParameterOptions`), admits the images by defocus
continuation, undoes 2 pi slips of the phase, and stops on convergence. :class:`Settings` are
the reconstruction's settings, which it and :func:`phasepipe.reconstruct.reconstruct` read.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from phasepipe.fused import total_variation
from phasepipe.model import ForwardModel
from phasepipe.parameters import REGISTRY, ParameterOptions, Parameters, default_options, refined_tensors

log = logging.getLogger(__name__)

UNWRAP_EVERY = 20  # iterations between looks for 2 pi slips of the phase (undo_phase_slips)
READ_BACK = 10  # iterations between reading a GPU's misfits back to the host


class FitDiverged(RuntimeError):
    """A fit's misfit became infinite or NaN: the message names the iteration, the canvas and the
    defocus."""


@dataclass(frozen=True)
class Settings:
    """Reconstruction settings (the ``reconstruction`` config section, resolved)."""

    refine: tuple[str, ...] = ("defocus", "shifts")
    max_iterations: int = 4000
    converge: bool = True  # stop on a relative loss change below ``tolerance``
    tolerance: float = 1e-3
    rate_halvings: int = 2  # every rate halves at each plateau this often; the next one stops the fit (tune.py)
    tv_weight: float | None = None  # None = chosen from the measured noise by tv_rule
    tv_rule: tuple[float, float] = (0.15, 1.0)  # (scale, power) of auto_tv_weight (benchmarks/tune.py)
    device: str = "cpu"
    options: dict[str, ParameterOptions] = field(default_factory=default_options)
    log_every: int = 100
    continuation_step: int = 150  # iterations between admitting the next |defocus| level
    coarse_factor: int = 2  # binning of the first, coarse fit (1: none)
    margin: str = "auto"  # the canvas beyond the images: "auto" (canvas_margin_px) or "none" (periodic)
    subfield_uncertainty: bool = True  # the calibration's std from 2 x 2 sub-fields too (uncertainty.py)
    bootstrap_replicates: int = 1  # series drawn from the fit to correct the calibration's bias (0: none)
    prior_refit: bool = True  # with the bootstrap: a refit at half the TV weight widens the calibration's std (bias.py)
    bootstrap_levels: int = 2  # each replicate drawn from and refitted once more (Hall's correction, bias.py); 1: not
    drift_screen: bool = True  # registration's alternative drifts put to the forward model (drift_screen.py)
    separation: str = "none"  # "absorption": phi_m and phi_e of a single series (separation.py)
    ramp: str = "apart"  # the ramp reported: "apart" (gauge.flattest_apart) or "flattest" (of the total phase)

    def capped(self, iterations: int) -> int:
        """The length of a fit around the series' own (drift screen, sub-fields, joint fit) whose
        own length is ``iterations``: no more than ``max_iterations``, so that a fixed
        ``reconstruction.iterations`` (a quick look) bounds every fit of the series."""
        return min(iterations, self.max_iterations)


def unwrapped(phase: np.ndarray) -> np.ndarray:
    """``phase`` with every region moved by the multiple of 2 pi that makes no step between
    neighbouring pixels exceed pi where that is possible (skimage's unwrapping of exp(i phi)).

    The model sees only exp(i phi), so this changes no image: it undoes 2 pi slips that a fit
    leaves behind (single pixels at steep edges, or a whole island's phase 2 pi short across its
    edge, which the total variation alone cannot undo) and which would otherwise bias what the
    phase is fitted with, the defocus first.
    """
    from skimage.restoration import unwrap_phase

    phase = np.asarray(phase, np.float64)
    turns = np.round((unwrap_phase(np.angle(np.exp(1j * phase))) - phase) / (2 * np.pi))
    return phase + 2 * np.pi * (turns - np.median(turns))  # the largest region stays where it is


def undo_phase_slips(phase: torch.Tensor) -> int | None:
    """Replace ``phase`` in place by :func:`unwrapped` where some neighbouring pixels differ by more
    than pi and the total variation falls by it. Returns the pixels moved: None where no step
    exceeds pi (nothing to try) or the phase is not finite, 0 where unwrapping would not lower the
    total variation."""
    with torch.no_grad():
        steepest = torch.maximum(phase.diff(dim=0).abs().max(), phase.diff(dim=1).abs().max())
        # "not >": a NaN phase (a diverged fit, which fit reports) would hang skimage's unwrapping.
        if not float(steepest) > math.pi:
            return None
        candidate = torch.as_tensor(unwrapped(phase.cpu().numpy()), dtype=phase.dtype, device=phase.device)
        moved = int(torch.count_nonzero((candidate - phase).abs() > math.pi))
        if moved == 0 or float(total_variation(candidate)) >= float(total_variation(phase)):
            return 0
        phase.copy_(candidate)
        return moved


@dataclass
class FitResult:
    loss: float
    iterations: int
    history: list[float]
    seconds: float


def defocus_levels(defocus_nm: np.ndarray) -> np.ndarray:
    """Each image's |defocus| (nm, to 1e-3 nm): images at one level share it exactly."""
    return np.round(np.abs(np.asarray(defocus_nm, dtype=np.float64)), 3)


def continuation_schedule(defocus_nm: np.ndarray, step: int) -> np.ndarray:
    """First iteration at which each image enters the misfit: defocus continuation.

    Images far from focus are strongly non-linear in the phase; fitting the near-focus ones first
    brings the phase into the basin of the true solution before they join. The two smallest
    |defocus| levels start together (focus alone carries no phase); each further level follows
    ``step`` iterations later.
    """
    level = defocus_levels(defocus_nm)
    rank = np.searchsorted(np.unique(level), level)
    return np.maximum(rank - 1, 0) * step


def fit(
    model: ForwardModel,
    params: Parameters,
    data: torch.Tensor,
    settings: Settings,
    tv_weight: float,
    progress=None,
) -> FitResult:
    """Fit ``params`` to ``data`` (N, y, x mean-normalised) by Adam, a parameter group for each of
    phase, log amplitude and the refined microscope parameters, with its own rate and start."""
    included = continuation_schedule(params.defocus_start_nm.cpu().numpy(), settings.continuation_step)
    refined = refined_tensors(settings.refine)
    groups = ["phase", "log_amplitude", *refined]
    optimiser = torch.optim.Adam(
        [{"params": [getattr(params, name)], "lr": settings.options[name].lr} for name in groups], fused=True
    )
    for entry in REGISTRY.values():
        getattr(params, entry.tensor).requires_grad_(entry.tensor in refined)
    last_start = max(max(settings.options[name].start for name in groups), int(included.max()))
    included = torch.as_tensor(included, device=data.device)
    # A GPU runs ahead of the host: its misfits are read back every READ_BACK iterations, not each
    # one, so that the host does not wait on it every iteration (a CPU's at once).
    read_back = 1 if data.device.type == "cpu" else READ_BACK
    pending: list[torch.Tensor] = []
    history: list[float] = []
    t0 = time.perf_counter()
    window = 50
    it = 0
    decays = 0
    last_decay = 0
    unwrap_interval = next_unwrap = UNWRAP_EVERY
    for it in range(1, settings.max_iterations + 1):
        optimiser.zero_grad(set_to_none=True)
        active = (included <= it).to(data.dtype)
        loss, misfit = model.objective(params, data, active, "shifts" in settings.refine, tv_weight)
        loss.backward()
        for name in groups:
            if it <= settings.options[name].start:
                getattr(params, name).grad = None  # Adam leaves a parameter without gradient as it is
        optimiser.step()
        pending.append(misfit)
        with torch.no_grad():
            params.phase -= params.phase.mean()  # the global phase constant is unobservable
        if it == next_unwrap:
            moved = undo_phase_slips(params.phase)
            if moved:
                log.info("iteration %d: %d px of the phase moved by multiples of 2 pi (slips undone)", it, moved)
            # Steep steps the total variation keeps (the object's own, or noise) are looked at ever
            # more rarely: unwrapping costs as much as tens of FFTs.
            unwrap_interval = 2 * unwrap_interval if moved == 0 else UNWRAP_EVERY
            next_unwrap = it + unwrap_interval
        if it % read_back and it < settings.max_iterations:
            continue
        history.extend(torch.stack(pending).tolist())
        bad = next((k for k in range(len(history) - len(pending), len(history)) if not math.isfinite(history[k])), None)
        if bad is not None:
            # Once NaN, every later step is NaN too: stop, rather than return maps of NaN.
            with torch.no_grad():
                defocus = np.array2string(params.defocus_nm().cpu().numpy(), precision=0)
            raise FitDiverged(
                f"the fit diverged: misfit {history[bad]} at iteration {bad + 1} of the "
                f"{data.shape[1]} x {data.shape[2]} px fit (defocus_nm {defocus}, "
                f"nominal {np.array2string(params.defocus_start_nm.cpu().numpy(), precision=0)}); check the "
                "series' nominal defocus, pixel size and voltage, or lower the learning rates"
            )
        if progress is not None:
            for k in range(it - len(pending) + 1, it + 1):
                progress(k, history[k - 1])
        pending.clear()
        if it % settings.log_every == 0:
            log.info(
                "iteration %d  misfit %.4e  defocus_nm %s  %.1f it/s",
                it,
                history[-1],
                np.array2string(params.defocus_nm().detach().cpu().numpy(), precision=0),
                it / (time.perf_counter() - t0),
            )
        if settings.converge and it > last_start + 2 * window and it - last_decay >= 2 * window:
            old = np.mean(history[-2 * window : -window])
            new = np.mean(history[-window:])
            if (old - new) / old < settings.tolerance:
                # Plateau: halve every learning rate (Adam's noise floor hides the optimum), and
                # stop once the smallest rate has plateaued too.
                if decays == settings.rate_halvings:
                    break
                decays += 1
                last_decay = it
                for group in optimiser.param_groups:
                    group["lr"] *= 0.5
    undo_phase_slips(params.phase)  # nor does the phase returned carry any
    return FitResult(loss=history[-1], iterations=it, history=history, seconds=time.perf_counter() - t0)

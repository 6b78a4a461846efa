"""The unknowns of one series' fit, and the registry that declares every refinable one once.

:data:`REGISTRY` holds one :class:`Refinable` per microscope parameter a fit may refine (the
names of ``reconstruction.refine``): the tensor the optimiser moves, its starting value and
parametrisation, its default optimiser options, and the :class:`Output` its physical value is
reported as (the names of the store's variables or attributes, of the tiles' records and of the
tables' columns, for the value and its std). :class:`Parameters` builds its tensors from it; the
fit, the uncertainty, the tiles' combination, the reconstructed Dataset and the tables loop over
it. Adding a parameter is one entry here plus its term in the forward model: the entry's own
``term`` on the images, or a term in :mod:`phasepipe.physics` (docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage


@dataclass(frozen=True)
class ParameterOptions:
    """How one parameter group is optimised: Adam learning rate and first refined iteration."""

    lr: float
    start: int = 0


@dataclass(frozen=True)
class Microscope:
    """Microscope state known before the fit (nominal values and fixed settings)."""

    voltage_kv: float = 200.0
    cs_mm: float = 1.0
    beam_divergence_mrad: float = 0.01
    defocus_spread_nm: float = 500.0


@dataclass(frozen=True)
class Output:
    """A physical value reported for a series, and where it is written.

    ``columns`` name the per-image store variables and parameters.csv columns of its components
    (one per component: the shifts have y and x); empty for a value of the whole series, written
    as the store attribute and column ``name``. ``std`` and ``std_columns`` likewise for its std.
    ``value(params)`` is the physical value: shape () for a series value, (N,) or (N, k) per image.
    """

    name: str
    std: str
    value: Callable[[Parameters], torch.Tensor]
    columns: tuple[str, ...] = ()
    std_columns: tuple[str, ...] = ()

    @property
    def per_image(self) -> bool:
        return bool(self.columns)


@dataclass(frozen=True)
class Refinable:
    """One refinable parameter: the tensor ``tensor`` of :class:`Parameters` (the optimiser's group),
    its start ``initial(microscope, nominal_defocus_nm)``, its default ``options``, the ``output`` it
    moves, whether a coarse fit hands it to the finer one (``carried_to_finer``), and ``term``: a
    forward-model term of its own, ``term(params, intensities) -> intensities`` on the images before
    their mean normalisation (None where physics already holds the term)."""

    tensor: str
    initial: Callable[[Microscope, torch.Tensor], torch.Tensor]
    options: ParameterOptions
    output: Output
    carried_to_finer: bool = True
    term: Callable[[Parameters, torch.Tensor], torch.Tensor] | None = None


DEFOCUS = Output("defocus_nm", "defocus_std_nm", lambda p: p.defocus_nm(), ("defocus_nm",), ("defocus_std_nm",))
SHIFTS = Output(
    "shifts_px",
    "shifts_std_px",
    lambda p: p.shifts_px(),
    ("shift_y_px", "shift_x_px"),
    ("shift_y_std_px", "shift_x_std_px"),
)

# Order is output order: the uncertainty's vector, the tables' columns.
REGISTRY: dict[str, Refinable] = {
    # A common calibration factor of the nominal values (what a lens calibration gets wrong), as
    # the log of true / nominal.
    "defocus": Refinable(
        "defocus_scale",
        lambda microscope, nominal: torch.zeros((), dtype=torch.float64),
        ParameterOptions(lr=1e-3, start=50),
        DEFOCUS,
    ),
    # A free correction per image (hysteresis), relative to the image's |nominal defocus|, which the
    # data identify far less well (docs/physics.md).
    "defocus_per_image": Refinable(
        "defocus",
        lambda microscope, nominal: torch.zeros(nominal.numel(), dtype=torch.float64),
        ParameterOptions(lr=1e-3, start=300),
        DEFOCUS,
    ),
    "beam_divergence": Refinable(
        "beam_divergence",  # log of rad
        lambda microscope, nominal: torch.tensor(math.log(microscope.beam_divergence_mrad * 1e-3)),
        ParameterOptions(lr=0.02, start=200),
        Output("beam_divergence_mrad", "beam_divergence_std_mrad", lambda p: p.beam_divergence_rad().double() * 1e3),
    ),
    "defocus_spread": Refinable(
        "defocus_spread",  # log of nm
        lambda microscope, nominal: torch.tensor(math.log(microscope.defocus_spread_nm)),
        ParameterOptions(lr=0.02, start=200),
        Output("defocus_spread_nm", "defocus_spread_std_nm", lambda p: p.defocus_spread_nm()),
    ),
    # Drift beyond the align stage's (px per step; refined after the object has settled). A coarse
    # fit leaves it to the full resolution, where it is identified best.
    "shifts": Refinable(
        "shifts",
        lambda microscope, nominal: torch.zeros(nominal.numel(), 2, dtype=torch.float32),
        ParameterOptions(lr=0.005, start=400),
        SHIFTS,
        carried_to_finer=False,
    ),
}

# The object's maps: rad per step, and log units.
OBJECT_OPTIONS: dict[str, ParameterOptions] = {
    "phase": ParameterOptions(lr=0.05),
    "log_amplitude": ParameterOptions(lr=0.01),
}


def default_options() -> dict[str, ParameterOptions]:
    """Every optimiser group's default options: the object's, then each registered parameter's."""
    return {**OBJECT_OPTIONS, **{entry.tensor: entry.options for entry in REGISTRY.values()}}


def outputs() -> list[Output]:
    """The registered outputs, each once, in registry order."""
    return list({entry.output.name: entry.output for entry in REGISTRY.values()}.values())


def refined_tensors(refine: tuple[str, ...]) -> list[str]:
    """The optimiser groups of the parameters named in ``refine``."""
    return [REGISTRY[name].tensor for name in refine]


def output_values(params: Parameters) -> dict[str, np.ndarray | float]:
    """Every registered output's physical value (:func:`outputs`), by name:
    a float for a series value, a float64 array per image."""
    with torch.no_grad():
        return as_outputs([output.value(params).double().cpu().numpy() for output in outputs()])


def as_outputs(arrays: list[np.ndarray]) -> dict[str, np.ndarray | float]:
    """Arrays in :func:`outputs` order, by output name: a float for a series value."""
    return {
        output.name: float(array) if array.ndim == 0 else np.asarray(array, np.float64)
        for output, array in zip(outputs(), arrays, strict=True)
    }


class Parameters(torch.nn.Module):
    """All unknowns of one series, in the parametrisation the optimiser sees: the object's phase
    and log amplitude, and one tensor per :data:`REGISTRY` entry."""

    def __init__(self, phase, amplitude, defocus_nm, microscope: Microscope, reference: int):
        super().__init__()
        defocus_nm = torch.as_tensor(defocus_nm, dtype=torch.float64)
        # Defocus is refined relative to each image's magnitude (the reference image, nominally in
        # focus, uses the series' largest): equal steps then mean equal relative changes.
        magnitude = defocus_nm.abs()
        self.register_buffer("defocus_unit_nm", torch.where(magnitude > 0, magnitude, magnitude.max()))
        self.register_buffer("defocus_start_nm", defocus_nm)
        self.reference = reference
        n = defocus_nm.numel()
        # Copies (torch.tensor), never views of the caller's arrays, which the fit updates in place.
        self.phase = torch.nn.Parameter(torch.tensor(np.asarray(phase), dtype=torch.float32))
        self.log_amplitude = torch.nn.Parameter(torch.log(torch.as_tensor(amplitude, dtype=torch.float32)))
        for entry in REGISTRY.values():
            self.register_parameter(entry.tensor, torch.nn.Parameter(entry.initial(microscope, defocus_nm)))
        # A common shift of every image is a shift of the object: projected out of the refined shifts.
        self.register_buffer("shift_projector", torch.eye(n) - torch.full((n, n), 1.0 / n))

    def defocus_nm(self) -> torch.Tensor:
        """Physical defocus of every image: the nominal value times the calibration factor, plus
        the image's own correction."""
        # The reference image defines the object plane: a common defocus offset of all images is
        # exactly degenerate with propagating the object, so the reference is pinned.
        free = torch.ones_like(self.defocus)
        free[self.reference] = 0
        return self.defocus_start_nm * self.defocus_scale.exp() + self.defocus * free * self.defocus_unit_nm

    def beam_divergence_rad(self) -> torch.Tensor:
        return self.beam_divergence.exp()

    def defocus_spread_nm(self) -> torch.Tensor:
        return self.defocus_spread.exp()

    def shifts_px(self) -> torch.Tensor:
        # A drift in proportion to defocus is what a beam tilt (a phase ramp) does: on a canvas
        # wider than the images the two trade freely, and the ramp reported is chosen afterwards
        # (gauge.py). On a periodic canvas, which holds no ramp but whole cycles across the field,
        # this pattern puts the field's mean phase gradient into the drift, as registration does.
        return self.shift_projector @ self.shifts

    def resampled(self, shape: tuple[int, int], factor: int) -> Parameters:
        """These parameters on a grid ``factor`` times finer, cut or edge-extended to ``shape``: the
        maps interpolated (cubic), the registered parameters ``carried_to_finer`` kept, the others
        at their start."""

        def finer(values: torch.Tensor) -> np.ndarray:
            values = values.detach().cpu().double().numpy()
            zoomed = ndimage.zoom(values, factor, order=3, grid_mode=True, mode="nearest")
            pad = [(0, max(0, n - m)) for n, m in zip(shape, zoomed.shape, strict=True)]
            return np.pad(zoomed, pad, mode="edge")[: shape[0], : shape[1]]

        fine = Parameters(
            finer(self.phase), np.exp(finer(self.log_amplitude)), self.defocus_start_nm, Microscope(), self.reference
        ).to(self.phase.device)
        with torch.no_grad():
            for entry in REGISTRY.values():
                if entry.carried_to_finer:
                    getattr(fine, entry.tensor).copy_(getattr(self, entry.tensor))
        return fine

    def forward(self, fn):
        """``fn(self)``: lets :func:`torch.func.functional_call` evaluate anything of the
        parameters at substituted values (the uncertainty's Hessian)."""
        return fn(self)

    def wave(self) -> torch.Tensor:
        return torch.polar(self.log_amplitude.exp(), self.phase)

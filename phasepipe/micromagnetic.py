"""Micromagnetic states from OVF files (mumax3, OOMMF) as specimens of the simulator.

A state computed by a micromagnetic solver is the most credible magnetic texture a simulated
campaign can hold: :func:`read_ovf` reads one (OVF 1.0 and 2.0, text and 4/8-byte binary, through
the maintained ``oommfpy`` reader), :func:`exit_wave` turns it into the exit wave of a film and
:func:`write_campaign` records it like :func:`phasepipe.simulate.write_campaign` records the
built-in textures: the state is the recorded window, padded with vacuum to the larger field the
images are formed on, with the same electrostatic and absorption model as the textures.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import xarray as xr
from scipy import ndimage

from phasepipe import physics, simulate
from phasepipe.imagefiles import InputError
from phasepipe.parameters import Microscope

MU0 = 4e-7 * np.pi  # vacuum permeability, T m / A
VACUUM_FRACTION = 1e-6  # a cell whose |vector| is below this fraction of the largest is vacuum (Ms = 0)
MESH_UNIT_NM = {"m": 1e9, "nm": 1.0}


@dataclass(frozen=True, eq=False)
class MagneticState:
    """A film's magnetisation, averaged through its thickness; arrays are (y, x), row 0 at the lowest y.

    ``mx``, ``my``: the in-plane components of the unit magnetisation averaged over the magnetic
    cells of each column (0 where there is none), so that ``thickness * support * m`` is the
    column's magnetic moment per Ms. ``support``: the fraction of the ``nz`` cells of the column
    that are magnetic. ``ms_a_per_m``: the median |M| of the magnetic cells when the file holds M
    in A/m (OOMMF's ``Magnetization``), None when it holds the unit vector (mumax3's ``m``).
    """

    mx: np.ndarray
    my: np.ndarray
    support: np.ndarray
    cell_nm: tuple[float, float, float]
    nz: int
    ms_a_per_m: float | None = None
    source: str = ""


def _header(path: Path) -> tuple[str, int]:
    """The text header of an OVF file and where its data begin, checked before the reader sees it
    (it loops forever on a file without a data section)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    end = head.find(b"# Begin: Data")
    if not head.startswith(b"# OOMMF") or end < 0 or head.find(b"\n", end) < 0:
        raise InputError(f"OVF file {path}: not an OVF file (no '# OOMMF' first line or no '# Begin: Data' header end)")
    return head[:end].decode("utf-8", errors="replace"), head.find(b"\n", end) + 1


def _check_binary_length(path: Path, data, start: int) -> None:
    """The reader takes whatever follows the data for data: a truncated binary file must be refused
    here, by finding the '# End: Data' line right after the vectors it announces."""
    if not data.data_format.startswith("Binary"):
        return
    size = int(data.data_format.split()[-1])
    with open(path, "rb") as fh:
        fh.seek(start + size * (1 + 3 * data.nx * data.ny * data.nz))
        if not fh.read(64).lstrip().startswith(b"# End: Data"):
            raise InputError(
                f"OVF file {path}: truncated or malformed binary data ({data.nx} x {data.ny} x {data.nz} cells)"
            )


def read_ovf(path: str | Path) -> MagneticState:
    """Read the magnetisation of an OVF file (rectangular mesh, 3 components) into a :class:`MagneticState`.

    Vectors are normalised per cell, whether the file holds m (unit) or M (A/m); OVF's x is the
    image's x (columns), its y the rows. Raises :class:`~phasepipe.imagefiles.InputError` naming
    the file when it does not exist, is not OVF, is not a 3-component field on a rectangular mesh,
    or has non-square cells (dx != dy: the phase model needs square pixels).
    """
    from oommfpy import FieldData

    path = Path(path)
    if not path.is_file():
        raise InputError(f"OVF file {path} does not exist")
    header, start = _header(path)
    unit = re.search(r"meshunit:\s*(\S+)", header)
    scale = MESH_UNIT_NM.get(unit.group(1) if unit else "m")
    if scale is None:
        raise InputError(f"OVF file {path}: mesh unit {unit.group(1)!r} is not one of {', '.join(MESH_UNIT_NM)}")
    try:
        data = FieldData(path)
    except Exception as exc:  # the reader raises bare Exceptions for bad headers
        raise InputError(f"OVF file {path}: unreadable header ({exc})") from exc
    if data.meshtype != "rectangular":
        raise InputError(f"OVF file {path}: a {data.meshtype} mesh; only rectangular meshes are supported")
    if data.valuedim != 3:
        raise InputError(f"OVF file {path} holds a {data.valuedim}-component field; a magnetisation has 3")
    if not math.isclose(data.dx, data.dy, rel_tol=1e-6):
        raise InputError(
            f"OVF file {path}: cells of {data.dx * scale:g} x {data.dy * scale:g} nm (dx x dy); "
            "the phase model needs square pixels (dx == dy)"
        )
    _check_binary_length(path, data, start)
    try:
        data.generate_field()
        vectors = np.asarray(data.field, dtype=float).reshape(data.nz, data.ny, data.nx, 3)  # x fastest, then y, z
    except Exception as exc:
        raise InputError(f"OVF file {path}: unreadable data ({exc})") from exc
    if not np.all(np.isfinite(vectors)):
        raise InputError(f"OVF file {path}: the data hold non-finite values")
    norm = np.linalg.norm(vectors, axis=-1)
    if norm.max() == 0:
        raise InputError(f"OVF file {path}: no magnetic cell (every vector is zero)")
    magnetic = norm > VACUUM_FRACTION * norm.max()
    unit_m = np.where(magnetic[..., None], vectors / np.where(magnetic, norm, 1.0)[..., None], 0.0)
    count = magnetic.sum(axis=0)
    mx, my = (unit_m[..., k].sum(axis=0) / np.maximum(count, 1) for k in (0, 1))
    ms = None
    if data.valueunits and all(u == "A/m" for u in data.valueunits):
        multiplier = float(data.valuemultiplier[0]) if data.valuemultiplier else 1.0
        ms = float(np.median(norm[magnetic]) * abs(multiplier))
    cell = (data.dx * scale, data.dy * scale, data.dz * scale)
    return MagneticState(mx, my, count / data.nz, cell, data.nz, ms, str(path))


class ExitWave(NamedTuple):
    """The exit wave on the field (n x n) whose centre ``window`` x ``window`` px is the state."""

    phase: np.ndarray
    amplitude: np.ndarray
    phase_magnetic: np.ndarray
    window: int
    b0_t: float
    thickness_nm: float


def exit_wave(
    state: MagneticState,
    margin_px: int,
    pixel_size_nm: float | None = None,
    voltage_kv: float = Microscope.voltage_kv,
    thickness_nm: float | None = None,
    ms_a_per_m: float | None = None,
) -> ExitWave:
    """The exit wave of the state on a field of window + 2 ``margin_px``, vacuum beyond the state.

    Thickness t = nz dz unless ``thickness_nm``; B0 = mu0 Ms, Ms = ``ms_a_per_m`` or else the
    file's |M| (an error when the file holds unit m and no Ms is given). The film is t x support;
    its magnetic phase is :func:`phasepipe.physics.magnetic_phase`, its electrostatic phase and
    absorption those of :func:`phasepipe.simulate.exit_wave` (the spec's default mean inner
    potential and inelastic mean free path). At a ``pixel_size_nm`` other than the cell the maps
    are resampled (linearly, the moment support x m with the support); a non-square state is
    padded with vacuum to a square window, as the images are square.
    """
    ms = ms_a_per_m if ms_a_per_m is not None else state.ms_a_per_m
    if ms is None:
        raise InputError(f"OVF file {state.source} holds the unit magnetisation m: give its Ms in A/m (--ms)")
    cell = state.cell_nm[0]
    pixel = pixel_size_nm or cell
    t = thickness_nm if thickness_nm is not None else state.nz * state.cell_nm[2]
    maps = [state.support, state.support * state.mx, state.support * state.my]
    if not math.isclose(pixel, cell, rel_tol=1e-9):
        zoom = cell / pixel
        maps = [ndimage.zoom(a, zoom, order=1, mode="nearest", grid_mode=True) for a in maps]
    window = max(maps[0].shape)
    before = [margin_px + (window - size) // 2 for size in maps[0].shape]  # the state centred in the window
    pad = [(b, window + 2 * margin_px - b - size) for b, size in zip(before, maps[0].shape, strict=True)]
    support, smx, smy = (np.pad(a, pad) for a in maps)
    support = np.clip(support, 0.0, 1.0)
    inside = support > 0
    mx, my = (np.where(inside, a / np.where(inside, support, 1.0), 0.0) for a in (smx, smy))
    thickness = t * support
    b0 = MU0 * ms
    phase_m = physics.magnetic_phase(mx, my, thickness, b0, pixel, isolated=True)
    sigma = physics.interaction_constant(voltage_kv * 1e3)
    phase_e = sigma * simulate.SeriesSpec.mean_inner_potential_v * thickness
    amplitude = np.exp(-thickness / (2 * simulate.SeriesSpec.inelastic_mfp_nm))
    return ExitWave(phase_e + phase_m, amplitude, phase_m, window, b0, t)


def default_acquisition(**overrides) -> simulate.Acquisition:
    """The acquisition of a simulated series with :class:`phasepipe.simulate.SeriesSpec`'s defaults
    (defocus levels, jitter, drift, noise, microscope), changed by ``overrides``."""
    names = {f.name for f in dataclasses.fields(simulate.Acquisition)}
    defaults = {f.name: f.default for f in dataclasses.fields(simulate.SeriesSpec) if f.name in names}
    return simulate.Acquisition(**{**defaults, **overrides})


def simulate_state(
    state: MagneticState,
    acquisition: simulate.Acquisition,
    rng: np.random.Generator,
    thickness_nm: float | None = None,
    ms_a_per_m: float | None = None,
    pixel_size_nm: float | None = None,
    partner: simulate.PartnerSpec | None = None,
) -> tuple[np.ndarray, xr.Dataset]:
    """Record a through-focus series of the state (:func:`phasepipe.simulate.record`): the images
    (N, window, window) float32 and the truth, with the magnetic/electrostatic split and induction;
    with ``partner``, the series that partner sees of the same state instead (turned over, or
    without magnetic contrast: :func:`phasepipe.simulate.partner_wave`).

    The pixel is the state's cell, or ``pixel_size_nm``: ``acquisition.pixel_size_nm`` is replaced
    by it, and the field's margin follows from the acquisition (:func:`phasepipe.simulate.field_margin_px`).
    """
    acquisition = dataclasses.replace(acquisition, pixel_size_nm=pixel_size_nm or state.cell_nm[0])
    margin = simulate.field_margin_px(acquisition)
    wave = exit_wave(state, margin, acquisition.pixel_size_nm, acquisition.voltage_kv, thickness_nm, ms_a_per_m)
    maps = (wave.phase, wave.amplitude, wave.phase_magnetic)
    if partner is not None:
        maps = simulate.partner_wave(*maps, partner.relation, partner.similarity())
    images, truth = simulate.record(maps[0], maps[1], wave.window, acquisition, rng, magnetic=maps[2])
    spec = {**dataclasses.asdict(acquisition), "defocus_nominal_nm": list(acquisition.defocus_nominal_nm)}
    film = {"ovf": state.source, "cell_nm": list(state.cell_nm), "nz": state.nz, "b0_t": wave.b0_t}
    truth.attrs["spec"] = {**spec, **film, "thickness_nm": wave.thickness_nm, "margin_px": margin}
    return images, truth


def write_campaign(
    out_dir: str | Path,
    path: str | Path,
    acquisition: simulate.Acquisition,
    series: str | None = None,
    seed: int = 0,
    thickness_nm: float | None = None,
    ms_a_per_m: float | None = None,
    pixel_size_nm: float | None = None,
    relation: str | None = None,
) -> Path:
    """Simulate the state of the OVF file ``path`` (:func:`simulate_state`) and write its images,
    truth store and series sheet into ``out_dir`` as :func:`phasepipe.simulate.write_campaign`
    does; the series id defaults to the file's name. With ``relation`` (``flip`` or
    ``reference``), also its partner ``<series>_<relation>`` (:class:`phasepipe.simulate.PartnerSpec`'s
    frame, its own drift and noise), named in the sheet. Returns the sheet."""
    state = read_ovf(path)
    series = series or re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem).lstrip("_.-") or "ovf"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    partners = [None] if relation is None else [None, simulate.PartnerSpec(f"{series}_{relation}", relation)]
    rows = []
    for index, partner in enumerate(partners):
        images, truth = simulate_state(
            state, acquisition, np.random.default_rng(seed + index), thickness_nm, ms_a_per_m, pixel_size_nm, partner
        )
        name = series if partner is None else partner.series
        truth.attrs["spec"]["series"] = name
        pixel = truth.attrs["spec"]["pixel_size_nm"]
        rows.append(simulate.write_series(out_dir, name, images, truth, pixel, acquisition.defocus_nominal_nm))
    if relation is not None:
        simulate.name_partners(rows[0], rows[1], relation)
    return simulate.write_sheet(out_dir, rows)

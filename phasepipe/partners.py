"""The separate stage: a group of related series (sheet.Group) fitted jointly from their stores.

Every member has been aligned and reconstructed alone; :func:`separate_group` registers the
others onto the anchor, fits them jointly (:func:`phasepipe.joint.separate`) and writes each
member's reconstructed store again with the separated maps beside the total phase:
``phase_magnetic``, ``phase_electrostatic`` (rad), ``induction_x_tnm``, ``induction_y_tnm``
(B t, T nm), in the member's own frame and sign, its defocus as the joint fit found it, and the
attribute ``separation`` (relation, role, members and the member's frame in the anchor's). Where
a group cannot be fitted (a member failed, pixel sizes or shapes differ, a field larger than
one tile, maps that do not register), every member that did not fail is written as it was
reconstructed alone, with the reason in its ``separation_warning`` attribute, which the quality
reasons show.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import xarray as xr

from phasepipe import io, joint, optimise, reconstruct, separation
from phasepipe.parameters import Microscope

log = logging.getLogger(__name__)


def group_problem(datasets: dict[str, xr.Dataset], tile_px: int) -> str:
    """Why the members' reconstructed stores cannot be fitted jointly ("" if they can)."""
    failed = [series for series, ds in datasets.items() if io.is_failed(ds)]
    if failed:
        return f"partner(s) {', '.join(failed)} failed: the others are reconstructed alone"
    sizes = {series: float(ds.attrs["pixel_size_nm"]) for series, ds in datasets.items()}
    if len({round(s, 6) for s in sizes.values()}) > 1:
        listed = ", ".join(f"{series} {size:g} nm" for series, size in sizes.items())
        return f"partners of different pixel size ({listed}) are not fitted jointly"
    shapes = {series: (ds.sizes["y"], ds.sizes["x"]) for series, ds in datasets.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{series} {h} x {w} px" for series, (h, w) in shapes.items())
        return f"partners of different image shape ({listed}) are not fitted jointly"
    largest = max(max(shape) for shape in shapes.values())
    if largest > tile_px:
        return (
            f"fields of {largest} px, larger than one tile (reconstruction.tile_px {tile_px}), are not yet "
            "separated: the joint fit is not tiled"
        )
    return ""


def _start(aligned: xr.Dataset, reconstructed: xr.Dataset) -> dict:
    """A member's own reconstruction as the joint fit's start: maps, calibration and the drift the
    fit refined beyond the aligned images (its total drift less the align stage's; a constant is
    a shift of the object, which the fit projects out)."""
    nominal = reconstructed["defocus_nominal_nm"].values
    defocused = nominal != 0
    total = np.stack([reconstructed["shift_y_px"].values, reconstructed["shift_x_px"].values], axis=1)
    registered = np.stack([aligned["shift_y_px"].values, aligned["shift_x_px"].values], axis=1)
    return {
        "phase": reconstructed["phase"].values.astype(np.float64),
        "amplitude": reconstructed["amplitude"].values.astype(np.float64),
        "calibration": float(np.mean(reconstructed["defocus_nm"].values[defocused] / nominal[defocused])),
        "shifts_px": total - registered,
    }


def separate_group(
    group: dict, aligned: list[Path], reconstructed: list[Path], section: dict, out_dir: Path
) -> dict[str, str]:
    """Fit the group jointly and write ``out_dir/<series>.zarr`` for every member; ``group``:
    ``members``, ``relation`` and ``roles`` (sheet.Group's); ``section``: the config's
    ``reconstruction``. Returns the warning of every member written alone (empty when the
    group was separated)."""
    members = list(group["members"])
    recs = {s: io.open_store(p).load() for s, p in zip(members, reconstructed, strict=True)}
    problem = group_problem(recs, int(section["tile_px"]))
    alns = {s: io.open_store(p).load() for s, p in zip(members, aligned, strict=True)}
    separated = None
    if not problem:
        # The joint fit's maps and frames live on the CPU (reconstruction.device is not applied).
        settings = dataclasses.replace(reconstruct.settings_from_config(section), device="cpu")
        fitted = [
            joint.Member(
                s,
                alns[s]["intensity"].values,
                alns[s]["defocus_nominal_nm"].values,
                Microscope(**json.loads(alns[s].attrs["microscope"])),
                group["roles"][s],
            )
            for s in members
        ]
        starts = [_start(alns[s], recs[s]) for s in members]
        pixel = float(recs[members[0]].attrs["pixel_size_nm"])
        try:
            similarities = joint.register_members(fitted, starts)
            separated = joint.separate(
                fitted,
                starts,
                similarities,
                pixel,
                settings,
                float(recs[members[0]].attrs["tv_weight"]),
                iterations=settings.capped(joint.ITERATIONS),
            )
        except (joint.RegistrationError, optimise.FitDiverged) as exc:
            problem = f"{exc}; the series are reconstructed alone"
    out_dir.mkdir(parents=True, exist_ok=True)
    warnings = {}
    for index, series in enumerate(members):
        ds = recs[series]
        if separated is None:
            if not io.is_failed(ds):
                warnings[series] = f"separation: {problem}"
                ds = ds.assign_attrs(separation_warning=warnings[series])
                log.warning("series %s: %s", series, warnings[series])
        else:
            ds = separated_dataset(ds, separated[index], group, series)
        io.write_store(ds, out_dir / f"{series}.zarr")
    return warnings


def separated_dataset(ds: xr.Dataset, result: joint.Separated, group: dict, series: str) -> xr.Dataset:
    """A member's reconstructed Dataset with the joint fit's maps and defocus."""
    pixel = float(ds.attrs["pixel_size_nm"])
    maps = {
        "phase": result.phase,
        "amplitude": result.amplitude,
        "phase_magnetic": result.phase_magnetic,
        "phase_electrostatic": result.phase_electrostatic,
        **separation.induction_maps(result.phase_magnetic, pixel, separation.resolved_per_nm(ds)),
    }
    out = ds.assign({name: (("y", "x"), np.asarray(value, np.float32)) for name, value in maps.items()})
    out["defocus_nm"] = (("image",), np.asarray(result.values["defocus_nm"], float))
    frame = asdict(result.similarity)
    record = {
        "relation": group["relation"],
        "role": group["roles"][series],
        "members": list(group["members"]),
        "frame_in_anchor": {k: (list(v) if isinstance(v, tuple) else v) for k, v in frame.items()},
    }
    return out.assign_attrs(
        separation=json.dumps(record),
        partner_rotation_deg=result.similarity.angle_deg,
        partner_scale=result.similarity.scale,
        partner_shift_y_px=result.similarity.shift_px[0],
        partner_shift_x_px=result.similarity.shift_px[1],
    )

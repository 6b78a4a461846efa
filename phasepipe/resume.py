"""Resume records of a tiled reconstruction: each finished tile's maps and parameters on disk.

A record is a folder ``<records>/<fingerprint>/<tile>/`` holding the maps as ``.npy`` and the
parameters, with the sha256 of the tile's input window, in ``result.json``; it is written whole
or not at all. The fingerprint hashes everything besides the images that shapes a tile's result,
so that a changed setting starts a fresh set and a killed run resumes from the finished tiles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from phasepipe import __version__, optimise, parameters

MAPS = ("phase", "amplitude", "tie_phase")  # the maps of a record (amplitude as its log)
OVERVIEW = "overview"  # record of the binned whole-field fit


def settings_fingerprint(
    settings: optimise.Settings,
    microscope: parameters.Microscope,
    nominal_nm: np.ndarray,
    pixel_size_nm: float,
    shape: tuple[int, int],
    tile_px: int,
    halo_px: int,
) -> str:
    """Hash of everything besides the images that shapes a tile's result: changing any of it
    starts a fresh set of records."""
    described = {
        "phasepipe": __version__,
        "settings": dataclasses.asdict(settings),
        "microscope": dataclasses.asdict(microscope),
        "defocus_nominal_nm": [float(d) for d in nominal_nm],
        "pixel_size_nm": float(pixel_size_nm),
        "shape": list(shape),
        "tile_px": tile_px,
        "halo_px": halo_px,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def input_digest(images: np.ndarray) -> str:
    """Hash of a tile's input window."""
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()


def read_record(folder: Path, digest: str | None = None) -> dict | None:
    """A tile's record (parameters), or None when it is missing or made from other input."""
    try:
        summary = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return None
    if digest is not None and summary.get("input_sha256") != digest:
        return None
    return summary


def load_maps(folder: Path) -> dict[str, np.ndarray]:
    """A record's maps (memory-mapped: a stitching task reads only the overlaps it needs)."""
    return {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in MAPS}


def write_record(folder: Path, maps: dict[str, np.ndarray], summary: dict) -> None:
    """Write a record whole or not at all: built under a temporary name, then renamed."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    for name, values in maps.items():
        np.save(tmp / f"{name}.npy", values)
    (tmp / "result.json").write_text(json.dumps(summary))
    try:
        os.rename(tmp, folder)
    except OSError:  # another worker finished the same tile first: its record is as good
        shutil.rmtree(tmp, ignore_errors=True)

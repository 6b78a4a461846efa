"""Ingestion of one series of the sheet: its files read and checked into the ingested Dataset.

A row with a problem of its own fails before any file is read; the images are checked (count
against the defocus list, finite values, calibration), the detector's hot and dead pixels
repaired, and the raw files' checksums recorded with them.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from phasepipe.imagefiles import InputError, calibration_problem, nonfinite_problem, read_images, sha256_file

if TYPE_CHECKING:
    from phasepipe.sheet import SeriesRow


def repair_outlier_pixels(stack: np.ndarray, threshold: float = 10.0) -> tuple[int, int]:
    """Replace hot pixels and dead pixels (detector zeros) by the median of their 8 neighbours.

    In place; returns the counts (hot, dead). A pixel is hot when it exceeds the median of its
    neighbours by ``threshold`` robust standard deviations of its image; only pixels already far
    above the image's level (or exactly zero in a bright image) are examined, which keeps the cost
    at one pass over the data.
    """
    hot_total = dead_total = 0
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    for image in stack:
        h, w = image.shape
        sample = image[:: max(1, h // 256), :: max(1, w // 256)]
        level = float(np.median(sample))
        spread = 1.4826 * float(np.median(np.abs(sample - level))) or float(np.std(sample)) or 1.0
        flat = image.reshape(-1)
        suspect = flat > level + threshold * spread
        if level > threshold * spread:  # zeros are impossible counts only in a bright image
            suspect |= flat == 0
        candidates = np.flatnonzero(suspect)
        if candidates.size == 0:
            continue
        ys, xs = np.divmod(candidates, w)
        local = np.median(np.stack([image[(ys + dy) % h, (xs + dx) % w] for dy, dx in offsets], axis=1), axis=1)
        values = flat[candidates]
        dead = values == 0
        hot = ~dead & (values > local + threshold * spread)
        fix = hot | dead
        flat[candidates[fix]] = local[fix]
        hot_total += int(hot.sum())
        dead_total += int(dead.sum())
    return hot_total, dead_total


def ingest(row: SeriesRow, microscope_defaults: dict[str, float]) -> xr.Dataset:
    """Read and validate one series into the ingested Dataset (raw intensities + settings).

    A row with a problem of its own (:mod:`phasepipe.sheet`) fails before any file is read; a
    defocus list that cannot form contrast at the files' pixel size fails once that is known.
    """
    from phasepipe.sheet import defocus_problem

    if row.problem:
        raise InputError(row.problem)
    paths = row.paths()
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Checksums of the raw files are computed beside the decoding: hashlib releases the GIL.
        checksums = pool.map(sha256_file, paths)
        stack, pixel, meta = read_images(paths, row.series)
        source_files = {_relative(p, row.sheet_dir): digest for p, digest in zip(paths, checksums, strict=True)}
    where = f"series {row.series} ({', '.join(str(p) for p in paths)})"
    if stack.shape[0] != len(row.defocus_nm):
        raise InputError(f"{where}: {stack.shape[0]} images but {len(row.defocus_nm)} defocus values")
    if problem := nonfinite_problem(stack):
        raise InputError(f"{where}: {problem}")
    if row.pixel_size_nm is not None:
        pixel_size = row.pixel_size_nm
    elif problem := calibration_problem(pixel):
        raise InputError(f"{where}: {problem}")
    else:
        pixel_size = pixel[1]
    microscope = {**microscope_defaults, **row.microscope}
    if problem := defocus_problem(row.defocus_nm, pixel_size, microscope["voltage_kv"]):
        raise InputError(f"series {row.series}: column defocus_nm, at {pixel_size:g} nm pixels: {problem}")
    hot, dead = repair_outlier_pixels(stack)
    n, h, w = stack.shape
    ds = xr.Dataset(
        {
            "intensity": (("image", "y", "x"), stack),
            "defocus_nominal_nm": (("image",), np.asarray(row.defocus_nm, float)),
        },
        coords={"image": np.arange(n), "y": np.arange(h) * pixel_size, "x": np.arange(w) * pixel_size},
        attrs={
            "series": row.series,
            "status": "ok",
            "pixel_size_nm": float(pixel_size),
            "microscope": json.dumps(microscope, sort_keys=True),
            "source_files": json.dumps(source_files),
            "source_format": meta.get("format", ""),
            "source_metadata": json.dumps({k: v for k, v in meta.items() if k != "format"}, sort_keys=True),
            "hot_pixels_repaired": hot,
            "dead_pixels_repaired": dead,
            "acquired": row.acquired,
            "session": row.session,
            "truth": str(row.sheet_dir / row.truth) if row.truth else "",
        },
    )
    return ds


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)

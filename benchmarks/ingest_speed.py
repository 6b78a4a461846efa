"""Ingestion speed against the cost of moving the same bytes from disk to Zarr.

The project's target: "Ingestion of a 4096 x 4096 x 5 float32 series takes no more than twice the
time of reading those bytes from disk and writing them once to Zarr".

What is measured, in one run on this machine:

* a random float32 series (gamma-distributed counts) is written as a calibrated ImageJ TIFF with
  :func:`phasepipe.imagefiles.write_tiff`;
* baseline: ``tifffile.imread`` of that file, then one write of the array to a Zarr v3 store with
  the chunking :func:`phasepipe.io.write_store` uses (whole image axis x 512 x 512) and zarr's
  default codecs, which are the ones ``xarray.Dataset.to_zarr`` picks for it too;
* ingest: :func:`phasepipe.ingest.ingest` + :func:`phasepipe.io.write_store`, the whole stage as
  ``phasepipe ingest`` runs it.

After an untimed warm-up on a small series, the two are run alternately ``--repeat`` times and
the medians compared. Both read the TIFF from the OS page cache (it was just written), so "reading
from disk" here is reading from memory; on a cold cache both sides gain the same read time and the
ratio moves towards 1.

Run from the repository root::

    .venv/bin/python benchmarks/ingest_speed.py            # 4096 x 4096 x 5, 3 repeats
    .venv/bin/python benchmarks/ingest_speed.py --size 1024 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
import zarr

from phasepipe import imagefiles, ingest, io, sheet

PIXEL_SIZE_NM = 5.0
MICROSCOPE = {"voltage_kv": 200.0, "cs_mm": 1.0, "beam_divergence_mrad": 0.01, "defocus_spread_nm": 500.0}


def make_series(workdir: Path, size: int, images: int, seed: int = 0, name: str = "series") -> Path:
    """Write a random calibrated float32 ImageJ TIFF of ``images`` x ``size`` x ``size``."""
    rng = np.random.default_rng(seed)
    data = rng.gamma(shape=10.0, scale=100.0, size=(images, size, size)).astype(np.float32)
    path = workdir / f"{name}.tif"
    imagefiles.write_tiff(path, data, PIXEL_SIZE_NM)
    return path


def baseline(tiff: Path, store: Path, chunk_px: int = 512) -> None:
    """Read the file's bytes and write them once to Zarr v3, chunked as ``io.write_store`` does."""
    data = tifffile.imread(tiff)
    if store.exists():
        shutil.rmtree(store)
    chunks = (data.shape[0], min(chunk_px, data.shape[1]), min(chunk_px, data.shape[2]))
    zarr.create_array(store, data=data, chunks=chunks, zarr_format=3)


def ingest_stage(row: sheet.SeriesRow, store: Path) -> None:
    """The ingest stage as the CLI runs it: ingest, then write the store."""
    ds = ingest.ingest(row, MICROSCOPE)
    io.write_store(ds, store)


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def breakdown(row: sheet.SeriesRow, tiff: Path, store: Path) -> list[tuple[str, float]]:
    """Seconds of the parts of one ingest, each timed on its own (one pass each)."""
    parts: list[tuple[str, float]] = []
    start = time.perf_counter()
    stack, _, _ = imagefiles.read_images(row.paths(), row.series)
    parts.append(("read_images (tifffile, float32 stack)", time.perf_counter() - start))
    parts.append(("  of which tifffile.imread alone", timed(lambda: tifffile.imread(tiff))))
    parts.append(("nonfinite_problem (isfinite scan)", timed(lambda: imagefiles.nonfinite_problem(stack))))
    parts.append(("sha256_file", timed(lambda: imagefiles.sha256_file(tiff))))
    start = time.perf_counter()
    ds = ingest.ingest(row, MICROSCOPE)
    total = time.perf_counter() - start
    named = sum(seconds for label, seconds in parts if not label.startswith(" "))
    parts.append(("ingest.ingest total", total))
    parts.append(("  of which not in the parts above", total - named))
    parts.append(("io.write_store", timed(lambda: io.write_store(ds, store))))
    return parts


def codecs(store: Path, name: str | None = None) -> str:
    """The codec chain of a Zarr v3 array (the group's variable ``name``, or the store's root array)."""
    node = zarr.open(store, mode="r")
    array = node[name] if name else node
    return ", ".join(type(c).__name__ for c in array.metadata.codecs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="image side in pixels (default 4096)")
    parser.add_argument("--images", type=int, default=5, help="images in the series (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of each (default 3)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new one in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch files")
    args = parser.parse_args(argv)

    made_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ingest_speed_", dir="/tmp")) if made_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        tiff = make_series(workdir, args.size, args.images)
        nbytes = args.size * args.size * args.images * 4
        row = sheet.SeriesRow(
            series="bench",
            files=tiff.name,
            defocus_nm=tuple(float(d) for d in np.linspace(-1.6e6, 1.6e6, args.images)),
            sheet_dir=workdir,
        )
        base_store, ingest_store = workdir / "baseline.zarr", workdir / "ingest.zarr"

        # Warm-up on a small series, so that neither side pays first-use imports in the timings.
        small = make_series(workdir, 64, args.images, name="warmup")
        baseline(small, base_store)
        ingest_stage(sheet.SeriesRow("warmup", small.name, row.defocus_nm, workdir), ingest_store)

        base_times, ingest_times = [], []
        for _ in range(args.repeat):
            base_times.append(timed(lambda: baseline(tiff, base_store)))
            ingest_times.append(timed(lambda: ingest_stage(row, ingest_store)))
        base, ing = statistics.median(base_times), statistics.median(ingest_times)
        ratio = ing / base
        mb = nbytes / 1e6

        print(f"series: {args.images} x {args.size} x {args.size} float32 = {mb:.0f} MB, file {tiff}")
        print(f"machine: {os.cpu_count()} CPUs; zarr {zarr.__version__}, tifffile {tifffile.__version__}")
        print("note: the TIFF was just written, so both sides read it from the OS page cache, not the disk")
        print(f"codecs: baseline [{codecs(base_store)}], ingest [{codecs(ingest_store, 'intensity')}]")
        print(f"median of {args.repeat} alternating runs:")
        print(f"  {'':<22}{'seconds':>10}{'MB/s':>10}   runs")
        for label, median, runs in (
            ("baseline (read+zarr)", base, base_times),
            ("ingest + write_store", ing, ingest_times),
        ):
            print(f"  {label:<22}{median:>10.3f}{mb / median:>10.0f}   {', '.join(f'{t:.3f}' for t in runs)}")
        print(f"  ratio ingest / baseline = {ratio:.2f}   (target: ratio <= 2: {'met' if ratio <= 2 else 'NOT met'})")
        print("breakdown of one ingest (parts timed separately, best of 2 passes):")
        passes = [breakdown(row, tiff, ingest_store) for _ in range(2)]
        for (label, first), (_, second) in zip(*passes, strict=True):
            seconds = min(first, second)
            print(f"  {label:<56}{seconds:>8.3f} s")
    finally:
        if made_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Chunked reconstruction of large fields: tiles with a halo, Dask tasks, seamless stitching, resume.

A field larger than one tile is cut into tiles of ``tile_px`` on the store's chunk grid, each
widened by ``halo_px`` on every side into the data window that
:func:`phasepipe.reconstruct.reconstruct` fits on a canvas a further ``halo_px`` wider, free of
data (docs/physics.md, "Tiling"). The steps, pure functions where they can be, with the side
effects (Zarr reads and writes, records, Dask) in :func:`reconstruct_tiled` and the task functions:

1. :func:`phasepipe.tilegrid.tile_grid` and :func:`phasepipe.tilegrid.auto_halo_px`: geometry and the halo the
   Fresnel spread needs.
2. One Dask task per tile, and one for the whole field binned into one tile, reads its data
   lazily from the aligned Zarr store, reconstructs it and leaves a record (maps and parameters,
   :mod:`phasepipe.resume`) under ``results_dir/work/tiles/<series>/<fingerprint>/``, outside the
   rule's output, so that a killed job resumes from the finished tiles.
3. :func:`phasepipe.tilegrid.anchor`: each tile's low spatial frequencies from the binned fit;
   :func:`phasepipe.tilegrid.reconcile`: every tile's remaining phase constant and gradient (and
   log amplitude constant) by least squares over the overlaps.
4. :func:`phasepipe.tilegrid.blend_weights` and one task per output chunk: the tiles covering
   it, blended with weights that sum to one, written into that chunk alone.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr

from phasepipe import (
    cluster,
    configuration,
    io,
    optimise,
    parameters,
    reconstruct,
    resume,
    separation,
    tilegrid,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TilingSettings:
    """The tiling keys of the config (``reconstruction.tile_px``, ``halo_px``, the ``dask``
    section) and the job's resources."""

    tile_px: int = 512
    halo_px: int | None = None  # None = auto (Fresnel spread of the largest defocus)
    scheduler: str = "local"  # local | threads | slurm | tcp://host:port
    threads: int = 1
    memory_mb: int | None = None
    slurm: cluster.SlurmSettings = cluster.SlurmSettings()


def tiling_from_config(section: dict, dask_section: dict, threads: int, memory_mb: int | None) -> TilingSettings:
    """Resolve the config's tiling keys (of the ``reconstruction`` section), its ``dask`` section
    and the job's resources into :class:`TilingSettings`; each section is checked against the
    schema, the shipped defaults filling in what it lacks (:func:`configuration.section`)."""
    section = configuration.section("reconstruction", section)
    dask_section = configuration.section("dask", dask_section)
    halo = section["halo_px"]
    return TilingSettings(
        tile_px=section["tile_px"],
        halo_px=None if halo == "auto" else halo,
        scheduler=dask_section["scheduler"],
        threads=max(1, threads),
        memory_mb=memory_mb,
        slurm=cluster.slurm_from_config(dask_section["slurm"]),
    )


def combine_parameters(summaries: list[dict]) -> dict:
    """Series parameters from the tiles' own estimates: for every registered output, the mean
    over tiles, and the standard error of the mean from their spread as its std (a single tile's
    own std); the fits' figures averaged, their iterations the most and times summed."""
    n = len(summaries)
    combined = {}
    for output in parameters.outputs():
        values = np.array([s[output.name] for s in summaries], dtype=float)
        if n == 1:
            std = np.asarray(summaries[0][output.std], dtype=float)
        else:
            std = values.std(axis=0, ddof=1) / math.sqrt(n)
        mean = values.mean(axis=0)
        combined[output.name] = float(mean) if mean.ndim == 0 else mean
        combined[output.std] = float(std) if std.ndim == 0 else std
    for key in ("loss", "noise", "tv_weight"):
        combined[key] = float(np.mean([s[key] for s in summaries]))
    combined["iterations"] = int(max(s["iterations"] for s in summaries))
    combined["seconds"] = float(sum(s["seconds"] for s in summaries))
    return combined


# --- tasks (run on Dask workers; arguments and results are small and picklable) ---------------


@dataclass(frozen=True)
class TileJob:
    """What a tile task needs besides its tile."""

    store: str
    records: str
    nominal_nm: tuple[float, ...]
    pixel_size_nm: float
    microscope: parameters.Microscope
    settings: optimise.Settings
    halo_px: int  # the tile's canvas margin; the binned whole-field fit has none, as an untiled fit
    torch_threads: int


def run_tile(job: TileJob, tile: tilegrid.Tile) -> dict:
    """Reconstruct one tile's window, or reuse its record when one from the same input exists."""
    import zarr

    ys, xs = tile.window_slices()
    images = np.asarray(zarr.open_group(job.store, mode="r")["intensity"][:, ys, xs], dtype=np.float32)
    return _reconstruct_once(job, images, job.pixel_size_nm, job.halo_px, Path(job.records) / tile.name)


def run_overview(job: TileJob, factor: int) -> dict:
    """Reconstruct the whole field binned ``factor`` x ``factor`` (the low frequencies every tile
    is anchored to), or reuse its record."""
    return _reconstruct_once(
        job, read_binned(job.store, factor), job.pixel_size_nm * factor, None, Path(job.records) / resume.OVERVIEW
    )


def read_binned(store: str | Path, factor: int, band_px: int = 512) -> np.ndarray:
    """The store's intensities binned ``factor`` x ``factor`` (mean; a remainder at the far edges
    is dropped), read in bands of about ``band_px`` rows so that memory stays that of a band."""
    import zarr

    intensity = zarr.open_group(str(store), mode="r")["intensity"]
    n, h, w = intensity.shape
    hb, wb = h // factor, w // factor
    binned = np.empty((n, hb, wb), np.float32)
    rows = max(1, band_px // factor)
    for r0 in range(0, hb, rows):
        r1 = min(r0 + rows, hb)
        block = np.asarray(intensity[:, r0 * factor : r1 * factor, : wb * factor], dtype=np.float64)
        binned[:, r0:r1] = reconstruct.binned(block, factor)
    return binned


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def reuse_freed_memory() -> None:
    """Have glibc's malloc serve allocations of up to 32 MB from memory freed earlier, as it does
    in a process started plainly.

    Dask's nanny starts its workers with MALLOC_TRIM_THRESHOLD_=65536 (the config key
    distributed.nanny.pre-spawn-environ), and setting it fixes glibc's mmap threshold at 128 kB:
    every fresh FFT output of a fit (MBs) is then mapped and page-faulted anew, which doubled the
    time of an iteration on a tile canvas (docs/performance.md, "Large fields").
    Called in the tile task, so that it holds for every scheduler (a worker of an outside scheduler
    included); without glibc it does nothing.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's largest
    mallopt(M_TRIM_THRESHOLD, 64 * 2**20)  # freed memory kept for reuse: a few maps of a large canvas


def _reconstruct_once(
    job: TileJob, images: np.ndarray, pixel_size_nm: float, margin_px: int | None, folder: Path
) -> dict:
    """The record in ``folder`` when it was made from the same ``images``; otherwise reconstruct
    them and leave the record."""
    import torch

    digest = resume.input_digest(images)
    summary = resume.read_record(folder, digest)
    if summary is not None:
        return {**summary, "reused": True}
    # Fixed threads per tile: the same tile gives the same bytes in an interrupted and an
    # uninterrupted run (the fit itself draws no random numbers).
    torch.set_num_threads(job.torch_threads)
    reuse_freed_memory()
    try:
        result = reconstruct.reconstruct(
            images, np.array(job.nominal_nm), pixel_size_nm, job.microscope, job.settings, margin_px=margin_px
        )
    except optimise.FitDiverged as exc:
        where = "the overview" if folder.name == resume.OVERVIEW else f"tile {folder.name}"
        raise optimise.FitDiverged(f"{where}: {exc}") from None
    summary = {
        "input_sha256": digest,
        **{output.name: np.asarray(result.values[output.name]).tolist() for output in parameters.outputs()},
        **{output.std: np.asarray(result.stds[output.name]).tolist() for output in parameters.outputs()},
        "loss": result.loss,
        "noise": result.noise,
        "tv_weight": result.tv_weight,
        "iterations": result.iterations,
        "seconds": result.seconds,
        "finished": time.time(),
    }
    # Amplitude is kept as its log: tiles differ by an arbitrary factor (their intensities are
    # normalised to their own mean), an additive constant in log space.
    maps = {"phase": result.phase, "amplitude": np.log(result.amplitude), "tie_phase": result.tie_phase}
    resume.write_record(folder, maps, summary)
    return {**summary, "reused": False}


def anchored_maps(
    records: Path, tile: tilegrid.Tile, overview: dict[str, np.ndarray], factor: int
) -> dict[str, np.ndarray]:
    """A tile's recorded maps, each anchored to the binned whole-field fit (:func:`phasepipe.tilegrid.anchor`)."""
    maps = resume.load_maps(records / tile.name)
    return {name: tilegrid.anchor(maps[name], overview[name], tile, factor) for name in resume.MAPS}


@dataclass(frozen=True)
class StitchJob:
    """What a stitching task needs besides its chunk."""

    out: str
    records: str
    shape: tuple[int, int]
    halo_px: int
    tiles: tuple[tilegrid.Tile, ...]
    overview: dict[str, np.ndarray]  # maps of the binned whole-field fit
    factor: int  # its binning
    corrections: dict[str, np.ndarray]  # map -> (n_tiles, k) from tilegrid.reconcile
    offsets: dict[str, float]  # map -> constant removed from the whole field


def stitch_chunk(job: StitchJob, index: int) -> None:
    """Blend the tiles that cover tile ``index``'s core and write that chunk (its only writer)."""
    import zarr

    target = job.tiles[index]
    y0, y1, x0, x1 = target.core
    blended = {name: np.zeros((y1 - y0, x1 - x0)) for name in resume.MAPS}
    for i, tile in enumerate(job.tiles):
        if abs(tile.row - target.row) > 1 or abs(tile.col - target.col) > 1:
            continue
        wy0, _, wx0, _ = tile.window
        ys = slice(max(y0, tile.window[0]) - wy0, min(y1, tile.window[1]) - wy0)
        xs = slice(max(x0, tile.window[2]) - wx0, min(x1, tile.window[3]) - wx0)
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        weight = tilegrid.blend_weights(tile, job.shape, job.halo_px)[ys, xs]
        if not weight.any():
            continue
        out = (slice(ys.start + wy0 - y0, ys.stop + wy0 - y0), slice(xs.start + wx0 - x0, xs.stop + wx0 - x0))
        maps = anchored_maps(Path(job.records), tile, job.overview, job.factor)
        for name in resume.MAPS:
            fix = tilegrid.correction(tile, job.shape, job.corrections[name][i])[ys, xs]
            blended[name][out] += weight * (maps[name][ys, xs] + fix)
    group = zarr.open_group(job.out, mode="r+")
    for name in resume.MAPS:
        values = blended[name] - job.offsets[name]
        group[name][y0:y1, x0:x1] = (np.exp(values) if name == "amplitude" else values).astype(np.float32)


# --- orchestration ---------------------------------------------------------------------------


def store_tiling(store: str | Path, tile_px: int, halo_px: int | None) -> tuple[int, int]:
    """Tiles of an aligned store and the memory (MB) one tile's fit needs, from its metadata
    alone: what the workflow sizes a reconstruction job's threads and memory by."""
    ds = io.open_store(store)
    if io.is_failed(ds):
        return 1, tilegrid.TILE_BASE_MB
    n_images = ds.sizes["image"]
    shape = (ds.sizes["y"], ds.sizes["x"])
    if max(shape) <= tile_px:
        return 1, tilegrid.tile_memory_mb(max(shape), n_images)
    halo = series_halo_px(ds, halo_px)
    return len(tilegrid.tile_grid(shape, tile_px, halo)), tilegrid.tile_memory_mb(tile_px + 4 * halo, n_images)


def series_halo_px(ds: xr.Dataset, halo_px: int | None) -> int:
    """``halo_px``, or the automatic halo of an aligned series (:func:`phasepipe.tilegrid.auto_halo_px`)."""
    if halo_px is not None:
        return halo_px
    microscope = parameters.Microscope(**json.loads(ds.attrs["microscope"]))
    max_defocus_nm = float(np.abs(ds["defocus_nominal_nm"].values).max())
    return tilegrid.auto_halo_px(microscope, max_defocus_nm, ds.attrs["pixel_size_nm"])


def format_progress(done: int, total: int, computed: int, elapsed_s: float) -> str:
    """'tiles done / total' with the rate of the tiles computed in this run and an ETA."""
    rate = computed / elapsed_s * 60 if elapsed_s > 0 and computed else 0.0
    eta = f"{(total - done) / rate:.1f} min" if rate else "unknown"
    return f"tiles {done}/{total}, {rate:.2f} tiles/min, ETA {eta}"


def reconstruct_store(
    store: str | Path,
    out: str | Path,
    records_root: str | Path,
    settings: optimise.Settings,
    tiling: TilingSettings,
    on_iteration: Callable[[int, float], None] | None = None,
    on_tiles: Callable[[int, int], None] | None = None,
) -> xr.Dataset:
    """Reconstruct the aligned series ``store`` into the store ``out``, the one entry point: a
    field no larger than ``tiling.tile_px`` whole, exactly as without tiling (``on_iteration(it,
    misfit)`` follows its fit), a larger one tile by tile (:func:`reconstruct_tiled`, which
    ``on_tiles(done, total)`` follows). Returns the reconstructed Dataset."""
    ds = io.open_store(store)
    if ds.sizes["y"] <= tiling.tile_px and ds.sizes["x"] <= tiling.tile_px:
        result = reconstruct.reconstruct_dataset(ds.load(), settings, on_iteration)
        if settings.separation == "absorption":
            result = separation.absorption_dataset(result)
        io.write_store(result, out)
        return result
    if settings.separation == "absorption":
        log.warning("%s: separation absorption is not done on fields larger than one tile", ds.attrs["series"])
    return reconstruct_tiled(store, out, records_root, settings, tiling, on_tiles)


def reconstruct_tiled(
    store: str | Path,
    out: str | Path,
    records_root: str | Path,
    settings: optimise.Settings,
    tiling: TilingSettings,
    progress: Callable[[int, int], None] | None = None,
) -> xr.Dataset:
    """Reconstruct an aligned series store tile by tile into the reconstructed store ``out``.

    Records of finished tiles go to ``records_root/<fingerprint>/`` and are removed once ``out``
    is complete; records of other settings are removed at the start. Returns the written Dataset
    (opened lazily).
    """
    ds = io.open_store(store)
    microscope = parameters.Microscope(**json.loads(ds.attrs["microscope"]))
    nominal = ds["defocus_nominal_nm"].values
    pixel = float(ds.attrs["pixel_size_nm"])
    shape = (ds.sizes["y"], ds.sizes["x"])
    halo = series_halo_px(ds, tiling.halo_px)
    tiles = tilegrid.tile_grid(shape, tiling.tile_px, halo)
    canvas_px = max(max(t.window[1] - t.window[0], t.window[3] - t.window[2]) for t in tiles) + 2 * halo
    tile_mb = tilegrid.tile_memory_mb(canvas_px, nominal.size)
    if tiling.scheduler == "slurm":
        # One worker per SLURM job, up to one job per fit (the tiles and the binned field).
        workers, torch_threads = min(tiling.slurm.jobs, len(tiles) + 1), tiling.slurm.cores
    else:
        workers, torch_threads = cluster.plan_workers(tiling.threads, tiling.memory_mb, len(tiles), tile_mb)
    fingerprint = resume.settings_fingerprint(settings, microscope, nominal, pixel, shape, tiling.tile_px, halo)
    records_root = Path(records_root)
    records = records_root / fingerprint
    if records_root.is_dir():
        for stale in records_root.iterdir():
            if stale.name != fingerprint:
                shutil.rmtree(stale, ignore_errors=True)  # another setting's records: invalid now
    records.mkdir(parents=True, exist_ok=True)
    log.info(
        "%s: %d x %d px in %d tiles of %d px, halo %d px; %d worker(s) x %d torch thread(s), scheduler %s",
        ds.attrs["series"],
        *shape,
        len(tiles),
        tiling.tile_px,
        halo,
        workers,
        torch_threads,
        tiling.scheduler,
    )
    # Tiles' calibrations scatter over the field: that spread is the series' std (combine_parameters),
    # so a tile does not estimate it again from sub-fields of its own, nor draw replicates.
    tile_settings = replace(settings, subfield_uncertainty=False, bootstrap_replicates=0, drift_screen=False)
    job = TileJob(
        str(store), str(records), tuple(map(float, nominal)), pixel, microscope, tile_settings, halo, torch_threads
    )
    factor = math.ceil(max(shape) / tiling.tile_px)  # the binned whole field fits in one tile
    slurm = cluster.SlurmWorkers(
        tiling.slurm,
        f"phasepipe-{ds.attrs['series']}",
        tiling.slurm.memory_mb or tile_mb + cluster.SLURM_WORKER_MB,
        records / "slurm-logs",  # kept with the records when the run fails, removed with them
    )
    with cluster.dask_client(tiling.scheduler, workers, slurm) as client:
        summaries = _run_tiles(client, job, tiles, factor, progress)
        overview = {name: np.asarray(values) for name, values in resume.load_maps(records / resume.OVERVIEW).items()}
        corrections, offsets = _reconciliation(tiles, records, shape, halo, overview, factor)
        params = combine_parameters([summaries[t.name] for t in tiles])
        result = _lazy_result(shape, tiling.tile_px, params)
        # The per-image variables are copied into the output: loaded (they are small), since a
        # lazy one would get only its layout written below.
        dataset = reconstruct.result_dataset(ds.drop_vars("intensity").load(), result, settings)
        dataset["tile_defocus_nm"] = (("tile", "image"), np.array([summaries[t.name]["defocus_nm"] for t in tiles]))
        # Tiles by their core's origin (numbers: Zarr v3 has no stable string type yet).
        dataset = dataset.assign_coords(
            tile_y0_px=("tile", [t.core[0] for t in tiles]), tile_x0_px=("tile", [t.core[2] for t in tiles])
        )
        dataset.attrs.update(
            tiles=len(tiles),
            tile_px=tiling.tile_px,
            halo_px=halo,
        )
        io.write_store(dataset, out, chunk_px=tiling.tile_px, compute=False)
        stitch = StitchJob(str(out), str(records), shape, halo, tuple(tiles), overview, factor, corrections, offsets)
        client.gather(client.map(stitch_chunk, [stitch] * len(tiles), range(len(tiles)), pure=False))
    shutil.rmtree(records, ignore_errors=True)
    return io.open_store(out)


def _run_tiles(client, job: TileJob, tiles: list[tilegrid.Tile], factor: int, progress) -> dict[str, dict]:
    """Every tile's fit and the binned whole-field fit (counted as one more tile), as Dask tasks;
    their summaries by name, logged with progress as they finish."""
    from distributed import as_completed

    futures = [client.submit(run_overview, job, factor, pure=False)]
    futures += client.map(run_tile, [job] * len(tiles), tiles, pure=False)
    names = {f.key: name for f, name in zip(futures, [resume.OVERVIEW] + [t.name for t in tiles], strict=True)}
    total = len(futures)
    pending = as_completed(futures)
    del futures  # held by `pending` alone, each until it is released below
    summaries: dict[str, dict] = {}
    start = time.perf_counter()
    computed = 0
    for future in pending:
        summary = future.result()
        # Fetched: let the scheduler forget it, or a worker that leaves (its lifetime over) would
        # have it computed again for nothing.
        future.release()
        name = names[future.key]
        summaries[name] = summary
        computed += not summary["reused"]
        how = (
            "from its record"
            if summary["reused"]
            else f"computed (full-resolution fit: {summary['iterations']} iterations, {summary['seconds']:.1f} s)"
        )
        log.info(
            "tile %s %s; %s",
            name,
            how,
            format_progress(len(summaries), total, computed, time.perf_counter() - start),
        )
        if progress is not None:
            progress(len(summaries), total)
    return summaries


def _reconciliation(
    tiles: list[tilegrid.Tile],
    records: Path,
    shape: tuple[int, int],
    halo: int,
    overview: dict[str, np.ndarray],
    factor: int,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Least-squares corrections of every map (phase and TIE phase: constant and gradient; log
    amplitude: constant) and the constant that then gives each stitched map zero mean (the
    amplitude keeps the mean of the tiles)."""
    pairs: dict[str, list] = {name: [] for name in resume.MAPS}
    for i, j in tilegrid.neighbours(tiles):
        a, b = (anchored_maps(records, tiles[k], overview, factor) for k in (i, j))
        for name in resume.MAPS:
            moments = tilegrid.overlap_moments(tiles[i], tiles[j], a[name], b[name], shape, halo, tilegrid.TERMS[name])
            if moments is not None:
                pairs[name].append((i, j, *moments))
    corrections = {name: tilegrid.reconcile(len(tiles), tilegrid.TERMS[name], pairs[name]) for name in resume.MAPS}
    # The stitched mean is a sum over tiles of weight x (map + correction): no pass over the field.
    totals = dict.fromkeys(("phase", "tie_phase"), 0.0)
    for i, tile in enumerate(tiles):
        maps = anchored_maps(records, tile, overview, factor)
        weight = tilegrid.blend_weights(tile, shape, halo)
        for name in totals:
            totals[name] += float(
                np.sum(weight * (maps[name] + tilegrid.correction(tile, shape, corrections[name][i])))
            )
    offsets = {name: total / (shape[0] * shape[1]) for name, total in totals.items()}
    offsets["amplitude"] = 0.0
    return corrections, offsets


def _lazy_result(shape: tuple[int, int], chunk_px: int, params: dict) -> reconstruct.Reconstruction:
    """The series' :class:`Reconstruction` with lazy placeholder maps: the stitching tasks write
    the maps chunk by chunk into the store this describes."""
    import dask.array as da

    empty = da.zeros(shape, dtype=np.float32, chunks=chunk_px)
    maps = {"phase": empty, "amplitude": empty, "tie_phase": empty}
    # The tiles' spread is the tiled field's uncertainty: no sub-fields' calibrations of its own.
    outputs = parameters.outputs()
    return reconstruct.Reconstruction(
        **maps,
        values={output.name: params[output.name] for output in outputs},
        stds={output.name: params[output.std] for output in outputs},
        **{key: params[key] for key in ("loss", "noise", "tv_weight", "iterations", "seconds")},
    )

"""Speed-up of Dask workers on tiles, tiles per minute and peak memory per worker.

The project's targets (issue 6): on a 2-core machine, 2 workers at least 1.7 times as fast as 1
on the tiles of a 4096 x 4096 x 3 series, and below 4 GB peak memory per worker, independent of
the field size.

What is measured, in one run on this machine:

* a simulated skyrmion-lattice series of ``--size`` px (three images, -1.6, 0, +1.6 mm) is
  written as an aligned Zarr store;
* on a LocalCluster of 1 worker and then of 2 workers (one torch thread each, their own records,
  so that nothing is reused), every worker first fits a tile of its own, timed apart: a worker's
  first fit also pays its start-up (imports, numba's kernels loaded from their cache), a cost
  paid once per worker
  process (once in the 32 tiles a worker of a 4096 px field fits), which a handful of timed
  tiles would otherwise count as many times over;
* then the same ``--tiles`` tiles (from the field's centre) are fitted by the tile task of
  :mod:`phasepipe.tiling` (``--iterations`` each) and timed;
* printed: the first tiles' time, the timed tiles' wall time, the speed-up, tiles per minute, every
  worker's peak resident memory (VmHWM of the worker process, which reads only its tiles'
  windows), and the whole field's tile time on 1 and 2 workers extrapolated from these.

Run from the repository root::

    .venv/bin/python benchmarks/tiling_speed.py                       # 4096 px, 8 tiles of 512 px
    .venv/bin/python benchmarks/tiling_speed.py --size 1024 --tiles 4 --iterations 20
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_aligned_store  # noqa: E402  (the tests' aligned store of a simulated series)

from phasepipe import cluster, optimise, parameters, simulate, tilegrid, tiling  # noqa: E402

DEFOCUS = (-1.6e6, 0.0, 1.6e6)


def write_series(path: Path, size: int) -> None:
    """A skyrmion lattice with the demo's cell size (6 cells per 256 px) as an aligned store."""
    spec = simulate.SeriesSpec(
        "bench", "skyrmions", size_px=size, defocus_nominal_nm=DEFOCUS, drift_px=0.0, extra={"cells": 6 * size // 256}
    )
    write_aligned_store(path, spec)


def peak_rss_mb() -> float:
    """Peak resident memory of the calling process (VmHWM: unlike ru_maxrss, not inherited from
    the process that started it)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def run(
    job: tiling.TileJob, first: list[tilegrid.Tile], tiles: list[tilegrid.Tile], workers: int
) -> tuple[float, float, list[float]]:
    """On ``workers`` worker processes: the wall time of every worker fitting its tile of ``first``
    (its start-up included), then that of fitting ``tiles``, and each worker's peak memory."""
    with cluster.dask_client("local", workers) as client:
        client.wait_for_workers(workers)
        t0 = time.perf_counter()
        names = list(client.scheduler_info()["workers"])
        client.gather(
            [
                client.submit(tiling.run_tile, job, tile, workers=[name], pure=False)
                for name, tile in zip(names, first, strict=False)
            ]
        )
        first_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        client.gather(client.map(tiling.run_tile, [job] * len(tiles), tiles, pure=False))
        seconds = time.perf_counter() - t0
        peaks = list(client.run(peak_rss_mb).values())
    return first_seconds, seconds, peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="field edge in px")
    parser.add_argument("--tile", type=int, default=512, help="tile_px")
    parser.add_argument("--tiles", type=int, default=8, help="tiles timed (from the field's centre)")
    parser.add_argument(
        "--iterations", type=int, default=200, help="iterations per tile (fewer: the fixed work per tile dominates)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "aligned.zarr"
        t0 = time.perf_counter()
        write_series(store, args.size)
        print(f"simulated {args.size} x {args.size} x {len(DEFOCUS)} in {time.perf_counter() - t0:.0f} s", flush=True)
        microscope = parameters.Microscope()
        halo = tilegrid.auto_halo_px(microscope, max(abs(d) for d in DEFOCUS), 5.0)
        grid = tilegrid.tile_grid((args.size, args.size), args.tile, halo)
        centre = np.array([args.size / 2, args.size / 2])
        grid.sort(key=lambda t: np.hypot(*(np.array([t.core[0], t.core[2]]) + args.tile / 2 - centre)))
        tiles, first = grid[: args.tiles], grid[args.tiles : args.tiles + 2]
        # The fit's own throughput: the sub-field uncertainty is left out.
        settings = optimise.Settings(max_iterations=args.iterations, converge=False, subfield_uncertainty=False)
        canvas = args.tile + 4 * halo
        print(
            f"{len(tiles)} tiles of {args.tile} px, halo {halo} px (canvas {canvas} px), "
            f"{args.iterations} iterations each, 1 torch thread per worker",
            flush=True,
        )
        timings = {}
        for workers in (1, 2):
            job = tiling.TileJob(
                str(store), str(Path(tmp) / f"records-{workers}"), DEFOCUS, 5.0, microscope, settings, halo, 1
            )
            first_seconds, seconds, peaks = run(job, first, tiles, workers)
            timings[workers] = (first_seconds, seconds)
            print(
                f"{workers} worker(s): first tile of every worker (its start-up included) {first_seconds:.1f} s; "
                f"{len(tiles)} tiles {seconds:.1f} s, {60 * len(tiles) / seconds:.2f} tiles/min, "
                f"peak memory per worker {', '.join(f'{p / 1024:.2f} GB' for p in peaks)}",
                flush=True,
            )
        print(f"speed-up of 2 workers over 1: {timings[1][1] / timings[2][1]:.2f} (target >= 1.7)")
        # The whole field: each worker's first tile, then the rest shared out.
        whole = {w: c + (len(grid) - w) * s / len(tiles) for w, (c, s) in timings.items()}
        print(
            f"whole field ({len(grid)} tiles), extrapolated: 1 worker {whole[1] / 60:.1f} min, "
            f"2 workers {whole[2] / 60:.1f} min, speed-up {whole[1] / whole[2]:.2f}"
        )
        print(f"estimated model per tile: {tilegrid.tile_memory_mb(canvas, len(DEFOCUS)) / 1024:.2f} GB")


if __name__ == "__main__":
    main()

"""Iterations and wall time a tile of a large demo-like series needs with ``iterations: auto``.

The cost model (docs/cost-model.md) needs the time of one converged tile, not of a fixed number
of iterations; two runs with fixed ``--iterations`` split a fit's time into its set-up and its
cost per iteration. What is measured, in one run on this machine:

* a simulated skyrmion-lattice series of ``--size`` px like the demo's s02_skyrmions (five images
  at -1.6 ... +1.6 mm, a lens calibration of 1.04 to be refined, 5 % noise) is written as an
  aligned Zarr store;
* ``--tiles`` tiles from the field's centre are fitted by the tile task of :mod:`phasepipe.tiling`
  with the shipped reconstruction settings (stop on convergence, at most 4000 iterations; or
  exactly ``--iterations``) on a LocalCluster of ``--workers`` workers, one torch thread each;
* per tile: the iterations to convergence, the wall time, and the time per iteration.

Run from the repository root::

    .venv/bin/python benchmarks/tile_convergence.py --size 4096 --tiles 2 --workers 2
    .venv/bin/python benchmarks/tile_convergence.py --size 1536 --tiles 1 --workers 1 --iterations 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_aligned_store  # noqa: E402  (the tests' aligned store of a simulated series)

from phasepipe import cluster, optimise, parameters, simulate, tilegrid, tiling  # noqa: E402

DEFOCUS = (-1.6e6, -0.8e6, 0.0, 0.8e6, 1.6e6)  # the demo's five levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="field edge in px")
    parser.add_argument("--tile", type=int, default=512, help="tile_px")
    parser.add_argument("--tiles", type=int, default=2, help="tiles fitted (from the field's centre)")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers (one torch thread each)")
    parser.add_argument("--iterations", type=int, default=None, help="exactly this many (default: auto)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "aligned.zarr"
        spec = simulate.SeriesSpec(
            "bench",
            "skyrmions",
            size_px=args.size,
            defocus_nominal_nm=DEFOCUS,
            calibration=1.04,
            drift_px=0.0,
            b0_t=0.45,
            extra={"cells": 6 * args.size // 256},
        )
        t0 = time.perf_counter()
        write_aligned_store(store, spec)
        print(f"simulated {args.size} x {args.size} x {len(DEFOCUS)} in {time.perf_counter() - t0:.0f} s", flush=True)
        microscope = parameters.Microscope()
        halo = tilegrid.auto_halo_px(microscope, max(abs(d) for d in DEFOCUS), spec.pixel_size_nm)
        grid = tilegrid.tile_grid((args.size, args.size), args.tile, halo)
        centre = np.array([args.size / 2, args.size / 2])
        grid.sort(key=lambda t: np.hypot(*(np.array([t.core[0], t.core[2]]) + args.tile / 2 - centre)))
        tiles = grid[: args.tiles]
        if args.iterations is None:
            settings, iterations = optimise.Settings(), f"auto (cap {optimise.Settings.max_iterations})"
        else:
            settings, iterations = optimise.Settings(max_iterations=args.iterations, converge=False), args.iterations
        print(
            f"{len(tiles)} tiles of {args.tile} px, halo {halo} px (canvas {args.tile + 4 * halo} px), "
            f"{iterations} iterations, {args.workers} worker(s) x 1 torch thread",
            flush=True,
        )
        job = tiling.TileJob(
            str(store), str(Path(tmp) / "records"), DEFOCUS, spec.pixel_size_nm, microscope, settings, halo, 1
        )
        with cluster.dask_client("local", args.workers) as client:
            t0 = time.perf_counter()
            summaries = client.gather(client.map(tiling.run_tile, [job] * len(tiles), tiles, pure=False))
            wall = time.perf_counter() - t0
        for tile, summary in zip(tiles, summaries, strict=True):
            print(
                f"tile {tile.name}: {summary['iterations']} iterations in {summary['seconds']:.0f} s "
                f"({summary['seconds'] / summary['iterations']:.3f} s per iteration, fit set-up included)",
                flush=True,
            )
        print(f"wall time {wall:.0f} s for {len(tiles)} tiles on {args.workers} worker(s)")


if __name__ == "__main__":
    main()

"""Tiling fidelity: a tiled reconstruction against the untiled one of the same field.

The project's target (issue 6): on a simulated 1024 x 1024 series with |df| up to 1.6 mm and
256 px tiles, acc between the tiled and the untiled reconstruction >= 0.995, and no visible seam.

What is measured, in one run: a skyrmion lattice (five images, -1.6 ... +1.6 mm, 5 % noise, no
drift) is reconstructed whole and in tiles (auto halo, LocalCluster of ``--workers``), both with
``--iterations`` fixed iterations; printed are acc of tiled against untiled and of both against
the truth, the largest phase jump across a seam against the median and 99th-percentile
pixel-to-pixel step, and how far the steps across seams depart from the untiled map's, against
the same on lines half-way between seams.

Run from the repository root::

    .venv/bin/python benchmarks/tiling_fidelity.py                  # 1024 px, 256 px tiles, 200 iterations
    .venv/bin/python benchmarks/tiling_fidelity.py --size 512 --tile 128 --iterations 100
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_aligned_store  # noqa: E402  (the tests' aligned store)
from test_tiling import FIVE, seam_steps  # noqa: E402  (the tests' seam measure)

from phasepipe import io, metrics, optimise, reconstruct, simulate, tiling  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    spec = simulate.SeriesSpec(
        "fidelity",
        "skyrmions",
        size_px=args.size,
        defocus_nominal_nm=FIVE,
        calibration=1.0,
        drift_px=0.0,
        n_particles=args.size**2 // 8192,
        seed=1,
    )
    settings = optimise.Settings(max_iterations=args.iterations, converge=False)
    with tempfile.TemporaryDirectory() as tmp:
        store, truth = write_aligned_store(Path(tmp) / "aligned.zarr", spec)
        torch.set_num_threads(args.workers)
        t0 = time.perf_counter()
        untiled = reconstruct.reconstruct_dataset(io.open_store(store).load(), settings)
        t1 = time.perf_counter()
        tiled = tiling.reconstruct_tiled(
            store,
            Path(tmp) / "tiled.zarr",
            Path(tmp) / "records",
            settings,
            tiling.TilingSettings(args.tile, None, "local", args.workers),
        ).load()
        t2 = time.perf_counter()
    phase, reference, true = tiled["phase"].values, untiled["phase"].values, truth["phase"].values
    steps = np.abs(np.concatenate([np.diff(phase, axis=0).ravel(), np.diff(phase, axis=1).ravel()]))
    lines = range(args.tile, args.size, args.tile)
    seam_max = max(
        max(np.abs(np.diff(phase, axis=0)[b - 1]).max(), np.abs(np.diff(phase, axis=1)[:, b - 1]).max()) for b in lines
    )
    across = seam_steps(phase, reference, args.tile)
    inside = seam_steps(phase, reference, args.tile, offset=-args.tile // 2)
    print(
        f"{args.size} px, {tiled.attrs['tiles']} tiles of {args.tile} px, halo {tiled.attrs['halo_px']} px, "
        f"{args.iterations} iterations; untiled {t1 - t0:.0f} s, tiled {t2 - t1:.0f} s ({args.workers} workers)"
    )
    print(
        f"acc tiled vs untiled {metrics.phase_accuracy(phase, reference):.4f} (target >= 0.995); "
        f"against the truth: untiled {metrics.phase_accuracy(reference, true):.4f}, "
        f"tiled {metrics.phase_accuracy(phase, true):.4f}"
    )
    print(
        f"largest phase jump across a seam {seam_max:.3f} rad; pixel-to-pixel step median {np.median(steps):.3f} rad, "
        f"99th percentile {np.percentile(steps, 99):.3f} rad"
    )
    print(
        f"steps' departure from the untiled map: across seams max {across.max():.3f} mean {across.mean():.4f} rad; "
        f"half-way between seams max {inside.max():.3f} mean {inside.mean():.4f} rad"
    )
    print(
        f"defocus (nm): untiled {np.round(untiled['defocus_nm'].values)}, tiled {np.round(tiled['defocus_nm'].values)} "
        f"+- {np.round(tiled['defocus_std_nm'].values)}, truth {np.round(truth['defocus_nm'].values)}"
    )


if __name__ == "__main__":
    main()

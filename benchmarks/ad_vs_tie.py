"""Accuracy and wall time of the differentiable reconstruction (AD) against TIE.

On the project's own simulated objects (the demo's four patterned islands: two vortex disks, a
skyrmion lattice, stripe domains; 256 x 256 px, 5 nm pixels, -1.6 ... +1.6 mm in five images,
defocus calibration off by +4 % or -3.5 %, no drift) at 0 %, 5 % and 10 % Gaussian intensity
noise, it prints one table row per series and noise level: acc and phase RMSE against the truth
(docs/physics.md, "Figures of merit"), the largest relative defocus error over the defocused images,
and wall time, for AD (``refine: [defocus]``, ``iterations: auto``, ``--threads`` torch threads, default 1) and for TIE
(the mirror-symmetrised, Tikhonov-regularised baseline at the nominal defocus). Size, defocus
and calibration can be changed for every series at once.

Series run in parallel, one per worker process (``--workers``, default 2).

Run from the repository root::

    .venv/bin/python benchmarks/ad_vs_tie.py                 # 12 reconstructions, a few minutes
    .venv/bin/python benchmarks/ad_vs_tie.py --noise 0.1 --series s02_skyrmions
    # issue 5's acceptance case: 512^2, three images, 10 % noise, calibration 5 % off, 2 threads
    .venv/bin/python benchmarks/ad_vs_tie.py --size 512 --defocus -1600000 0 1600000 --calibration 1.05 \
        --noise 0.1 --workers 1 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def run(spec, threads: int, device: str = "cpu") -> dict:
    """AD and TIE on one simulated series; figures of merit against its truth."""
    import torch

    from phasepipe import metrics, optimise, parameters, reconstruct, simulate, tie

    torch.set_num_threads(threads)
    images, truth = simulate.simulate_series(spec)
    nominal = np.asarray(spec.defocus_nominal_nm)
    true_phase, true_df = truth["phase"].values, truth["defocus_nm"].values
    defocused = np.abs(true_df) > 1.0

    t0 = time.perf_counter()
    tie_phase = tie.tie_phase(images, nominal, spec.pixel_size_nm, spec.voltage_kv * 1e3)
    tie_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = reconstruct.reconstruct(
        images, nominal, spec.pixel_size_nm, parameters.Microscope(), optimise.Settings(device=device)
    )
    ad_s = time.perf_counter() - t0
    return {
        "series": spec.series,
        "noise": spec.noise_fraction,
        "acc_ad": metrics.phase_accuracy(result.phase, true_phase),
        "acc_tie": metrics.phase_accuracy(tie_phase, true_phase),
        "rmse_ad": metrics.phase_rmse(result.phase, true_phase),
        "rmse_tie": metrics.phase_rmse(tie_phase, true_phase),
        "df_ad": float(metrics.defocus_errors(result.values["defocus_nm"], true_df)[defocused].max()),
        "df_tie": float(metrics.defocus_errors(nominal, true_df)[defocused].max()),
        "seconds_ad": ad_s,
        "seconds_tie": tie_s,
        "iterations": result.iterations,
    }


def main() -> None:
    from phasepipe import simulate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05, 0.1])
    parser.add_argument("--series", nargs="+", default=list(simulate.DEMO_SERIES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, help="field size in px (default: the demo's)")
    parser.add_argument("--defocus", type=float, nargs="+", help="nominal defocus in nm (default: the demo's)")
    parser.add_argument("--calibration", type=float, help="true / nominal defocus (default: the demo's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per series")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where AD runs")
    args = parser.parse_args()

    changes = {"size_px": args.size, "defocus_nominal_nm": args.defocus and tuple(args.defocus)}
    changes["calibration"] = args.calibration
    changes = {key: value for key, value in changes.items() if value is not None}
    specs = [
        dataclasses.replace(spec, noise_fraction=noise, drift_px=0.0, **changes)
        for noise in args.noise
        for spec in simulate.demo_campaign()
        if spec.series in args.series
    ]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        rows = list(pool.map(functools.partial(run, threads=args.threads, device=args.device), specs))
    print(
        "| series | noise | acc AD | acc TIE | phase RMSE AD (rad) | phase RMSE TIE (rad) "
        "| defocus error AD | defocus error TIE (nominal) | time AD | time TIE |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['series']} | {100 * r['noise']:.0f} % | {r['acc_ad']:.4f} | {r['acc_tie']:.4f} "
            f"| {r['rmse_ad']:.3f} | {r['rmse_tie']:.3f} | {100 * r['df_ad']:.2f} % | {100 * r['df_tie']:.2f} % "
            f"| {r['seconds_ad']:.0f} s ({r['iterations']} it) | {r['seconds_tie']:.2f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()

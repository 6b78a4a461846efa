"""Accuracy the drift costs: the demo's series with and without drift, through alignment and reconstruction.

The project's target (issue 4): reconstruction accuracy on the demo with drift within 0.005 acc of
the same data without drift.

What is measured, in one run: every demo series is simulated twice, with the demo's drift (3 px rms
between images) and with none, otherwise identical (same object, noise and defocus calibration).
Both go through what the pipeline does to them: registration and resampling with the default
``align`` settings, then the reconstruction with the default ``reconstruction`` settings
(``refine: [defocus]``, ``iterations: auto``, one torch thread). It prints acc against the
simulator's truth for both and their difference, with the registration's error (RMS over the
images, px) against the true drift.

Run from the repository root::

    .venv/bin/python benchmarks/drift_cost.py                  # the four demo series, 2 at a time
    .venv/bin/python benchmarks/drift_cost.py --series s03_stripes --workers 1
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def run(spec) -> dict:
    """Align and reconstruct one simulated series; acc and the registration's error."""
    import torch

    from phasepipe import align, metrics, optimise, parameters, reconstruct, simulate

    torch.set_num_threads(1)
    images, truth = simulate.simulate_series(spec)
    nominal = np.asarray(spec.defocus_nominal_nm)
    t0 = time.perf_counter()
    registration = align.series_registration(images, nominal)
    result = reconstruct.reconstruct(
        align.apply_registration(images, registration),
        nominal,
        spec.pixel_size_nm,
        parameters.Microscope(),
        optimise.Settings(),
    )
    true_shifts = np.stack([truth["shift_y_px"].values, truth["shift_x_px"].values], axis=1)
    return {
        "acc": metrics.phase_accuracy(result.phase, truth["phase"].values),
        "registration_px": float(np.sqrt(np.mean(np.sum((registration.shift_px - true_shifts) ** 2, axis=1)))),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    from phasepipe import simulate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", nargs="+", default=list(simulate.DEMO_SERIES))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    specs = [spec for spec in simulate.demo_campaign() if spec.series in args.series]
    runs = [dataclasses.replace(spec, drift_px=drift) for spec in specs for drift in (spec.drift_px, 0.0)]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        results = list(pool.map(run, runs))
    print(
        "| series | acc with drift | acc without drift | difference (target < 0.005) "
        "| registration error with / without drift (px rms) | time with / without |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for k, spec in enumerate(specs):
        drifted, still = results[2 * k], results[2 * k + 1]
        print(
            f"| {spec.series} | {drifted['acc']:.4f} | {still['acc']:.4f} | {abs(drifted['acc'] - still['acc']):.4f} "
            f"| {drifted['registration_px']:.2f} / {still['registration_px']:.2f} "
            f"| {drifted['seconds']:.0f} s / {still['seconds']:.0f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()

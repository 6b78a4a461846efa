"""Time of one reconstruction iteration against the FFTs it needs.

The project's target: the iteration is dominated by its FFTs, "time per iteration divided by the
time of the 2N+2 FFTs it needs, for N = 3 and 5 images of 512^2 and 1024^2: at most 2.0 with
defocus refinement on".

What is measured, in one run on this machine, with the torch threads given (default 1, as the
workflow runs a reconstruction job per core):

* an iteration of :func:`phasepipe.optimise.fit` on a simulated series (refine: defocus, every
  image in the misfit): misfit, TV penalty, their gradients and the optimiser steps. With the
  coherence fixed this is the fast path (:mod:`phasepipe.fused`, docs/physics.md): misfit and
  gradient in one pass over the series, compiled (numba) kernels between the FFTs. Its FFTs:
  one of the exit wave, N inverse ones for the images, N for their gradients and one inverse
  back to the object;
* baseline: 2N + 2 complex64 FFTs (``torch.fft.fft2`` / ``ifft2``) of one image each, the same
  size and threads.

After warm-up iterations (the first loads or compiles the kernels), each side is timed
``--repeat`` times alternately (the iterations of a fit between its own per-iteration reports,
the FFTs ``--iterations`` times over, so that both sides of a pair take about as long), in wall
time and in this thread's CPU time (which leaves out other processes' turns on a shared machine;
with more than one torch thread it leaves out the other threads' work). The ratio printed is
the median of the pairs' ratios: the machine's speed drifts between pairs more than within one.

Its figures on the project's machines, with their dates and hosts: docs/performance.md ("Stage
speed", "The fast path's history"); where the time goes: docs/physics.md, "Fast path".

Run from the repository root::

    .venv/bin/python benchmarks/reconstruct_speed.py                 # N = 3, 5 at 512^2 and 1024^2
    .venv/bin/python benchmarks/reconstruct_speed.py --sizes 256 --images 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from phasepipe import optimise, parameters, simulate
from phasepipe.model import ForwardModel

DEFOCUS = {3: (-1.6e6, 0.0, 1.6e6), 5: (-1.6e6, -0.8e6, 0.0, 0.8e6, 1.6e6)}


def problem(size: int, n_images: int, device: str = "cpu"):
    """Model, parameters and data of a simulated series, as :func:`reconstruct.reconstruct` sets them up."""
    spec = simulate.SeriesSpec("bench", "vortex", size_px=size, defocus_nominal_nm=DEFOCUS[n_images], drift_px=0.0)
    images, _ = simulate.simulate_series(spec)
    nominal = np.array(spec.defocus_nominal_nm)
    data = images / images.mean(axis=(1, 2), keepdims=True)
    microscope = parameters.Microscope()
    params = parameters.Parameters(np.zeros((size, size)), np.ones((size, size)), nominal, microscope, n_images // 2)
    model = ForwardModel((size, size), spec.pixel_size_nm, microscope, device)
    return model, params.to(device), torch.as_tensor(data, dtype=torch.float32, device=device)


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously to the host)."""
    if device == "cuda":
        torch.cuda.synchronize()


def clocks() -> np.ndarray:
    """Wall time and this thread's CPU time (which leaves out other processes' turns), in s."""
    return np.array([time.perf_counter(), time.thread_time()])


def first_report(device: str) -> int:
    """The iteration whose report starts the clock: a GPU's reports come in bursts of
    ``optimise.READ_BACK``, read back together at the burst's end."""
    return optimise.READ_BACK if device == "cuda" else 1


def iteration_time(model, params, data, iterations: int) -> np.ndarray:
    """Seconds per iteration of ``fit`` with defocus refined from the first iteration on (wall, CPU).

    Timed between the fit's own per-iteration reports (its ``progress``), not around the call: a
    fit's set-up and its last step (undoing 2 pi slips of the phase it returns, about 100 ms at
    512^2 once the phase has steps steeper than pi) happen once per fit, not per iteration, and
    would otherwise be charged to the few iterations timed here. The clock starts at
    :func:`first_report`.
    """
    options = parameters.default_options()
    options["defocus_scale"] = parameters.ParameterOptions(lr=1e-3, start=0)
    device = data.device.type
    settings = optimise.Settings(
        refine=("defocus",),
        max_iterations=iterations,
        converge=False,
        options=options,
        continuation_step=0,
        device=device,
    )
    stamps = {}
    optimise.fit(model, params, data, settings, tv_weight=1e-4, progress=lambda k, _: stamps.setdefault(k, clocks()))
    first = first_report(device)
    return (stamps[iterations] - stamps[first]) / (iterations - first)


def fft_time(size: int, count: int, repeat: int, device: str = "cpu") -> np.ndarray:
    """Seconds for ``count`` complex64 FFTs of one image, half forward and half inverse (wall,
    CPU): the mean over ``repeat`` times ``count`` of them, so that they are timed over as long
    as the iterations they are compared with."""
    field = torch.randn(size, size, dtype=torch.complex64, device=device)
    synchronize(device)
    t0 = clocks()
    for k in range(count * repeat):
        (torch.fft.ifft2 if k % 2 else torch.fft.fft2)(field)
    synchronize(device)
    return (clocks() - t0) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--images", type=int, nargs="+", default=[3, 5], choices=sorted(DEFOCUS))
    # Short of the fit's first look for 2 pi slips (at optimise.UNWRAP_EVERY): in a long fit such
    # looks become rarer and rarer, and timings of a few iterations should not hold one.
    parser.add_argument(
        "--iterations",
        type=int,
        default=optimise.UNWRAP_EVERY - 1,
        help=f"iterations per fit timed (more than {optimise.READ_BACK} on cuda)",
    )
    parser.add_argument("--repeat", type=int, default=7, help="pairs of timings (iterations, FFTs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    first = first_report(args.device)
    if args.iterations <= first:
        parser.error(f"--iterations must be more than {first} on {args.device}: the clock starts at iteration {first}")
    torch.set_num_threads(args.threads)

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.threads} thread(s)"
    print(f"torch {torch.__version__}, {args.device}: {where}; refine: defocus; wall time (CPU time of this thread)")
    print("size   N  iteration (ms)          2N+2 FFTs (ms)         ratio (target <= 2.0)")
    for size in args.sizes:
        for n_images in args.images:
            model, params, data = problem(size, n_images, args.device)
            iteration_time(model, params, data, 3)  # warm-up
            fft_time(size, 4, 1, args.device)
            per_it, ffts = [], []
            for _ in range(args.repeat):
                per_it.append(iteration_time(model, params, data, args.iterations))
                ffts.append(fft_time(size, 2 * n_images + 2, args.iterations, args.device))
            it, ff = np.median(per_it, axis=0), np.median(ffts, axis=0)
            # The ratio of each pair of neighbouring timings, then their median: a shared machine's
            # speed drifts between pairs more than within one.
            ratio = np.median(np.array(per_it) / np.array(ffts), axis=0)
            times = f"{1e3 * it[0]:8.1f} ({1e3 * it[1]:8.1f})  {1e3 * ff[0]:8.1f} ({1e3 * ff[1]:8.1f})"
            print(f"{size:5d}  {n_images}  {times}  {ratio[0]:6.2f} ({ratio[1]:.2f})", flush=True)


if __name__ == "__main__":
    main()

"""Registration of an image pair against the cost of the FFTs it needs.

The project's target: "Registering a pair of 4096 x 4096 images takes no more than 5 times the
time of the FFTs it needs".

What is measured, in one run on this machine:

* a pair of float32 images: a smooth random texture, and the same texture with its contrast
  inverted, moved by a fractional drift of several px and given 5 % noise (what an under- and an
  overfocus image of a phase object look like to the registration);
* :func:`phasepipe.align.register_pair` on them: one real FFT of the reference, then for every
  iteration one of the moving image and one inverse for the correlation surface, plus a forward and
  an inverse FFT to shift the moving image back before every refinement: ``4 * iterations - 1``
  FFTs of the full field;
* the same number of ``scipy.fft.rfft2`` / ``irfft2`` calls of that size and dtype, with the
  workers setting the registration uses, as the baseline.

After a warm-up, the two are run alternately ``--repeat`` times and the medians compared.

Run from the repository root::

    .venv/bin/python benchmarks/align_speed.py            # 4096 x 4096, 3 repeats
    .venv/bin/python benchmarks/align_speed.py --size 2048 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy import fft

from phasepipe import align, registration, simulate


def make_pair(size: int, shift_px: tuple[float, float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A texture and its contrast-inverted, drifted, noisy twin (float32)."""
    rng = np.random.default_rng(seed)
    texture = simulate.smooth_noise(size, 3.0, rng).astype(np.float32)
    reference = 1 + 0.1 * texture
    moving = registration.shift_image(1 - 0.1 * texture, -np.asarray(shift_px))
    noise = 0.05 * rng.standard_normal((2, size, size)).astype(np.float32)
    return reference * (1 + noise[0]), moving * (1 + noise[1])


def fft_time(size: int, count: int) -> float:
    """Seconds for ``count`` full-field FFTs, half forward (rfft2) and half inverse (irfft2)."""
    image = np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)
    spectrum = fft.rfft2(image, workers=-1)
    t0 = time.perf_counter()
    for k in range(count):
        if k % 2:
            fft.irfft2(spectrum, s=image.shape, workers=-1)
        else:
            fft.rfft2(image, workers=-1)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="image edge in px")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions of each side")
    args = parser.parse_args()

    shift = (5.37, -3.81)
    reference, moving = make_pair(args.size, shift)
    align.register_pair(reference[:256, :256], moving[:256, :256])  # warm-up
    fft_time(args.size, 2)

    registration_s, baseline_s = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        reg = align.register_pair(reference, moving)
        registration_s.append(time.perf_counter() - t0)
        baseline_s.append(fft_time(args.size, 4 * reg.iterations - 1))

    reg_t, fft_t = statistics.median(registration_s), statistics.median(baseline_s)
    error = np.abs(reg.shift_px - np.array(shift)).max()
    print(f"pair of {args.size} x {args.size} float32 images, contrast inverted, drift {shift} px")
    print(
        f"registration: {reg_t:.3f} s ({reg.iterations} iterations, "
        f"error {error:.4f} px, confidence {reg.confidence:.2f})"
    )
    print(f"its {4 * reg.iterations - 1} FFTs alone: {fft_t:.3f} s")
    print(f"ratio registration / FFTs: {reg_t / fft_t:.2f}  (target <= 5)")


if __name__ == "__main__":
    main()

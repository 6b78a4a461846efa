"""One series' magnetic phase by its absorption (``separation: absorption``): the split's settings
chosen on a tuning family, judged on the held-out one.

Every case is a corpus case (phasepipe/corpus.py: a window of a larger field, drift, the nominal
defocus off by up to +-6 %), aligned and reconstructed as the workflow does, then split by
separation.absorption_split at every candidate setting: the low-pass before k is chosen (a
fraction of the series' resolved frequency; 0: none) and the absorption's denoising (times its
estimated noise). The families, both of one material:

* tuning: the project's own magnetic islands and films without their gold particles
  (``islands``, ``particles=False``); the defaults (separation.ABSORPTION_BAND,
  ABSORPTION_DENOISING) are the candidate with the highest median acc of phi_m here;
* held out: the patterned elements (``elements``), never used to choose.

Printed: per candidate and family, acc of phi_m (median, min) and plane-free (no series measures
a phase ramp, docs/physics.md), and the error of k; per case, the defaults' figures beside the
total phase taken as magnetic; the cases read.

Run from the repository root (cases in parallel, one per worker process)::

    .venv/bin/python benchmarks/absorption.py             # 16 cases per family, two seeds
    .venv/bin/python benchmarks/absorption.py --seeds 0   # 8 per family
    .venv/bin/python benchmarks/absorption.py --json absorption.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from phasepipe import corpus, separation  # noqa: E402

BANDS = (0.0, 1 / 2, 1 / 4, 1 / 6, 1 / 8)
DENOISINGS = (2.0, 4.0, 8.0)
CANDIDATES = tuple(itertools.product(BANDS, DENOISINGS))


def run_case(case: corpus.Case) -> dict:
    """One series through alignment and the engine, then split at every candidate."""
    import torch

    from phasepipe import align, metrics, optimise, parameters, reconstruct

    torch.set_num_threads(1)
    images, truth = corpus.simulate_case(case)
    nominal = truth["defocus_nominal_nm"].values
    aligned = align.apply_registration(images, align.series_registration(images, nominal))
    microscope = parameters.Microscope()
    result = reconstruct.reconstruct(aligned, nominal, corpus.PIXEL_NM, microscope, optimise.Settings())
    true_m = truth["phase_magnetic"].values
    true_absorption = -np.log(truth["amplitude"].values)
    true_e = truth["phase_electrostatic"].values
    # One material: phi_e = k (-ln a) exactly, with a uniform offset (vacuum at 0 in both).
    true_k = float(np.polyfit(true_absorption.ravel(), true_e.ravel(), 1)[0])
    resolved = separation.series_resolution(nominal, microscope.beam_divergence_mrad, corpus.PIXEL_NM)
    phase, amplitude = result.phase.astype(float), result.amplitude.astype(float)
    splits = []
    for band, denoising in CANDIDATES:
        sigma = separation.band_sigma_px(band, resolved, corpus.PIXEL_NM) if band else 0.0
        split = separation.absorption_split(phase, amplitude, sigma, denoising)
        splits.append(
            {
                "acc": metrics.phase_accuracy(split.magnetic, true_m),
                "acc_free": metrics.plane_free_accuracy(split.magnetic, true_m),
                "k_err": split.scale / true_k - 1,
            }
        )
    return {
        "case": case.name,
        "family": case.family,
        "splits": splits,
        "total_as_m": metrics.phase_accuracy(phase, true_m),
        "total_as_m_free": metrics.plane_free_accuracy(phase, true_m),
    }


def cases(seeds: tuple[int, ...]) -> list[corpus.Case]:
    grid = list(itertools.product(seeds, (3, 5), (0.8, 1.6), (0.05, 0.1)))
    tuning = [corpus.Case("islands", s, 256, n, d, noise, particles=False) for s, n, d, noise in grid]
    return tuning + [corpus.Case("elements", s, 256, n, d, noise) for s, n, d, noise in grid]


def label(candidate: tuple[float, float]) -> str:
    band, denoising = candidate
    return f"band {band:.3g}, denoising {denoising:g}" if band else f"no low-pass, denoising {denoising:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write every case's figures to this file")
    args = parser.parse_args()
    jobs = cases(tuple(args.seeds))
    print(f"{len(jobs)} cases: " + ", ".join(c.name for c in jobs), flush=True)
    t0 = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for row in pool.map(run_case, jobs):
            rows.append(row)
            print(f"{len(rows)}/{len(jobs)} {row['case']} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"candidates": CANDIDATES, "rows": rows}, indent=1))
    default = CANDIDATES.index((separation.ABSORPTION_BAND, separation.ABSORPTION_DENOISING))
    for family, role in (("islands", "tuning, no particles"), ("elements", "held out")):
        group = [r for r in rows if r["family"] == family]
        best = max(range(len(CANDIDATES)), key=lambda i: np.median([r["splits"][i]["acc"] for r in group]))
        print(f"\n{family} ({role}), {len(group)} cases: acc of phi_m by candidate")
        print("| candidate | acc (median, min) | plane-free (median, min) | k error (median, p90 of abs) |")
        print("| --- | --- | --- | --- |")
        for i, candidate in enumerate(CANDIDATES):
            acc = [r["splits"][i]["acc"] for r in group]
            free = [r["splits"][i]["acc_free"] for r in group]
            k_err = [r["splits"][i]["k_err"] for r in group]
            mark = " (default)" if i == default else (" (best)" if i == best else "")
            print(
                f"| {label(candidate)}{mark} | {np.median(acc):.4f}, {min(acc):.4f} | "
                f"{np.median(free):.4f}, {min(free):.4f} | "
                f"{100 * np.median(k_err):+.1f} %, {100 * np.percentile(np.abs(k_err), 90):.1f} % |"
            )
        total, total_free = (np.median([r[key] for r in group]) for key in ("total_as_m", "total_as_m_free"))
        print(f"total phase taken as magnetic: {total:.4f} (plane-free {total_free:.4f})")
        print(f"best: {label(CANDIDATES[best])}")
    print("\nPer case, the defaults (acc, plane-free, k error) and the total phase taken as magnetic:")
    print("| case | acc | plane-free | k error | total as magnetic |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        s = r["splits"][default]
        print(
            f"| {r['case']} | {s['acc']:.4f} | {s['acc_free']:.4f} | {100 * s['k_err']:+.1f} % "
            f"| {r['total_as_m']:.4f} |"
        )
    print(f"\nwall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

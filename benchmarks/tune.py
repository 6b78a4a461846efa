"""Choose the engine's defaults on the tuning families of the validation corpus, and only there.

Each candidate (a variation of :class:`phasepipe.optimise.Settings`) is run on every case of
the tuning families (phasepipe/corpus.py: the project's textures and islands, weak smooth
phase, scikit-image test images as phase), never on the held-out ones; printed: the cases read,
then per candidate the median and worst acc, the median and 90th-percentile calibration error,
how often twice the stated std covers it, and the median times of the fit and of its
uncertainty. The defaults (phasepipe/optimise.py, Settings) are the candidate this chose
(docs/physics.md, "Validation"); benchmarks/corpus.py then reports the held-out families.

Run from the repository root::

    .venv/bin/python benchmarks/tune.py                      # every candidate, seed 0 (about 30 min)
    .venv/bin/python benchmarks/tune.py --candidates tv-0.15-noise tv-0.15-noise-shifts --seeds 0 1
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from phasepipe import corpus, optimise  # noqa: E402

BASE = optimise.Settings()
# The defaults before this sweep: TV weight 0.5 noise^2, tolerance 2e-4, the calibration alone
# refined (their calibration stage is gone). The uncertainty is left out of these candidates.
OLD = replace(
    BASE,
    refine=("defocus",),
    tv_rule=(0.5, 2.0),
    tolerance=2e-4,
    subfield_uncertainty=False,
    bootstrap_replicates=0,
    drift_screen=False,
)
SWEEP = replace(OLD, tolerance=1e-3)
CANDIDATES = {
    "old-defaults": OLD,
    "tv-0.1-noise": replace(SWEEP, tv_rule=(0.1, 1.0)),
    "tv-0.2-noise": replace(SWEEP, tv_rule=(0.2, 1.0)),
    "tv-0.4-noise": replace(SWEEP, tv_rule=(0.4, 1.0)),
    "tv-0.15-noise": replace(SWEEP, tv_rule=(0.15, 1.0)),
    "tv-0.15-noise-periodic": replace(SWEEP, tv_rule=(0.15, 1.0), margin="none"),
    "tv-0.15-noise-shifts": replace(SWEEP, tv_rule=(0.15, 1.0), refine=("defocus", "shifts")),
    # Stopping, against the plain fit's time (issue 30: at most 1.5 times), without the
    # uncertainty: three halvings of the rates, or a coarser tolerance.
    "halvings-3": replace(BASE, subfield_uncertainty=False, bootstrap_replicates=0, rate_halvings=3),
    "tolerance-2e-3": replace(BASE, subfield_uncertainty=False, bootstrap_replicates=0, tolerance=2e-3),
    # The uncertainty: the sub-fields' spread alone; the calibration also corrected by its bias on
    # a series drawn from the fit (reconstruct.py), with and without the sub-fields.
    # The drift: registration's alternatives put to the forward model (drift_screen.py), or not;
    # maps and drift only, without the uncertainty.
    "drift-screen": replace(BASE, subfield_uncertainty=False, bootstrap_replicates=0),
    "no-drift-screen": replace(BASE, subfield_uncertainty=False, bootstrap_replicates=0, drift_screen=False),
    # The ramp reported (gauge.py): the flattest of the total phase, or of its part that follows
    # the absorption and of the rest apart; maps and drift only, without the uncertainty.
    "ramp-flattest": replace(BASE, subfield_uncertainty=False, bootstrap_replicates=0, ramp="flattest"),
    "ramp-apart": replace(BASE, subfield_uncertainty=False, bootstrap_replicates=0, ramp="apart"),
    "no-bootstrap": replace(BASE, bootstrap_replicates=0),
    "no-subfields": replace(BASE, subfield_uncertainty=False),
    # The calibration's bias corrected by one level of series drawn from the fit, or (the default)
    # two, the second drawn from the first's fits (bias.py).
    "bootstrap-1-level": replace(BASE, bootstrap_levels=1),
    "defaults": BASE,
}


def _run(job: tuple[str, corpus.Case]) -> tuple[str, dict]:
    import torch

    torch.set_num_threads(1)
    name, case = job
    return name, corpus.run_case(case, settings=CANDIDATES[name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    cases = corpus.cases(corpus.TUNING, args.sizes, args.seeds)
    print(f"tuning on {len(cases)} cases of the tuning families {', '.join(corpus.TUNING)} (none held out):")
    print("  " + ", ".join(case.name for case in cases), flush=True)
    start = time.perf_counter()
    jobs = [(name, case) for name in args.candidates for case in cases]
    results: dict[str, list[dict]] = {name: [] for name in args.candidates}
    with ProcessPoolExecutor(args.workers) as pool:
        for name, row in pool.map(_run, jobs):
            results[name].append(row)
            print(
                f"  {name} {row['case']}: acc {row['acc_ad']:.4f}, calibration {100 * row['cal_err_ad']:+.2f} %",
                flush=True,
            )
    print(f"\n{len(jobs)} fits in {time.perf_counter() - start:.0f} s\n")
    print(
        "| candidate | acc median | acc min | cal error median | cal error p90 | error <= 2 std "
        "| fit time median (s) | uncertainty time median (s) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    medians = {}
    for name, rows in results.items():
        acc = np.array([r["acc_ad"] for r in rows])
        err = np.abs([r["cal_err_ad"] for r in rows])
        std = np.array([r["cal_std_ad"] for r in rows])
        t = np.median([r["t_fit"] for r in rows])
        t_std = np.median([r["t_uncertainty"] for r in rows])
        medians[name] = np.median(acc)
        print(
            f"| {name} | {np.median(acc):.4f} | {acc.min():.4f} | {100 * np.median(err):.2f} % "
            f"| {100 * np.percentile(err, 90):.2f} % | {np.mean(err <= 2 * std):.0%} | {t:.0f} | {t_std:.0f} |"
        )
    print(f"\nhighest median acc: {max(medians, key=medians.get)}")


if __name__ == "__main__":
    main()

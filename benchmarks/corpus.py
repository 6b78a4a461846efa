"""The validation corpus: the engine against the plain reference fit and TIE, on specimens the
defaults were not tuned on (phasepipe/corpus.py; docs/physics.md, "Validation").

Every case is simulated (a window of a larger field, drift, the nominal defocus off by up to
+-6 %), aligned as the align stage does, then reconstructed by the engine (default settings),
by the plain reference fit (phasepipe/plain.py) and by TIE. Printed, per family and overall:

* acc of each against the truth (median, and the worst case), and how often AD beats TIE; and
  the plane-free acc (the plane that best fits the error taken out first: no series measures a
  phase ramp, docs/physics.md), which shows how much of what is lost is that ramp;
* the calibration's error |fitted / true - 1| (median and 90th percentile) of AD and plain;
* coverage of the stated uncertainty: the fraction of cases with |error| <= 2 std, and the
  median of |error| / std;
* the drift error (RMS over the images, px): the align stage's registration, then the drift the
  engine reports (the registration, the model's screen of it and what the fit refined);
* times: the engine's fit, the rest of its reconstruction (the uncertainty, and the drift screen
  where registration leaves alternatives), the plain fit, and the ratio of the fits' medians;
* what the images carry: acc of the best linear estimate from the same series were its images
  linear in the phase, knowing the truth's spectrum, the defocus and the drift
  (yardstick.linear_estimate; neither a bound nor a target, a yardstick of the noise and transfer),
  and the calibration's std their linear part carries with the specimen's spectra unknown
  (yardstick.calibration_information: three images at -d, 0, +d carry it only through absorption,
  Cs and non-linear contrast);
* per octave of spatial frequency: the median phase error relative to the truth's content in
  that octave, for AD, plain, TIE and the linear estimate, beside the transfer there (the best
  image's |sin chi| E, 0 to 1).

Cases run in parallel, one per worker process, one torch thread each. Run from the repository
root::

    .venv/bin/python benchmarks/corpus.py                          # held-out families, 256 px
    .venv/bin/python benchmarks/corpus.py --families islands weak images --seeds 0 1
    .venv/bin/python benchmarks/corpus.py --quick                  # a 4-case subset, a few minutes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from phasepipe import corpus, metrics  # noqa: E402


def _run(job: tuple[corpus.Case, int]) -> dict:
    import torch

    torch.set_num_threads(1)
    case, plain_iterations = job
    return corpus.run_case(case, plain_iterations=plain_iterations)


def quick_cases(size: int) -> list[corpus.Case]:
    """Two held-out families, three and five images, at 10 % and 5 % noise."""
    return [
        corpus.Case("litho", 0, size, 3, 1.6, 0.1),
        corpus.Case("litho", 0, size, 5, 1.6, 0.05),
        corpus.Case("elements", 0, size, 3, 1.6, 0.1),
        corpus.Case("elements", 0, size, 5, 0.8, 0.05),
    ]


def summary(rows: list[dict], label: str) -> dict:
    """The figures of one group of cases."""
    acc = {m: np.array([r[f"acc_{m}"] for r in rows if f"acc_{m}" in r]) for m in ("ad", "plain", "tie")}
    free = {m: [r[f"acc_free_{m}"] for r in rows if f"acc_free_{m}" in r] for m in ("ad", "plain", "tie")}
    err_ad = np.abs([r["cal_err_ad"] for r in rows])
    std = np.array([r["cal_std_ad"] for r in rows])
    ratio = np.divide(err_ad, std, out=np.full_like(err_ad, np.inf), where=std > 0)
    out = {
        "group": label,
        "cases": len(rows),
        "acc_ad_median": float(np.median(acc["ad"])),
        "acc_ad_min": float(acc["ad"].min()),
        "acc_tie_median": float(np.median(acc["tie"])),
        "acc_linear_median": float(np.median([r["acc_linear"] for r in rows])),
        "acc_free_linear_median": float(np.median([r["acc_free_linear"] for r in rows])),
        "ad_above_linear": int(np.sum(acc["ad"] > [r["acc_linear"] for r in rows])),
        "ad_above_tie": int(np.sum(acc["ad"] > acc["tie"])),
        "acc_free": " / ".join(f"{np.median(v):.4f}" for v in free.values() if v),
        "cal_err_ad_median": float(np.median(err_ad)),
        "cal_err_ad_p90": float(np.percentile(err_ad, 90)),
        "cal_std_linear_median": float(np.median([r["cal_std_linear"] for r in rows])),
        "coverage_2std": float(np.mean(ratio <= 2)),
        "err_over_std_median": float(np.median(ratio)),
        "registration_err_median_px": float(np.median([r["registration_err_px"] for r in rows])),
        "drift_err_median_px": float(np.median([r["drift_err_px"] for r in rows])),
        "t_fit_median": float(np.median([r["t_fit"] for r in rows])),
        "t_uncertainty_median": float(np.median([r["t_uncertainty"] for r in rows])),
    }
    if acc["plain"].size:
        err_plain = np.abs([r["cal_err_plain"] for r in rows])
        t_plain = float(np.median([r["t_plain"] for r in rows]))
        out.update(
            acc_plain_median=float(np.median(acc["plain"])),
            ad_vs_plain_min=float(np.min(acc["ad"] - acc["plain"])),
            cal_err_plain_p90=float(np.percentile(err_plain, 90)),
            t_plain_median=t_plain,
            time_ratio=out["t_fit_median"] / t_plain,
        )
    return out


def _percent(fraction: float) -> str:
    """A relative std in percent; "none" beyond 100 % (three images at -d, 0, +d of a phase object)."""
    return f"{100 * fraction:.2f} %" if fraction < 1 else "none"


def print_summaries(rows: list[dict]) -> None:
    groups = {"all": rows}
    for family in dict.fromkeys(r["family"] for r in rows):
        groups[family] = [r for r in rows if r["family"] == family]
    for n, noise in ((3, 0.1), (3, 0.05), (5, 0.1), (5, 0.05)):
        picked = [r for r in rows if r["n_images"] == n and r["noise"] == noise]
        if picked:
            groups[f"{n} images, {round(100 * noise)} %"] = picked
    has_plain = "acc_plain" in rows[0]
    head = "| group | cases | acc AD (median, min) | acc plain | acc TIE | AD > TIE | plane-free acc AD / plain / TIE"
    head += " | acc linear (plane-free), AD above it"
    head += " | cal error AD (median, p90) | cal std the linear images carry"
    head += " | cal error plain p90 | |err| <= 2 std | median |err|/std"
    head += " | drift error (px): registered, final | fit / unc. / plain (s) |"
    print(head)
    print("|" + " --- |" * head.count(" | ") + "")
    for label, picked in groups.items():
        s = summary(picked, label)
        plain_acc = f"{s['acc_plain_median']:.4f} ({s['ad_vs_plain_min']:+.4f})" if has_plain else "-"
        plain_err = f"{100 * s['cal_err_plain_p90']:.2f} %" if has_plain else "-"
        times = f"{s['t_fit_median']:.0f} / {s['t_uncertainty_median']:.0f} / " + (
            f"{s['t_plain_median']:.0f} ({s['time_ratio']:.2f}x)" if has_plain else "-"
        )
        print(
            f"| {label} | {s['cases']} | {s['acc_ad_median']:.4f}, {s['acc_ad_min']:.4f} | {plain_acc} "
            f"| {s['acc_tie_median']:.4f} | {s['ad_above_tie']}/{s['cases']} | {s['acc_free']} "
            f"| {s['acc_linear_median']:.4f} ({s['acc_free_linear_median']:.4f}), {s['ad_above_linear']}/{s['cases']} "
            f"| {100 * s['cal_err_ad_median']:.2f} %, {100 * s['cal_err_ad_p90']:.2f} % "
            f"| {_percent(s['cal_std_linear_median'])} | {plain_err} "
            f"| {100 * s['coverage_2std']:.0f} % | {s['err_over_std_median']:.2f} "
            f"| {s['registration_err_median_px']:.2f}, {s['drift_err_median_px']:.2f} "
            f"| {times} |"
        )
    print("\n(plain: median acc, and in brackets the engine's smallest margin over it; fit time median;")
    print("the calibration's std carried by the images' linear part, the specimen's spectra unknown: median)")


def print_bands(rows: list[dict]) -> None:
    bands = metrics.octave_bands((rows[0]["size_px"],) * 2, corpus.PIXEL_NM, corpus.OCTAVES)
    methods = [m for m in ("ad", "plain", "tie", "linear") if f"band_{m}" in rows[0]]
    print("\nPhase error per octave, relative to the truth's content there (median over cases; linear: the")
    print("best linear estimate, what the images carry), and the transfer there (best image's |sin chi| E):\n")
    print("| family | octave (cycles/nm) | " + " | ".join(f"error {m}" for m in methods) + " | transfer |")
    print("| --- | --- |" + " --- |" * (len(methods) + 1))
    for family in dict.fromkeys(r["family"] for r in rows):
        picked = [r for r in rows if r["family"] == family]
        for k, (low, high) in enumerate(bands):
            errors = [np.median([r[f"band_{m}"][k] for r in picked]) for m in methods]
            transfer = np.median([r["band_transfer"][k] for r in picked])
            cells = " | ".join(f"{e:.3f}" for e in errors)
            print(f"| {family} | {low:.4f}-{high:.4f} | {cells} | {transfer:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(corpus.HELD_OUT), choices=corpus.FAMILIES)
    parser.add_argument("--sizes", nargs="+", type=int, default=[256])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--quick", action="store_true", help="four held-out cases (for tests and a first look)")
    parser.add_argument("--plain-iterations", type=int, default=1000, help="0: no plain reference fit")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write every case's figures here")
    args = parser.parse_args()

    cases = quick_cases(args.sizes[0]) if args.quick else corpus.cases(args.families, args.sizes, args.seeds)
    print(f"corpus: {len(cases)} cases of {', '.join(dict.fromkeys(c.family for c in cases))}", flush=True)
    start = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for row in pool.map(_run, [(case, args.plain_iterations) for case in cases]):
            print(
                f"  {row['case']}: acc AD {row['acc_ad']:.4f}"
                + (f", plain {row['acc_plain']:.4f}" if "acc_plain" in row else "")
                + f", TIE {row['acc_tie']:.4f}; calibration {100 * row['cal_err_ad']:+.2f} % "
                f"(std {100 * row['cal_std_ad']:.2f} %, linear images {_percent(row['cal_std_linear'])}); "
                f"drift {row['registration_err_px']:.2f} px registered, "
                f"{row['drift_err_px']:.2f} px final; fit {row['t_fit']:.0f} s",
                flush=True,
            )
            rows.append(row)
    print(f"\n{len(rows)} cases in {time.perf_counter() - start:.0f} s\n")
    print_summaries(rows)
    print_bands(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

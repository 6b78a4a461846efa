"""How strong a prior each family of the validation corpus wants: the engine's acc at several
scales of the total-variation weight (``Settings.tv_rule``: the weight is scale x the measured
noise), on the tuning families and the held-out ones alike.

The default scale (0.15) was chosen on the tuning families alone (benchmarks/tune.py). This
measures what that choice costs a family it was not chosen on, and so whether a held-out family's
shortfall is information the images do not carry or a prior of the wrong strength for that kind
of specimen (docs/physics.md, "Validation"). Only acc is measured: the uncertainty (sub-fields,
bootstrap) is off; the drift screen is on, as by default. Nothing here chooses a default.

Run from the repository root::

    .venv/bin/python benchmarks/prior_strength.py                 # 10 % noise, +-0.8 mm (about 20 min)
    .venv/bin/python benchmarks/prior_strength.py --families litho --images 3 5 --seeds 0 1
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

from phasepipe import align, corpus, metrics, optimise, parameters, reconstruct  # noqa: E402

DEFAULT_SCALE = optimise.Settings().tv_rule[0]


def _run(job: tuple[corpus.Case, float]) -> tuple[corpus.Case, float, float, float, float]:
    """(case, scale, acc, plane-free acc, final misfit / noise^2) of the engine at TV scale
    ``scale``, the series aligned as the workflow does."""
    import torch

    torch.set_num_threads(1)
    case, scale = job
    images, truth = corpus.simulate_case(case)
    nominal = np.asarray(case.acquisition().defocus_nominal_nm)
    aligned = align.apply_registration(images, align.series_registration(images, nominal))
    settings = replace(
        optimise.Settings(),
        tv_rule=(scale, optimise.Settings().tv_rule[1]),
        subfield_uncertainty=False,
        bootstrap_replicates=0,
    )
    result = reconstruct.reconstruct(aligned, nominal, corpus.PIXEL_NM, parameters.Microscope(), settings)
    true_phase = truth["phase"].values
    return (
        case,
        scale,
        metrics.phase_accuracy(result.phase, true_phase),
        metrics.plane_free_accuracy(result.phase, true_phase),
        result.loss / result.noise**2,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(corpus.FAMILIES), choices=list(corpus.FAMILIES))
    parser.add_argument("--scales", nargs="+", type=float, default=[0.1, DEFAULT_SCALE, 0.25, 0.4, 0.6])
    parser.add_argument("--images", nargs="+", type=int, default=[3, 5], choices=[3, 5])
    parser.add_argument("--defocus", nargs="+", type=float, default=[0.8], choices=[0.8, 1.6])
    parser.add_argument("--noise", nargs="+", type=float, default=[0.1], choices=[0.05, 0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    cases = [
        case
        for case in corpus.cases(args.families, (256,), args.seeds)
        if case.n_images in args.images and case.defocus_mm in args.defocus and case.noise in args.noise
    ]
    print(f"{len(cases)} cases x {len(args.scales)} TV scales (default {DEFAULT_SCALE}):", flush=True)
    start = time.perf_counter()
    acc: dict[tuple[str, float], list[float]] = {}
    free: dict[tuple[str, float], list[float]] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for case, scale, a, f, misfit in pool.map(_run, [(case, scale) for case in cases for scale in args.scales]):
            print(
                f"  {case.name} scale {scale:.2f}: acc {a:.4f}, plane-free {f:.4f}, misfit {misfit:.3f} noise^2",
                flush=True,
            )
            acc.setdefault((case.family, scale), []).append(a)
            free.setdefault((case.family, scale), []).append(f)
    print(f"\n{len(cases) * len(args.scales)} fits in {time.perf_counter() - start:.0f} s\n")
    print("Median acc (plane-free) per family and TV scale; * the family's best:\n")
    print("| family | set | " + " | ".join(f"{s:g}" for s in args.scales) + " |")
    print("| --- | --- |" + " --- |" * len(args.scales))
    for family in args.families:
        medians = [float(np.median(acc[family, s])) for s in args.scales]
        best = int(np.argmax(medians))
        cells = [
            f"{m:.4f}{'*' if k == best else ''} ({np.median(free[family, s]):.4f})"
            for k, (m, s) in enumerate(zip(medians, args.scales, strict=True))
        ]
        role = "tuning" if family in corpus.TUNING else "held out"
        print(f"| {family} | {role} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

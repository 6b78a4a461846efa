"""Magnetic and electrostatic phase apart: the joint fit of flip and reference pairs against a
PyLorentz-style TIE separation, on the held-out patterned elements (phasepipe/corpus.py), and a
single series split by its absorption (``separation: absorption``).

Every case is a corpus case (a window of a larger field, drift, nominal defocus off by up to
+-6 %) and its partner of the same field (phasepipe/corpus.py: simulate_pair): turned over and
mirrored (``flip``) or without its magnetic contrast (``reference``), rotated by up to 5 degrees,
shifted by up to 6 px, with its own calibration, drift and noise. Both series are aligned and
reconstructed alone as the workflow does, registered, then fitted jointly (phasepipe/joint.py).
TIE separates the same aligned images, the partner's brought into the anchor's frame by the
same registration (phasepipe/tie.py: separation). Printed per case and per acquisition:

* acc of phi_m and phi_e (the anchor's, against the truth; acc as docs/physics.md defines it,
  and plane-free: no series measures the phase's ramp), joint fit and TIE;
* the induction direction's median angular error inside the magnetic material (where the true
  |B t| exceeds a quarter of its 99th percentile), joint fit and TIE, and the induction's acc (its
  components' correlation with the truth's over the interior);
* the same two for the joint fit's phi_m low-passed at other fractions of the series' resolved
  frequency before the derivative (separation.INDUCTION_BAND is the default; it was chosen with
  ``--family islands``, a tuning family);
* the calibration error of both series after the joint fit;
* the absorption split of the anchor's own reconstruction (acc of phi_m) against the total
  phase taken as magnetic;
* times: the two series' own fits and the joint fit.

Run from the repository root (cases in parallel, one per worker process)::

    .venv/bin/python benchmarks/separation.py                   # 12 cases, held out
    .venv/bin/python benchmarks/separation.py --quick           # 2 cases
    .venv/bin/python benchmarks/separation.py --family islands  # the tuning family's pairs
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from phasepipe import corpus, separation  # noqa: E402

BANDS = (1, 1 / 2, 1 / 4, 1 / 6, 1 / 8, 1 / 12)  # fractions of the resolved frequency scanned


def run_pair(job: tuple[corpus.Case, str]) -> dict:
    """One case and its partner through the own fits, the registration, the joint fit and TIE."""
    import torch

    from phasepipe import align, frames, joint, metrics, optimise, parameters, reconstruct, tie

    torch.set_num_threads(1)
    case, relation = job
    (images_a, truth_a), (images_b, truth_b), true_similarity = corpus.simulate_pair(case, relation)
    microscope = parameters.Microscope()
    settings = optimise.Settings()
    roles = ("magnetic", "flip") if relation == "flip" else ("magnetic", "reference")
    members, starts, truths, own = [], [], [], 0.0
    for name, images, truth, role in (("a", images_a, truth_a, roles[0]), ("b", images_b, truth_b, roles[1])):
        nominal = truth["defocus_nominal_nm"].values
        aligned = align.apply_registration(images, align.series_registration(images, nominal))
        result = reconstruct.reconstruct(aligned, nominal, corpus.PIXEL_NM, microscope, settings)
        own += result.seconds
        defocused = nominal != 0
        calibration = float(np.mean(result.values["defocus_nm"][defocused] / nominal[defocused]))
        members.append(joint.Member(name, aligned, nominal, microscope, role))
        starts.append(
            {
                "phase": result.phase.astype(float),
                "amplitude": result.amplitude.astype(float),
                "calibration": calibration,
                "shifts_px": result.values["shifts_px"],
                "tv_weight": result.tv_weight,
            }
        )
        truths.append(truth)
    if relation == "reference":  # the reference is the anchor
        members, starts, truths = members[::-1], starts[::-1], truths[::-1]
    magnetic_index = 1 if relation == "reference" else 0
    try:
        similarities = joint.register_members(members, starts)
    except joint.RegistrationError as exc:
        return {
            "case": case.name,
            "relation": relation,
            "n_images": case.n_images,
            "noise": case.noise,
            "error": str(exc),
        }
    separated = joint.separate(members, starts, similarities, corpus.PIXEL_NM, settings, starts[0]["tv_weight"])
    truth = truths[magnetic_index]
    result = separated[magnetic_index]
    true_m, true_e = truth["phase_magnetic"].values, truth["phase_electrostatic"].values
    true_b = (truth["induction_x_tnm"].values, truth["induction_y_tnm"].values)
    magnitude = np.hypot(*true_b)
    inside = magnitude > 0.25 * np.percentile(magnitude, 99)

    resolved = separation.series_resolution(
        members[magnetic_index].defocus_nominal_nm, microscope.beam_divergence_mrad, corpus.PIXEL_NM
    )

    def induction(phase_m, band=separation.INDUCTION_BAND) -> tuple[float, float]:
        """(median angle in degrees inside the material, acc) of the induction from ``phase_m``."""
        maps = separation.induction_maps(phase_m, corpus.PIXEL_NM, resolved, band)
        b = (maps["induction_x_tnm"], maps["induction_y_tnm"])
        return separation.angular_error_deg(*b, *true_b, inside), separation.induction_accuracy(*b, *true_b)

    # TIE on the same aligned images, the partner's in the anchor's frame, then in the magnetic series' frame.
    partner = members[1]
    moved = np.stack([frames.to_anchor(im, similarities[1]) for im in partner.images])
    moved = np.where(np.isfinite(moved), moved, np.nanmean(moved, axis=(1, 2), keepdims=True))
    series = [(members[0].images, members[0].defocus_nominal_nm), (moved, partner.defocus_nominal_nm)]
    if relation == "reference":  # tie.separation takes the magnetic series first
        series = series[::-1]
    tie_e, tie_m = tie.separation(*series, relation, corpus.PIXEL_NM, 200e3)
    if relation == "reference":
        tie_e, tie_m = (frames.to_partner(m, similarities[1]) for m in (tie_e, tie_m))
    alone = separation.absorption_split(
        starts[magnetic_index]["phase"],
        starts[magnetic_index]["amplitude"],
        separation.band_sigma_px(separation.ABSORPTION_BAND, resolved, corpus.PIXEL_NM),
    )
    joint_induction, tie_induction = induction(result.phase_magnetic), induction(tie_m)
    scan = [induction(result.phase_magnetic, band) for band in BANDS]
    calibration_errors = []
    for member, sep, tr in zip(members, separated, truths, strict=True):
        defocused = member.defocus_nominal_nm != 0
        fitted = np.mean(sep.values["defocus_nm"][defocused] / member.defocus_nominal_nm[defocused])
        true = np.mean(tr["defocus_nm"].values[defocused] / member.defocus_nominal_nm[defocused])
        calibration_errors.append(abs(fitted / true - 1))
    return {
        "case": case.name,
        "relation": relation,
        "n_images": case.n_images,
        "noise": case.noise,
        "acc_m": metrics.phase_accuracy(result.phase_magnetic, true_m),
        "acc_m_free": metrics.plane_free_accuracy(result.phase_magnetic, true_m),
        "acc_e": metrics.phase_accuracy(result.phase_electrostatic, true_e),
        "tie_acc_m": metrics.phase_accuracy(tie_m, true_m),
        "tie_acc_m_free": metrics.plane_free_accuracy(tie_m, true_m),
        "tie_acc_e": metrics.phase_accuracy(tie_e, true_e),
        "angle_deg": joint_induction[0],
        "tie_angle_deg": tie_induction[0],
        "b_acc": joint_induction[1],
        "tie_b_acc": tie_induction[1],
        "band_angle_deg": [angle for angle, _ in scan],
        "band_b_acc": [acc for _, acc in scan],
        "cal_err": max(calibration_errors),
        "absorption_acc_m": metrics.phase_accuracy(alone.magnetic, true_m),
        "total_as_m_acc": metrics.phase_accuracy(starts[magnetic_index]["phase"], true_m),
        "t_own": own,
        "t_joint": result.seconds,
        "registration_error_deg": abs(similarities[1].angle_deg - true_similarity.angle_deg),
    }


def cases(quick: bool, family: str) -> list[tuple[corpus.Case, str]]:
    grid = [(5, 0.05), (5, 0.1), (3, 0.1)] if not quick else [(5, 0.05)]
    seeds = (0, 1) if not quick else (0,)
    return [
        (corpus.Case(family, seed, 256, n, 1.6, noise), relation)
        for relation in ("flip", "reference")
        for n, noise in grid
        for seed in seeds
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two cases (one flip, one reference pair)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--family",
        default="elements",
        choices=("elements", "islands"),
        help="elements: held out (the default); islands: the tuning family's magnetic textures",
    )
    args = parser.parse_args()
    jobs = cases(args.quick, args.family)
    print(f"{len(jobs)} pairs of family {args.family!r}, 256 px, +-1.6 mm", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(run_pair, jobs))
    for row in rows:
        if "error" in row:
            print(f"{row['case']} {row['relation']}: not separated: {row['error']}")
    rows = [row for row in rows if "error" not in row]
    columns = (
        "acc_m",
        "acc_m_free",
        "acc_e",
        "tie_acc_m",
        "tie_acc_m_free",
        "tie_acc_e",
        "angle_deg",
        "tie_angle_deg",
        "b_acc",
        "tie_b_acc",
        "cal_err",
        "absorption_acc_m",
        "total_as_m_acc",
        "t_own",
        "t_joint",
    )
    print("| case | relation | " + " | ".join(columns) + " |")
    print("|" + " --- |" * (len(columns) + 2))
    for row in rows:
        print(f"| {row['case']} | {row['relation']} | " + " | ".join(f"{row[c]:.4g}" for c in columns) + " |")
    print("\nBy relation and acquisition (median; min of acc):")
    for relation in ("flip", "reference"):
        for n, noise in sorted({(r["n_images"], r["noise"]) for r in rows}):
            group = [r for r in rows if r["relation"] == relation and r["n_images"] == n and r["noise"] == noise]
            if not group:
                continue

            def med(key, group=group):
                return np.median([r[key] for r in group])

            print(
                f"{relation:9s} {n} images {round(100 * noise)} %: acc phi_m {med('acc_m'):.4f} "
                f"(min {min(r['acc_m'] for r in group):.4f}, plane-free {med('acc_m_free'):.4f}), "
                f"acc phi_e {med('acc_e'):.4f} (min {min(r['acc_e'] for r in group):.4f}); "
                f"TIE {med('tie_acc_m'):.4f} / {med('tie_acc_e'):.4f}; induction angle {med('angle_deg'):.1f} deg "
                f"(TIE {med('tie_angle_deg'):.1f}), induction acc {med('b_acc'):.4f} (TIE {med('tie_b_acc'):.4f}); "
                f"calibration error {100 * med('cal_err'):.2f} %; "
                f"absorption split {med('absorption_acc_m'):.3f} (total as magnetic {med('total_as_m_acc'):.3f})"
            )
    print("\nThe joint fit's induction by the low-pass before the derivative (fraction of the resolved frequency;")
    print(f"default {separation.INDUCTION_BAND:.3g}), over all pairs:\n")
    print("| fraction | induction acc (median, min) | angle (median, max) |")
    print("| --- | --- | --- |")
    for k, band in enumerate(BANDS):
        acc = [r["band_b_acc"][k] for r in rows]
        angle = [r["band_angle_deg"][k] for r in rows]
        print(f"| {band:.3g} | {np.median(acc):.4f}, {min(acc):.4f} | {np.median(angle):.1f}, {max(angle):.1f} deg |")
    own, joint_fit = (np.median([r[key] for r in rows]) for key in ("t_own", "t_joint"))
    print(
        f"\nown fits {own:.1f} s, joint fit {joint_fit:.1f} s (medians per pair); wall {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()

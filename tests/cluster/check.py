"""Checks of `make test-cluster` (tests/cluster/run.sh) on the folder of its two runs.

1. Every job of the SLURM run went through SLURM: each SLURM job id the executor reported is one
   SLURM ran to COMPLETED (squeue --states=all, which keeps finished jobs for MinJobAge), and
   together they cover every rule of the demo.
2. The SLURM run published the same release as the local run: the same release id (the same
   software, config and input checksums) and the same checksum for every output file, but for
   the reconstruction's wall time, which the series' store attributes and summary record.

3. Dask on SLURM: the tiled reconstruction with ``dask.scheduler: slurm`` ran its Dask workers as
   SLURM jobs of the series' name, all ended, more of them run than may run at once (workers
   retired at their lifetime and fresh jobs took over); and it equals the same reconstruction on
   a LocalCluster: the same maps and parameters, bit for bit (the tiles are deterministic).

Usage: python tests/cluster/check.py RUN_FOLDER (with local/, slurm/, squeue.txt and dask/ in it).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from phasepipe.sheet import partner_groups, read_sheet

TIMED = "seconds"  # the one field that differs between two runs of the same release
DASK_JOBS = 2  # dask.slurm.jobs of the Dask run (run.sh): worker jobs at once


def fail(message: str) -> None:
    sys.exit(f"test-cluster: FAILED: {message}")


def slurm_jobs(run: Path) -> dict[str, str]:
    """The SLURM jobs of the SLURM run: id -> comment (the plugin writes rule and wildcards)."""
    log = (run / "slurm" / "snakemake.log").read_text()
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    if not submitted:
        fail("the SLURM run reported no SLURM job")
    known = {}
    for line in (run / "squeue.txt").read_text().splitlines():
        jobid, state, comment = line.split("|", 2)
        known[jobid] = (state, comment)
    jobs = {}
    for jobid in submitted:
        state, comment = known.get(jobid, ("unknown to SLURM", ""))
        if state != "COMPLETED":
            fail(f"SLURM job {jobid} ({comment}): {state}")
        jobs[jobid] = comment
    return jobs


def check_rules(jobs: dict[str, str], series: list[str], groups: list[str]) -> None:
    """One SLURM job per series for ingest + align (the profile's group) and for reconstruct,
    one per group of related series for separate, one each for aggregate and release."""
    comments = sorted(jobs.values())
    expected = sorted(
        ["rule_aggregate", "rule_release"]
        + ["rule_prepare_align_ingest"] * len(series)
        + [f"rule_reconstruct_wildcards_{s}" for s in series]
        + [f"rule_separate_wildcards_{group}" for group in groups]
    )
    if comments != expected:
        fail(f"SLURM ran {comments}, expected {expected}")


def release(results: Path) -> tuple[str, Path]:
    rid = (results / "releases" / "LATEST").read_text().strip()
    return rid, results / "releases" / rid


def untimed(name: str, path: Path) -> object:
    """An output file's content without the reconstruction's wall time."""
    if name.endswith("zarr.json"):
        meta = json.loads(path.read_text())
        meta.get("attributes", {}).pop(TIMED, None)
        return meta
    if name == "series_summary.csv":
        return pd.read_csv(path).drop(columns=TIMED).to_csv(index=False)
    return path.read_bytes()


def check_release(run: Path) -> tuple[str, int]:
    rid, local = release(run / "local" / "results")
    slurm_rid, slurm = release(run / "slurm" / "results")
    if slurm_rid != rid:
        fail(f"the SLURM run published release {slurm_rid}, the local run {rid}")
    outputs = {}
    for folder in (local, slurm):
        outputs[folder] = json.loads((folder / "manifest.json").read_text())["outputs"]
    if set(outputs[local]) != set(outputs[slurm]):
        fail(f"release {rid}: the runs' files differ: {sorted(set(outputs[local]) ^ set(outputs[slurm]))}")
    for name, digest in outputs[local].items():
        if digest != outputs[slurm][name] and untimed(name, local / name) != untimed(name, slurm / name):
            fail(f"release {rid}: {name} differs between the local and the SLURM run")
    return rid, len(outputs[local])


def check_dask(run: Path) -> str:
    """The worker jobs of the Dask-on-SLURM run, and its result against the LocalCluster's."""
    jobs = [line.split("|") for line in (run / "dask" / "squeue.txt").read_text().splitlines()]
    if len(jobs) <= DASK_JOBS:
        fail(f"dask.scheduler slurm: {len(jobs)} worker job(s) in SLURM, expected more than {DASK_JOBS} (renewals)")
    unfinished = [f"{jobid} {state}" for jobid, _, state, _ in jobs if state not in ("COMPLETED", "CANCELLED")]
    if unfinished:
        fail(f"dask.scheduler slurm: worker jobs not ended cleanly: {unfinished}")
    # More jobs ran than may run at once: workers left mid-run (retired at their lifetime; SLURM
    # records such a job COMPLETED or, when the cluster cancels it first, CANCELLED) and fresh
    # jobs took over.
    ran = [jobid for jobid, _, _, used in jobs if used not in ("0:00", "")]
    if len(ran) <= DASK_JOBS:
        fail(f"dask.scheduler slurm: only {len(ran)} worker job(s) ran, expected more than {DASK_JOBS}")
    local, slurm = (xr.open_zarr(run / "dask" / f"{name}.zarr", consolidated=False) for name in ("local", "slurm"))
    if local.attrs.get("tiles", 1) < 2:
        fail("the Dask run's series was not tiled")
    for name in local.data_vars:
        if not np.array_equal(local[name].values, slurm[name].values, equal_nan=True):
            fail(f"dask.scheduler slurm: {name} differs from the LocalCluster's")
    return (
        f"{len(jobs)} Dask worker jobs {jobs[0][1]} in SLURM ({len(ran)} ran, at most {DASK_JOBS} at once), "
        f"{local.attrs['tiles']} tiles equal to the LocalCluster's ({len(local.data_vars)} variables)"
    )


def main(run: Path) -> None:
    jobs = slurm_jobs(run)
    sheet = run / "campaign" / "raw" / "series.tsv"
    series = sorted(pd.read_csv(sheet, sep="\t")["series"])
    groups, _ = partner_groups(read_sheet(sheet))
    check_rules(jobs, series, [group.id for group in groups])
    rid, n_files = check_release(run)
    print(
        f"test-cluster: {len(jobs)} SLURM jobs COMPLETED (SLURM ids {min(jobs, key=int)}-{max(jobs, key=int)}) "
        f"for {len(series)} series; release {rid} of the SLURM run equals the local run's "
        f"({n_files} files, equal but for the reconstruction's wall time)"
    )
    print(f"test-cluster: {check_dask(run)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

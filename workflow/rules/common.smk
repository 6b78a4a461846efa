import functools
import json
import math
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from phasepipe import imagefiles, io, joint, optimise, sheet, simulate, status

# The phasepipe of the Python that runs Snakemake, whatever PATH holds (a clean shell, cron, a
# SLURM job); SLURM jobs run Snakemake with that same Python.
PHASEPIPE = f"{shlex.quote(sys.executable)} -m phasepipe"
RESULTS = Path(PATHS["results_dir"])
WORK = RESULTS / "work"
LOGS = RESULTS / "logs"
DEMO = PATHS["series_sheet"] == "demo"
SHEET = str(WORK / "demo" / "series.tsv") if DEMO else PATHS["series_sheet"]

if DEMO:
    SERIES = list(simulate.DEMO_SERIES)
    ROWS = {}
    GROUPS, PARTNER_WARNINGS = list(simulate.DEMO_GROUPS), {}
else:
    try:
        ROWS = {row.series: row for row in sheet.read_sheet(SHEET, config["microscope"])}
    except FileNotFoundError:
        raise WorkflowError(f"series sheet {SHEET} does not exist (series_sheet in the config)") from None
    except (OSError, imagefiles.InputError) as exc:
        raise WorkflowError(str(exc)) from None
    SERIES = list(ROWS)
    for row in ROWS.values():
        if row.problem:  # the series fails at ingestion, before any of its work; the others run
            logger.warning(f"{row.problem} (this series will fail; the others run)")
    # Related series (flip pairs, references) are fitted jointly (separate.smk); a series whose
    # partner relation cannot be used is reconstructed alone, with the reason in its quality.
    GROUPS, PARTNER_WARNINGS = sheet.partner_groups(list(ROWS.values()))
    for warning in PARTNER_WARNINGS.values():
        logger.warning(warning)

RELEASE_RECORD = str(WORK / "release.json")
GROUP_BY_ID = {group.id: group for group in GROUPS}
GROUP_OF = {series: group for group in GROUPS for series in group.members}

wildcard_constraints:
    series="|".join(SERIES) or "NO_SERIES",
    group="|".join(re.escape(g) for g in GROUP_BY_ID) or "NO_GROUP",


def as_json(value) -> str:
    """A config section as canonical JSON: a rule parameter whose change re-runs the rule."""
    return json.dumps(value, sort_keys=True)


@functools.cache
def existing_files(series: str) -> tuple[str, ...]:
    """A series' image files that exist (looked up once per series, as several rules ask)."""
    if DEMO:
        return ()
    try:
        return tuple(str(p) for p in ROWS[series].paths() if p.is_file())
    except imagefiles.InputError:
        return ()


def series_files(wildcards) -> list[str]:
    """A series' existing image files, so that edits to them re-run its ingestion.

    Missing files are not declared: ingestion reports them as that series' failure instead of
    Snakemake refusing the whole campaign.
    """
    return list(existing_files(wildcards.series))


def ingest_inputs(wildcards) -> dict:
    """The demo's generated sheet (so that it is made first), or a series' image files.

    A real sheet is not an input: appending rows to it must not re-run the series already
    ingested. Each series depends on its own row instead, through :func:`sheet_row`.
    """
    return {"sheet": SHEET} if DEMO else {"files": series_files(wildcards)}


def sheet_row(wildcards) -> str:
    """A series' row of the sheet as canonical JSON: editing the row re-runs that series."""
    if DEMO:
        return ""
    row = ROWS[wildcards.series]
    # partner and relation concern the joint fit of related series, not this series' ingestion.
    ignored = ("sheet_dir", "problem", "partner", "relation")
    return as_json({k: v for k, v in vars(row).items() if k not in ignored})


def store(stage: str, series: str = "{series}") -> str:
    return str(WORK / stage / f"{series}.zarr")


def final_store(series: str) -> str:
    """A series' store as released: its group's joint fit's where it has one, else its own."""
    if series in GROUP_OF:
        return str(WORK / "separated" / GROUP_OF[series].id / f"{series}.zarr")
    return store("reconstructed", series)


def final_outputs() -> list[str]:
    """What the released stores come from: every group's folder and the other series' stores."""
    groups = sorted({str(WORK / "separated" / g.id) for g in GROUPS})
    return groups + [store("reconstructed", s) for s in SERIES if s not in GROUP_OF]


# Job sizes, for cluster schedulers (workflow/profiles/slurm). A per-series job asks for a fixed
# part plus a multiple of its series' size, times the attempt: a job killed for memory or walltime
# is retried (the profile's `retries`) with twice, then three times as much. Memory: a line through
# the peak RSS measured on 1024^2 and 2048^2 x 3 float32 series (12.6 and 50.3 MB), its slope and
# fixed part each rounded up by a quarter or more (docs/architecture.md); runtimes: twice the measured.
MEM_MB = {  # stage: (fixed MB, MB per MB of series)
    "ingest": (500, 3),
    "align": (500, 6),
}  # reconstruct: per tile, from the aligned store (reconstruct.smk)
# Reconstruction time on one thread: set-up, TIE start and uncertainties (1.6 s per MB measured),
# then each iteration (20 ms per MB: benchmarks/reconstruct_speed.py at 1024^2 x 5), at most the cap.
RECONSTRUCT_S_PER_MB = 2.0
ITERATION_S_PER_MB = 0.02
MAX_ITERATIONS = (
    optimise.Settings.max_iterations
    if config["reconstruction"]["iterations"] == "auto"
    else int(config["reconstruction"]["iterations"])
)


def series_mb(series: str) -> float:
    """The series' image files in MB, from the file system's sizes only: nothing is read while
    the DAG is built. 0 for the demo, whose files are simulated by a job of the run."""
    return sum(os.path.getsize(f) for f in existing_files(series)) / 1e6


def mem_mb(stage: str):
    """A rule's `mem_mb`: the stage's fixed part plus its multiple of the series' size, times the attempt."""
    fixed, per_mb = MEM_MB[stage]
    return lambda wildcards, attempt: attempt * math.ceil(fixed + per_mb * series_mb(wildcards.series))


def reconstruct_runtime(wildcards, threads, attempt) -> int:
    """Walltime (minutes) of a reconstruction: linear in the series' size and the iteration cap,
    divided among the job's threads (one tile per thread once reconstruction is tiled)."""
    seconds = (RECONSTRUCT_S_PER_MB + MAX_ITERATIONS * ITERATION_S_PER_MB) * series_mb(wildcards.series)
    return attempt * (10 + math.ceil(2 * seconds / threads / 60))


def campaign_runtime(wildcards, attempt) -> int:
    """Walltime (minutes) of aggregate and release, which read (and checksum) every series:
    a minute per GB of the campaign's image files, not measured at scale yet."""
    return attempt * (10 + math.ceil(sum(series_mb(s) for s in SERIES) / 1000))


GPUS = 1 if config["reconstruction"]["device"] == "cuda" else 0


def report_run(failed_jobs: bool) -> None:
    """At the end of a run: the table of every series (status, quality, reason), and with
    ``strict: true`` a non-zero exit once the release is published if any series failed."""
    table = status.campaign_table(RESULTS, SERIES)
    width = shutil.get_terminal_size().columns if sys.stderr.isatty() else None
    print(f"\nphasepipe: {status.counts_line(table)}\n{status.format_table(table, width)}\n", file=sys.stderr)
    if failed_jobs:
        print(f"phasepipe: some jobs failed; their logs are under {LOGS}/", file=sys.stderr)
    elif config["strict"] and (table["status"] != "ok").any():
        failed = ", ".join(table.loc[table["status"] != "ok", "series"])
        raise WorkflowError(f"strict: the release is published, but series failed: {failed}")

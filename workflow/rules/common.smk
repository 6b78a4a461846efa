import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from phasepipe import io, simulate

RESULTS = Path(config["results_dir"])
WORK = RESULTS / "work"
LOGS = RESULTS / "logs"
DEMO = config["series_sheet"] == "demo"
SHEET = str(WORK / "demo" / "series.tsv") if DEMO else config["series_sheet"]

if DEMO:
    SERIES = list(simulate.DEMO_SERIES)
    ROWS = {}
else:
    try:
        ROWS = {row.series: row for row in io.read_sheet(SHEET)}
    except (OSError, io.InputError) as exc:
        raise WorkflowError(f"series sheet: {exc}")
    SERIES = list(ROWS)

RELEASE_RECORD = str(WORK / "release.json")

wildcard_constraints:
    series="|".join(SERIES) or "NO_SERIES",


def as_json(value) -> str:
    """A config section as canonical JSON: a rule parameter whose change re-runs the rule."""
    return json.dumps(value, sort_keys=True)


def series_files(wildcards) -> list[str]:
    """A series' existing image files, so that edits to them re-run its ingestion.

    Missing files are not declared: ingestion reports them as that series' failure instead of
    Snakemake refusing the whole campaign.
    """
    if DEMO:
        return []
    try:
        return [str(p) for p in ROWS[wildcards.series].paths() if p.is_file()]
    except io.InputError:
        return []


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
    return as_json({k: v for k, v in vars(row).items() if k != "sheet_dir"})


def store(stage: str, series: str = "{series}") -> str:
    return str(WORK / stage / f"{series}.zarr")

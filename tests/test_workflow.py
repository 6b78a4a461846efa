"""The Snakemake workflow end to end on a small simulated campaign, and config validation."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from phasepipe import io, simulate

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
FAST = {"refine": ["defocus"], "iterations": 40}


def run_snakemake(workdir: Path, config: dict, *extra: str) -> subprocess.CompletedProcess:
    configfile = workdir / "test-config.json"
    configfile.write_text(json.dumps(config))
    return subprocess.run(
        [
            str(SNAKEMAKE),
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--cores",
            "2",
            "--configfile",
            str(configfile),
            *extra,
        ],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": f"{SNAKEMAKE.parent}:/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"reconstruction": {"tile_px": "big"}}, "tile_px"),
        ({"reconstruction": {"refine": ["focus"]}}, "focus"),
        ({"unknown_key": 1}, "unknown_key"),
        ({"dask": {"scheduler": "mpi"}}, "mpi"),
        ({"dask": {"scheduler": "slurm", "slurm": {"walltime": "1h"}}}, "walltime"),
        ({"dask": {"slurm": {"queue": "short"}}}, "queue"),
    ],
)
def test_schema_refuses_bad_config_naming_the_key(tmp_path, config, key):
    """A wrong type, value or unknown key stops the run before any job, with a message naming it."""
    result = run_snakemake(tmp_path, config, "-n")
    assert result.returncode != 0
    assert "Error validating config file" in result.stdout
    assert key in result.stdout


def test_bad_sheet_is_refused_before_any_job(tmp_path):
    """A sheet with a duplicate series id stops the run at once, naming the id and the lines."""
    sheet = tmp_path / "series.tsv"
    sheet.write_text("series\tfiles\tdefocus_nm\na\ta.tif\t-1,0,1\na\tb.tif\t-1,0,1\n")
    result = run_snakemake(tmp_path, {"series_sheet": str(sheet)}, "-n")
    assert result.returncode != 0
    assert "duplicate series id 'a' (first on line 2)" in result.stdout


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> Path:
    """Two good series of two sessions and one whose image count does not match its defocus list."""
    top = tmp_path_factory.mktemp("campaign")
    common = {"size_px": 48, "drift_px": 0.0}
    specs = [
        simulate.SeriesSpec(
            "a1", "vortex", calibration=1.03, session="day1", seed=1, acquired="2026-01-01T10:00:00", **common
        ),
        simulate.SeriesSpec(
            "b1", "stripes", calibration=0.97, session="day2", seed=2, acquired="2026-01-02T10:00:00", **common
        ),
    ]
    sheet = simulate.write_campaign(top / "raw", specs)
    with open(sheet, "a") as fh:
        fh.write("bad\ta1.tif\t-1e6,0\tday2\t\t\n")
    return sheet


@pytest.mark.integration
def test_campaign_publishes_release_and_second_run_does_nothing(tmp_path, campaign):
    """Ingest to release on a small campaign; the bad series fails alone; a re-run does no work."""
    config = {"series_sheet": str(campaign), "results_dir": "out", "campaign": "test", "reconstruction": FAST}
    first = run_snakemake(tmp_path, config)
    assert first.returncode == 0, first.stdout[-3000:]

    releases = tmp_path / "out" / "releases"
    rid = (releases / "LATEST").read_text().strip()
    release = releases / rid
    assert rid.startswith("v")
    summary = pd.read_csv(release / "series_summary.csv").set_index("series")
    assert summary.loc["a1", "status"] == "ok" and summary.loc["b1", "status"] == "ok"
    assert summary.loc["bad", "status"] == "failed"
    assert "3 images but 2 defocus values" in summary.loc["bad", "error"]

    params = pd.read_csv(release / "parameters.csv")
    assert sorted(params["series"].unique()) == ["a1", "b1"]
    assert len(params) == 6
    assert {"defocus_nominal_nm", "defocus_nm", "defocus_std_nm", "shift_y_px", "shift_x_px"} <= set(params.columns)

    campaign_summary = json.loads((release / "campaign_summary.json").read_text())
    assert campaign_summary["counts"] == {"series": 3, "done": 2, "failed": 1}
    assert set(campaign_summary["sessions"]) == {"day1", "day2"}

    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["release"] == rid
    assert "series/a1.zarr/zarr.json" in manifest["outputs"]
    assert {"torch", "zarr", "xarray", "snakemake", "numpy", "dask"} <= set(manifest["versions"])
    for name in ("a1.png", "b1.png", "defocus_calibration.png", "parameter_trends.png"):
        assert (release / "figures" / name).stat().st_size > 10_000

    ds = io.open_store(release / "series" / "a1.zarr")
    assert {"phase", "amplitude", "tie_phase"} <= set(ds.data_vars)
    assert float(ds["x"][1] - ds["x"][0]) == pytest.approx(5.0)

    report = run_snakemake(tmp_path, config, "--report", "report.html")
    assert report.returncode == 0, report.stdout[-2000:]
    assert "Adding defocus_calibration.png" in report.stdout and "Adding series_summary.csv" in report.stdout
    assert (tmp_path / "report.html").stat().st_size > 100_000

    second = run_snakemake(tmp_path, config)
    assert second.returncode == 0
    assert "Nothing to be done" in second.stdout

    # A row appended to the sheet (nightly reduction) adds jobs for that series only.
    with open(campaign, "a") as fh:
        fh.write("a2\ta1.tif\t-1600000,0,1600000\tday1\t\t\n")
    appended = run_snakemake(tmp_path, config, "-n")
    assert appended.returncode == 0, appended.stdout[-2000:]
    counts = dict(re.findall(r"^(ingest|align|reconstruct|aggregate|release)\s+(\d+)$", appended.stdout, re.M))
    assert counts == {"ingest": "1", "align": "1", "reconstruct": "1", "aggregate": "1", "release": "1"}

    # Changing only an aggregation setting re-runs aggregation and release, no reconstruction.
    lines = campaign.read_text().splitlines(keepends=True)
    campaign.write_text("".join(lines[:-1]))  # the sheet as the release was made from
    dry = run_snakemake(tmp_path, {**config, "aggregate": {"outlier_z": 5.0}}, "-n", "--quiet", "rules")
    assert dry.returncode == 0, dry.stdout[-2000:]
    assert "aggregate" in dry.stdout and "release" in dry.stdout
    assert "reconstruct" not in dry.stdout and "ingest" not in dry.stdout
    # The Dask settings say where tiles run, not what they give: changing them redoes no reconstruction.
    dask = {"scheduler": "slurm", "slurm": {"walltime": "04:00:00", "jobs": 64}}
    dry = run_snakemake(tmp_path, {**config, "dask": dask}, "-n", "--quiet", "rules")
    assert dry.returncode == 0, dry.stdout[-2000:]
    assert "reconstruct" not in dry.stdout and "ingest" not in dry.stdout
    shutil.rmtree(tmp_path / "out" / "work")  # keep the tmp folder small


@pytest.mark.integration
def test_two_runs_give_byte_identical_tables(tmp_path, campaign):
    """The same inputs and config, run twice from scratch, give byte-identical parameters.csv."""
    config = {"series_sheet": str(campaign), "results_dir": "out", "campaign": "test", "reconstruction": FAST}
    tables = []
    for run in ("first", "second"):
        workdir = tmp_path / run
        workdir.mkdir()
        result = run_snakemake(workdir, config)
        assert result.returncode == 0, result.stdout[-2000:]
        latest = (workdir / "out" / "releases" / "LATEST").read_text().strip()
        tables.append((workdir / "out" / "releases" / latest / "parameters.csv").read_bytes())
    assert tables[0] == tables[1]
    assert tables[0].count(b"\n") == 7  # header and 3 images of each good series


def write_synthetic_sheet(folder: Path, n_series: int) -> Path:
    """A sheet of ``n_series`` series, each naming one empty file: no real data, as the dry run of
    a campaign only states files (and never reads them) while it builds the DAG."""
    rows = ["series\tfiles\tdefocus_nm\tpixel_size_nm"]
    for i in range(n_series):
        (folder / f"s{i:03d}.tif").touch()
        rows.append(f"s{i:03d}\ts{i:03d}.tif\t-1600000,0,1600000\t5.0")
    sheet = folder / "series.tsv"
    sheet.write_text("\n".join(rows) + "\n")
    return sheet


@pytest.mark.parametrize("profile", ["default", "slurm"])
def test_dry_run_of_a_500_series_campaign(tmp_path, profile):
    """The dry run of a 500-series sheet plans every job; with the SLURM profile, ingest and align
    of each series form one group job. Its time is benchmarks/dry_run_speed.py's."""
    sheet = write_synthetic_sheet(tmp_path, 500)
    result = run_snakemake(
        tmp_path,
        {"series_sheet": str(sheet)},
        "-n",
        "--workflow-profile",
        str(ROOT / "workflow" / "profiles" / profile),
    )
    assert result.returncode == 0, result.stdout[-2000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    assert counts == {
        "ingest": "500",
        "align": "500",
        "reconstruct": "500",
        "aggregate": "1",
        "release": "1",
        "all": "1",
        "total": "1503",
    }
    assert result.stdout.count("Group job prepare") == (500 if profile == "slurm" else 0)


def test_job_resources_grow_with_series_size_and_threads(tmp_path):
    """A series of 100 MB of files asks for more memory and walltime than an empty one, in
    proportion (workflow/rules/common.smk), and reconstruction's walltime divides among its
    threads, which are also its cores (its memory is per tile, known once the aligned store
    exists). The files are sparse: stated, never read."""
    sheet = write_synthetic_sheet(tmp_path, 2)
    os.truncate(tmp_path / "s001.tif", 100_000_000)
    result = run_snakemake(tmp_path, {"series_sheet": str(sheet)}, "-n", "--set-threads", "reconstruct=2")
    assert result.returncode == 0, result.stdout[-2000:]
    jobs = re.findall(
        r"rule (\w+):\n(?:.*\n)*?\s+wildcards: series=(\w+)\n(?:\s+threads: \d+\n)?\s+resources: (.*)", result.stdout
    )
    resources = {(rule, series): dict(kv.split("=") for kv in res.split(", ")) for rule, series, res in jobs}
    mem = {key: int(res["mem_mb"]) for key, res in resources.items()}
    assert mem == {
        ("ingest", "s000"): 500,
        ("ingest", "s001"): 500 + 3 * 100,
        ("align", "s000"): 500,
        ("align", "s001"): 500 + 6 * 100,
        # per tile: 4000 MB on each of the 2 threads until the aligned store tells the tiles' size
        ("reconstruct", "s000"): 1000 + 2 * 4000,
        ("reconstruct", "s001"): 1000 + 2 * 4000,
    }
    # (2 s + 4000 iterations x 0.02 s) per MB, twice that, on 2 threads, plus 10 minutes
    assert resources["reconstruct", "s001"]["runtime"] == str(10 + math.ceil(2 * 82 * 100 / 2 / 60))
    assert resources["reconstruct", "s000"]["runtime"] == "10"
    assert resources["reconstruct", "s001"]["cpus_per_task"] == "2"

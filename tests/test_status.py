"""The end-of-run table: from a release's summary, or from the work area of a run that stopped."""

from __future__ import annotations

import json

import pandas as pd
import xarray as xr

from phasepipe import io, status


def test_the_table_of_a_run_that_published_nothing(tmp_path):
    """Each series at the furthest stage it reached; failed ones with their error, quality failed."""
    work = tmp_path / "work"
    io.write_store(xr.Dataset(attrs={"series": "a", "status": "ok"}), work / "ingested" / "a.zarr")
    io.write_store(xr.Dataset(attrs={"series": "b", "status": "ok"}), work / "aligned" / "b.zarr")
    io.write_store(xr.Dataset(attrs={"series": "b", "status": "ok"}), work / "ingested" / "b.zarr")
    io.write_store(
        io.failed_dataset("c", "series c: file c.tif does not exist", "ingest"), work / "ingested" / "c.zarr"
    )
    table = status.campaign_table(tmp_path, ["a", "b", "c", "d"]).set_index("series")
    assert table.loc["a", "status"] == "ingested only" and "align" in table.loc["a", "reason"]
    assert table.loc["b", "status"] == "aligned only" and "logs/reconstruct/b.log" in table.loc["b", "reason"]
    assert (table.loc["c", "status"], table.loc["c", "quality"]) == ("failed", "failed")
    assert table.loc["c", "reason"] == "series c: file c.tif does not exist"
    assert table.loc["d", "status"] == "not started"
    assert status.counts_line(table.reset_index()) == "4 series: 0 ok, 1 failed, 3 unfinished"


def test_the_table_of_a_published_release(tmp_path):
    """The release named by the run's record: its error, or else its first quality reason."""
    release = tmp_path / "releases" / "v1"
    release.mkdir(parents=True)
    pd.DataFrame(
        {
            "series": ["a", "b", "c"],
            "status": ["ok", "ok", "failed"],
            "quality": ["ok", "warning", "failed"],
            "quality_reasons": ["", "alignment: far; fit: capped", ""],
            "error": ["", "", "series c: bad"],
        }
    ).to_csv(release / "series_summary.csv", index=False)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "release.json").write_text(json.dumps({"release": "v1"}))
    table = status.campaign_table(tmp_path, ["a", "b", "c"])
    assert table["reason"].tolist() == ["", "alignment: far", "series c: bad"]
    assert status.counts_line(table) == "3 series: 2 ok (1 with warnings), 1 failed"
    lines = status.format_table(table, width=40).splitlines()
    assert lines[0].split() == ["series", "status", "quality", "reason"]
    assert lines[3].startswith("c       failed  failed   series c: bad")
    long = table.assign(reason="x" * 200)
    assert max(map(len, status.format_table(long, width=80).splitlines())) == 80  # fits the terminal
    assert "x" * 200 in status.format_table(long)  # no width (a log, not a terminal): nothing cut

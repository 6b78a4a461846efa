"""Where a campaign stands, as the short table a person reads at the end of a run.

One line per series: its status (ok, failed, or the stage it has not got past), its quality
verdict and the first reason given. Read from the release the run published when there is one,
else from the stages' stores in the work area (a run that stopped before publishing).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from phasepipe import io

STAGES = ("reconstructed", "aligned", "ingested")  # furthest first


def release_table(release_dir: Path) -> pd.DataFrame:
    """series, status, quality, reason of a published release's ``series_summary.csv``."""
    summary = pd.read_csv(release_dir / "series_summary.csv", keep_default_na=False)
    reason = [
        error or reasons.split("; ")[0]
        for error, reasons in zip(summary["error"], summary["quality_reasons"], strict=True)
    ]
    return pd.DataFrame(
        {"series": summary["series"], "status": summary["status"], "quality": summary["quality"], "reason": reason}
    )


def work_table(work_dir: Path, series: list[str]) -> pd.DataFrame:
    """The same table from the stages' stores, for a run that published nothing: each series at the
    furthest stage it reached, failed where its store says so."""
    rows = []
    for name in series:
        row = {"series": name, "status": "not started", "quality": "", "reason": ""}
        for stage in STAGES:
            path = work_dir / stage / f"{name}.zarr"
            if not path.exists():
                continue
            ds = io.open_store(path)
            if io.is_failed(ds):
                row.update(status="failed", quality="failed", reason=ds.attrs.get("error", ""))
            elif stage == "reconstructed":
                row.update(status="ok", reason="not aggregated (see logs/aggregate.log)")
            else:
                step = "align" if stage == "ingested" else "reconstruct"
                row.update(status=f"{stage} only", reason=f"the {step} job did not finish (logs/{step}/{name}.log)")
            break
        rows.append(row)
    return pd.DataFrame(rows, columns=["series", "status", "quality", "reason"])


def campaign_table(results_dir: Path, series: list[str]) -> pd.DataFrame:
    """The table of the release this results folder's last run published, or of its work area."""
    record = results_dir / "work" / "release.json"
    if record.is_file():
        release = json.loads(record.read_text())["release"]
        folder = results_dir / "releases" / release
        if (folder / "series_summary.csv").is_file():
            return release_table(folder)
    return work_table(results_dir / "work", series)


def format_table(table: pd.DataFrame, width: int | None = None) -> str:
    """Aligned columns; with a terminal ``width``, each reason cut to what is left of it."""
    columns = ["series", "status", "quality", "reason"]
    cells = [columns] + [[str(v) for v in row] for row in table[columns].itertuples(index=False)]
    widths = [max(len(c[k]) for c in cells) for k in range(3)]
    room = max(width - sum(widths) - 6, 30) if width else None
    lines = []
    for cell in cells:
        reason = cell[3] if room is None or len(cell[3]) <= room else cell[3][: room - 3] + "..."
        lines.append("  ".join(c.ljust(w) for c, w in zip(cell[:3], widths, strict=True)) + "  " + reason)
    return "\n".join(line.rstrip() for line in lines)


def counts_line(table: pd.DataFrame) -> str:
    """ "4 series: 3 ok (1 with warnings), 1 failed"."""
    failed = int((table["status"] == "failed").sum())
    ok = int((table["status"] == "ok").sum())
    warned = int(((table["status"] == "ok") & (table["quality"] == "warning")).sum())
    other = len(table) - failed - ok
    parts = [f"{ok} ok" + (f" ({warned} with warnings)" if warned else ""), f"{failed} failed"]
    if other:
        parts.append(f"{other} unfinished")
    return f"{len(table)} series: " + ", ".join(parts)

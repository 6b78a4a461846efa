"""Wall time of `snakemake -n` on a synthetic campaign sheet (target: under 30 s for 500 series).

The sheet names one empty file per series: a dry run states the files and never reads them. Run
from the repository root:

    .venv/bin/python benchmarks/dry_run_speed.py [--series 500] [--profile default slurm] [--repeat 3]

Prints, per profile, the jobs planned and the wall and CPU seconds of each run (the CPU time
tells a busy shared machine from a slow dry run).
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
sys.path.insert(0, str(ROOT / "tests"))
from test_workflow import write_synthetic_sheet  # noqa: E402  (the tests' sheet of empty files)


def dry_run(folder: Path, sheet: Path, profile: str) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and the number of jobs planned."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    result = subprocess.run(
        [
            str(SNAKEMAKE),
            "-n",
            "--quiet",
            "rules",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--workflow-profile",
            str(ROOT / "workflow" / "profiles" / profile),
            "--config",
            f"series_sheet={sheet}",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    total = int(re.search(r"^total\s+(\d+)$", result.stdout, re.M).group(1))
    return wall, cpu, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=500)
    parser.add_argument("--profile", nargs="+", default=["default", "slurm"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sheet = write_synthetic_sheet(folder, args.series)
        for profile in args.profile:
            runs = [dry_run(folder, sheet, profile) for _ in range(args.repeat)]
            walls = ", ".join(f"{wall:.1f}" for wall, _, _ in runs)
            cpus = ", ".join(f"{cpu:.1f}" for _, cpu, _ in runs)
            print(f"{args.series} series, profile {profile}: {runs[0][2]} jobs; wall {walls} s; CPU {cpus} s")


if __name__ == "__main__":
    main()

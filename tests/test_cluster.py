"""Where the tiles run: Dask clients, SLURM worker jobs and their settings (phasepipe/cluster.py)."""

import os
from pathlib import Path

import pytest

from phasepipe import cluster, tiling


def test_unreachable_scheduler_is_named(monkeypatch):
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1)
    with pytest.raises(cluster.ClusterError, match=r"tcp://127\.0\.0\.1:9: cannot reach"):
        with cluster.dask_client("tcp://127.0.0.1:9", 1):
            pass


def test_slurm_settings_from_config():
    slurm = tiling.tiling_from_config(
        {"tile_px": 256},
        {
            "scheduler": "slurm",
            "slurm": {"partition": "short", "account": "lab", "cores": 4, "memory_mb": 3000, "jobs": 8},
        },
        1,
        None,
    ).slurm
    assert slurm == cluster.SlurmSettings(partition="short", account="lab", cores=4, memory_mb=3000, jobs=8)
    default = tiling.tiling_from_config({}, {"scheduler": "slurm"}, 1, None).slurm
    assert default == cluster.SlurmSettings()
    assert cluster.format_walltime(90061) == "25:01:01"


def fake_slurm_command(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_slurm_without_sbatch_is_refused_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a folder without sbatch
    with pytest.raises(cluster.ClusterError, match="dask.scheduler slurm: sbatch is not on PATH"):
        with cluster.dask_client("slurm", 2, cluster.SlurmWorkers(cluster.SlurmSettings(), "phasepipe-s01", 1600)):
            pass


def test_slurm_worker_job_script(tmp_path, monkeypatch):
    """One worker of one Dask thread per job, on the job's cores and memory, in the partition and
    account given, retiring before the walltime; nothing is submitted to build it."""
    fake_slurm_command(tmp_path, "sbatch", "exit 1")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    section = {"partition": "short", "account": "lab", "cores": 2, "walltime": "02:00:00", "directives": ["--qos=long"]}
    settings = tiling.tiling_from_config({}, {"scheduler": "slurm", "slurm": section}, 1, None).slurm
    with cluster.slurm_cluster(cluster.SlurmWorkers(settings, "phasepipe-s01", 1600)) as jobs:
        script = jobs.job_script()
    for line in ("-J phasepipe-s01", "-p short", "-A lab", "--cpus-per-task=2", "--mem=1600M", "-t 02:00:00"):
        assert f"#SBATCH {line}\n" in script
    assert "#SBATCH --qos=long" in script
    assert "--nthreads 1 " in script
    assert "--lifetime 6600s --lifetime-stagger 300s" in script


def test_slurm_refusing_the_worker_job_is_named(tmp_path, monkeypatch):
    """sbatch --test-only's refusal (here a partition that does not exist) comes back at once."""
    fake_slurm_command(tmp_path, "sbatch", "echo 'sbatch: error: invalid partition specified: nope' >&2; exit 1")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    settings = cluster.SlurmSettings(partition="nope")
    with pytest.raises(cluster.ClusterError, match="refuses the worker job in partition nope: .*invalid partition"):
        cluster.check_submission("#!/bin/sh\n", settings)


@pytest.mark.parametrize(
    ("threads", "memory_mb", "n_tiles", "expected"),
    [
        (2, 8000, 16, (2, 1)),  # a worker per core
        (8, None, 2, (2, 4)),  # fewer tiles than threads: the rest go to torch
        (4, 2500, 16, (2, 2)),  # memory for two tiles at a time
        (1, 100, 16, (1, 1)),  # never fewer than one worker
    ],
)
def test_workers_and_threads_do_not_oversubscribe(threads, memory_mb, n_tiles, expected):
    workers, torch_threads = cluster.plan_workers(threads, memory_mb, n_tiles, per_tile_mb=1000)
    assert (workers, torch_threads) == expected
    assert workers * torch_threads <= max(threads, 1)


def test_slurm_workers_are_never_sized_by_a_default():
    with pytest.raises(cluster.ClusterError, match="worker jobs' settings"):
        with cluster.dask_client("slurm", 2):
            pass

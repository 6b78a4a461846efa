"""Where the tiles run: a Dask client on a LocalCluster, threads, an existing scheduler, or SLURM
worker jobs (dask-jobqueue), and the ``dask.slurm`` settings those jobs take.

:mod:`phasepipe.tiling` decides what to compute and asks :func:`dask_client` for the workers;
everything about starting, sizing, renewing and naming those workers is here (docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class ClusterError(ValueError):
    """Bad Dask or SLURM settings, or workers that do not start: the message names the key or
    the scheduler and what is wrong."""


CONNECT_TIMEOUT_S = 20  # waiting for an existing Dask scheduler (dask.scheduler: tcp://...)


# A SLURM worker job's own memory beside its tile's fit: the Dask worker and its nanny.
SLURM_WORKER_MB = 500


# What the adaptive scaling assumes a tile takes before one has finished: Dask's default for an
# unknown task (0.5 s) would have it start two worker jobs for a whole series' tiles.
TILE_DURATION_GUESS = "10m"


@dataclass(frozen=True)
class SlurmSettings:
    """The ``dask.slurm`` keys: the SLURM jobs that host the Dask workers of ``dask.scheduler: slurm``,
    one worker per job, which fits one tile at a time on the job's cores."""

    partition: str | None = None  # None = the cluster's default partition
    account: str | None = None  # None = the user's default account
    cores: int = 1
    memory_mb: int | None = None  # None = auto: one tile's fit plus SLURM_WORKER_MB
    walltime_s: int = 3600
    lifetime_s: int | None = None  # None = auto (:meth:`lifetime`)
    jobs: int = 16  # worker jobs at most, queued or running at once
    start_timeout_s: int = 600
    interface: str | None = None  # network interface the workers reach the scheduler on
    directives: tuple[str, ...] = ()  # further sbatch options

    @property
    def stagger_s(self) -> int:
        """Spread of the workers' lifetimes (+-), so that they do not all retire at once."""
        return min(300, self.walltime_s // 20)

    @property
    def lifetime(self) -> int:
        """Seconds after which a worker retires gracefully, its running tile going to another
        worker: auto ends every worker at least one stagger before its job's walltime."""
        return self.lifetime_s if self.lifetime_s is not None else self.walltime_s - 2 * self.stagger_s

    @property
    def where(self) -> str:
        """The partition, as error messages name it."""
        return f"partition {self.partition}" if self.partition else "the default partition"


def parse_walltime(value: str) -> int:
    """Seconds of a SLURM time ``[D-]HH:MM:SS`` (the schema's pattern for walltimes)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{2}):(\d{2})", value)
    if match is None:
        raise ValueError(f"{value!r} is not a SLURM time [D-]HH:MM:SS")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def slurm_from_config(section: dict) -> SlurmSettings:
    """Resolve the ``dask.slurm`` section, as the schema has checked it and filled in its defaults
    (:func:`phasepipe.configuration.section`), and check what the schema cannot: that workers
    retire before their walltime."""
    walltime = parse_walltime(section["walltime"])
    settings = SlurmSettings(
        partition=section["partition"],
        account=section["account"],
        cores=section["cores"],
        memory_mb=None if section["memory_mb"] == "auto" else section["memory_mb"],
        walltime_s=walltime,
        lifetime_s=None if section["lifetime"] == "auto" else parse_walltime(section["lifetime"]),
        jobs=section["jobs"],
        start_timeout_s=section["start_timeout_s"],
        interface=section["interface"],
        directives=tuple(section["directives"]),
    )
    if settings.lifetime <= 0 or settings.lifetime + settings.stagger_s >= walltime:
        raise ClusterError(
            f"dask.slurm.lifetime of {settings.lifetime} s (+- {settings.stagger_s} s stagger) must end before "
            f"dask.slurm.walltime ({walltime} s), so that workers retire before SLURM kills them"
        )
    return settings


def plan_workers(threads: int, memory_mb: int | None, n_tiles: int, per_tile_mb: int) -> tuple[int, int]:
    """Workers and torch threads per worker: one tile per worker, as many workers as threads,
    tiles and memory allow, the threads left over given to each worker's torch (never more
    threads in all than the job has)."""
    workers = min(threads, n_tiles)
    if memory_mb is not None:
        workers = min(workers, max(1, memory_mb // per_tile_mb))
    workers = max(1, workers)
    return workers, max(1, threads // workers)


@dataclass(frozen=True)
class SlurmWorkers:
    """The SLURM worker jobs of one tiled reconstruction (``dask.scheduler: slurm``)."""

    settings: SlurmSettings
    name: str  # job name, as squeue shows it
    memory_mb: int  # per job
    log_dir: Path | None = None  # the jobs' stdout and stderr (SLURM's working folder when None)


@contextlib.contextmanager
def dask_client(scheduler: str, workers: int, slurm: SlurmWorkers | None = None) -> Iterator:
    """A ``distributed`` client for ``dask.scheduler``: a LocalCluster of worker processes
    (local), threads in this process (threads), up to ``workers`` SLURM jobs of one worker each
    (slurm, described by ``slurm``, which it needs), or an existing scheduler (tcp://host:port)."""
    from distributed import Client, LocalCluster

    if scheduler.startswith("tcp://"):
        try:
            client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"dask.scheduler {scheduler}: cannot reach the Dask scheduler ({exc})") from exc
        with client:
            yield client
        return
    # The cluster's own start-up and shutdown chatter is not the reconstruction's log.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler == "slurm":
        if slurm is None:  # a job's memory is the caller's to size: no default could fit every fit
            raise ClusterError("dask.scheduler slurm: the worker jobs' settings (SlurmWorkers) are missing")
        with slurm_client(slurm, workers) as client:
            yield client
        return
    processes = scheduler == "local"
    cluster = LocalCluster(
        n_workers=workers if processes else 1,
        threads_per_worker=1 if processes else workers,
        processes=processes,
        # Memory sized the number of workers (plan_workers); a per-worker limit would have Dask
        # pause or restart a worker whose tile's fit runs over its estimate, so the job's own
        # limit (the batch system's) is the one that holds.
        memory_limit=0,
        dashboard_address=":0",  # any free port: several jobs may run on one machine
        silence_logs=logging.WARNING,
    )
    with cluster, Client(cluster) as client:
        yield client


def slurm_cluster(slurm: SlurmWorkers):
    """A dask-jobqueue ``SLURMCluster`` (its scheduler in this process) whose jobs each run one
    Dask worker of one thread, a tile at a time with torch on the job's cores; no job is
    submitted yet. Refused with a clear message where there is no ``sbatch``."""
    if shutil.which("sbatch") is None:
        raise ClusterError(
            "dask.scheduler slurm: sbatch is not on PATH; run on a SLURM login or compute node, "
            "or choose dask.scheduler local"
        )
    from dask_jobqueue import SLURMCluster

    settings = slurm.settings
    return SLURMCluster(
        cores=1,
        processes=1,
        # No Dask memory limit, which would pause or restart a worker whose tile runs over its
        # estimate: the job's --mem, which SLURM enforces, is the one that holds.
        memory="0",
        job_cpu=settings.cores,
        job_mem=f"{slurm.memory_mb}M",
        queue=settings.partition,
        account=settings.account,
        walltime=format_walltime(settings.walltime_s),
        job_name=slurm.name,
        interface=settings.interface,
        job_extra_directives=list(settings.directives),
        # A worker retires before the walltime kills it: its running tile goes back to the
        # scheduler (only that tile's work is lost; finished tiles are on disk and their results
        # already fetched) and a fresh job takes its place (_renew_departed).
        worker_extra_args=["--lifetime", f"{settings.lifetime}s", "--lifetime-stagger", f"{settings.stagger_s}s"],
        log_directory=str(slurm.log_dir) if slurm.log_dir else None,
        scheduler_options={"dashboard_address": ":0"},
        silence_logs="warning",
    )


def format_walltime(seconds: int) -> str:
    """``HH:MM:SS`` for sbatch --time (hours may exceed 24)."""
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@contextlib.contextmanager
def slurm_client(slurm: SlurmWorkers, jobs: int) -> Iterator:
    """A client of a :func:`slurm_cluster` that adapts between one and ``jobs`` worker jobs to
    the tasks waiting, once SLURM has accepted the job script and started a first job."""
    import dask
    from distributed import Client

    settings = slurm.settings
    guess = {"run_tile": TILE_DURATION_GUESS, "run_overview": TILE_DURATION_GUESS}
    with (
        dask.config.set({"distributed.scheduler.default-task-durations": guess}),
        slurm_cluster(slurm) as cluster,
        Client(cluster) as client,
    ):
        check_submission(cluster.job_script(), settings)
        log.info(
            "dask.scheduler slurm: up to %d worker job(s) %r in %s, %d core(s) and %d MB each, "
            "walltime %s, workers retire after %d +- %d s",
            jobs,
            slurm.name,
            settings.where,
            settings.cores,
            slurm.memory_mb,
            format_walltime(settings.walltime_s),
            settings.lifetime,
            settings.stagger_s,
        )
        # A worker idle for 30 s leaves (Dask's default is 3 s): its replacement would wait in
        # the queue, and tiles come in bursts (the fits, then the stitching).
        cluster.adapt(minimum_jobs=1, maximum_jobs=jobs, interval="2s", wait_count=15)
        _renew_departed(cluster)
        try:
            client.wait_for_workers(1, timeout=settings.start_timeout_s)
        except TimeoutError as exc:
            raise ClusterError(
                f"dask.scheduler slurm: no worker job {slurm.name!r} started within "
                f"{settings.start_timeout_s} s (dask.slurm.start_timeout_s) in {settings.where}; "
                f"squeue: {queue_state(slurm.name)}"
            ) from exc
        yield client


def check_submission(script: str, settings: SlurmSettings) -> None:
    """Have SLURM check the worker job script without submitting it (``sbatch --test-only``):
    a wrong partition, account or size is refused here rather than after the start timeout."""
    done = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterError(
            f"dask.scheduler slurm: SLURM refuses the worker job in {settings.where}: "
            f"{(done.stderr or done.stdout).strip()}"
        )


def queue_state(name: str) -> str:
    """The jobs of that name as squeue sees them (id, state, reason), for an error message."""
    try:
        done = subprocess.run(
            ["squeue", "--noheader", "--name", name, "--format", "%i %T %r"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not available ({exc})"
    return "; ".join(done.stdout.splitlines()[:5]) or "no such job"


def _renew_departed(cluster) -> None:
    """Resubmit the job of a worker that has left (its lifetime over, or killed), every 5 s.

    Adaptive scaling keeps counting a departed worker as planned and so never replaces it
    (dask-jobqueue issues 122 and 611); the cluster reopens every planned worker that is gone
    whenever it is scaled, so scaling it to its own size resubmits exactly those.
    """
    from tornado.ioloop import PeriodicCallback

    seen: set[str] = set()  # workers once started: a planned one not yet started has not left

    def renew() -> None:
        seen.update(cluster.workers)
        departed = (set(cluster.worker_spec) - set(cluster.workers)) & seen
        if departed:
            log.info("dask.scheduler slurm: renewing %d worker job(s) that ended (lifetime or walltime)", len(departed))
            seen.difference_update(departed)
            cluster.scale(jobs=len(cluster.worker_spec))

    callback = PeriodicCallback(renew, 5000)
    cluster.periodic_callbacks["phasepipe-renew"] = callback  # stopped when the cluster closes
    cluster.loop.add_callback(callback.start)

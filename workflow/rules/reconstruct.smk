def reconstruct_size(wildcards, input) -> tuple[int, int]:
    """Tiles of the aligned store and memory (MB) per tile; (1, 4000) until the store exists
    (Snakemake evaluates threads and resources again once the job is ready)."""
    from phasepipe import tiling

    section = config["reconstruction"]
    halo = None if section["halo_px"] == "auto" else section["halo_px"]
    try:
        return tiling.store_tiling(input[0], section["tile_px"], halo)
    except (OSError, KeyError, ValueError):
        return 1, 4000


# With a Dask scheduler outside the job (worker jobs of its own, or a running cluster) the job
# itself only schedules, reconciles and stitches: one core.
REMOTE_DASK = config["dask"]["scheduler"] == "slurm" or config["dask"]["scheduler"].startswith("tcp://")
# The dask section says where the tiles run, not what they give: a global of the shell command
# (whose template, not its values, is what Snakemake compares) rather than a parameter, so that
# changing it, a walltime say, re-runs no reconstruction.
DASK = as_json(config["dask"])


rule reconstruct:
    input:
        store("aligned"),
    output:
        directory(store("reconstructed")),
    params:
        settings=as_json(config["reconstruction"]),
        # Finished tiles' records: outside the output, which Snakemake deletes when a job fails.
        records=lambda wildcards: str(WORK / "tiles" / wildcards.series),
    # One thread per tile, capped by --cores (Snakemake scales threads down to the cores given).
    threads: lambda wildcards, input: 1 if REMOTE_DASK else reconstruct_size(wildcards, input)[0]
    log:
        str(LOGS / "reconstruct" / "{series}.log"),
    resources:
        # A fixed part plus each worker's tile (tiling.store_tiling), times the attempt.
        mem_mb=lambda wildcards, input, threads, attempt: attempt * (1000 + threads * reconstruct_size(wildcards, input)[1]),
        runtime=reconstruct_runtime,
        # What the SLURM plugin would do anyway, stated: the job gets exactly its threads' cores,
        # which the tiles' Dask workers are sized from.
        cpus_per_task=lambda wildcards, threads: threads,
        gpu=GPUS,
    shell:
        "{PHASEPIPE} reconstruct --in {input} --out {output} --settings {params.settings:q} --dask {DASK:q}"
        " --records {params.records:q} --threads {threads} --mem-mb {resources.mem_mb}"
        " --record-failure > {log} 2>&1"

rule reconstruct:
    input:
        store("aligned"),
    output:
        directory(store("reconstructed")),
    params:
        settings=as_json(config["reconstruction"]),
    threads: 1
    log:
        str(LOGS / "reconstruct" / "{series}.log"),
    resources:
        mem_mb=mem_mb("reconstruct"),
        runtime=reconstruct_runtime,
        # What the SLURM plugin would do anyway, stated: the job gets exactly its threads' cores,
        # which a tiled reconstruction's Dask workers are sized from.
        cpus_per_task=lambda wildcards, threads: threads,
        gpu=GPUS,
    shell:
        "phasepipe reconstruct --in {input} --out {output} --settings {params.settings:q}"
        " --threads {threads} > {log} 2>&1"

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
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
    shell:
        "phasepipe reconstruct --in {input} --out {output} --settings {params.settings:q}"
        " --threads {threads} > {log} 2>&1"

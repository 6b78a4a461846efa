rule align:
    input:
        store("ingested"),
    output:
        directory(store("aligned")),
    params:
        settings=as_json(config["align"]),
    log:
        str(LOGS / "align" / "{series}.log"),
    resources:
        mem_mb=mem_mb("align"),
        runtime=lambda wildcards, attempt: attempt * 10,
    shell:
        "{PHASEPIPE} align --in {input} --out {output} --settings {params.settings:q}"
        " --record-failure > {log} 2>&1"

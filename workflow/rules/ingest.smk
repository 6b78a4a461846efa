rule ingest:
    input:
        sheet=SHEET,
        files=series_files,
    output:
        directory(store("ingested")),
    params:
        microscope=as_json(config["microscope"]),
    log:
        str(LOGS / "ingest" / "{series}.log"),
    resources:
        mem_mb=4000,
    shell:
        "phasepipe ingest --sheet {input.sheet} --series {wildcards.series}"
        " --microscope {params.microscope:q} --out {output} > {log} 2>&1"

rule ingest:
    input:
        unpack(ingest_inputs),
    output:
        directory(store("ingested")),
    params:
        sheet=SHEET,
        row=sheet_row,
        microscope=as_json(config["microscope"]),
    log:
        str(LOGS / "ingest" / "{series}.log"),
    resources:
        mem_mb=mem_mb("ingest"),
        runtime=lambda wildcards, attempt: attempt * 10,
    shell:
        "{PHASEPIPE} ingest --sheet {params.sheet:q} --series {wildcards.series}"
        " --microscope {params.microscope:q} --out {output} --record-failure > {log} 2>&1"

rule release:
    input:
        aggregate=str(WORK / "aggregate"),
        stores=final_outputs(),
    output:
        RELEASE_RECORD,
    params:
        config=as_json(config),
        name=config["release"],
        stores=[final_store(series) for series in SERIES],
    log:
        str(LOGS / "release.log"),
    resources:
        mem_mb=lambda wildcards, attempt: attempt * 2000,
        runtime=campaign_runtime,
    shell:
        "{PHASEPIPE} release --aggregate {input.aggregate} --stores {params.stores}"
        " --releases {RESULTS}/releases --name {params.name:q} --config {params.config:q}"
        " --out {output} > {log} 2>&1"

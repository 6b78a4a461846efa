rule release:
    input:
        aggregate=str(WORK / "aggregate"),
        stores=expand(store("reconstructed", "{series}"), series=SERIES),
    output:
        RELEASE_RECORD,
    params:
        config=as_json(config),
        name=config["release"],
    log:
        str(LOGS / "release.log"),
    resources:
        mem_mb=lambda wildcards, attempt: attempt * 2000,
        runtime=campaign_runtime,
    shell:
        "{PHASEPIPE} release --aggregate {input.aggregate} --stores {input.stores}"
        " --releases {RESULTS}/releases --name {params.name:q} --config {params.config:q}"
        " --out {output} > {log} 2>&1"

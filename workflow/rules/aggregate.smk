rule aggregate:
    input:
        expand(store("reconstructed", "{series}"), series=SERIES),
    output:
        directory(str(WORK / "aggregate")),
    params:
        settings=as_json(config.get("aggregate", {})),
        campaign=config["campaign"],
    log:
        str(LOGS / "aggregate.log"),
    resources:
        mem_mb=4000,
    shell:
        "phasepipe aggregate --stores {input} --out {output} --campaign {params.campaign:q}"
        " --settings {params.settings:q} > {log} 2>&1"

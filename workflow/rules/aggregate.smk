rule aggregate:
    input:
        expand(store("reconstructed", "{series}"), series=SERIES),
    output:
        report(
            directory(str(WORK / "aggregate")),
            patterns=["figures/{name}.png", "{table}.csv"],
            caption="../report/aggregate.rst",
            category="Campaign",
        ),
    params:
        settings=as_json(config.get("aggregate", {})),
        campaign=config["campaign"],
    log:
        str(LOGS / "aggregate.log"),
    resources:
        mem_mb=lambda wildcards, attempt: attempt * 4000,
        runtime=campaign_runtime,
    shell:
        "{PHASEPIPE} aggregate --stores {input} --out {output} --campaign {params.campaign:q}"
        " --settings {params.settings:q} > {log} 2>&1"

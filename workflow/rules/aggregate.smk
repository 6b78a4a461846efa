rule aggregate:
    input:
        final_outputs(),
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
        stores=[final_store(series) for series in SERIES],
        warnings=as_json(PARTNER_WARNINGS),
    log:
        str(LOGS / "aggregate.log"),
    resources:
        mem_mb=lambda wildcards, attempt: attempt * 4000,
        runtime=campaign_runtime,
    shell:
        "{PHASEPIPE} aggregate --stores {params.stores} --out {output} --campaign {params.campaign:q}"
        " --settings {params.settings:q} --warnings {params.warnings:q} > {log} 2>&1"

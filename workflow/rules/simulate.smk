rule simulate_demo:
    output:
        sheet=str(WORK / "demo" / "series.tsv"),
    log:
        str(LOGS / "simulate_demo.log"),
    resources:
        mem_mb=lambda wildcards, attempt: attempt * 2000,
        runtime=lambda wildcards, attempt: attempt * 10,
    shell:
        "{PHASEPIPE} simulate --demo {WORK}/demo > {log} 2>&1"

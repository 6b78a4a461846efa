rule simulate_demo:
    output:
        sheet=str(WORK / "demo" / "series.tsv"),
    log:
        str(LOGS / "simulate_demo.log"),
    resources:
        mem_mb=2000,
    shell:
        "phasepipe simulate --demo {WORK}/demo > {log} 2>&1"

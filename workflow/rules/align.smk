rule align:
    input:
        store("ingested"),
    output:
        directory(store("aligned")),
    log:
        str(LOGS / "align" / "{series}.log"),
    resources:
        mem_mb=4000,
    shell:
        "phasepipe align --in {input} --out {output} > {log} 2>&1"

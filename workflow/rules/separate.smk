# The joint fit runs by autograd over every member's images, on the CPU: per MB of the group's
# images and iteration, a little above what benchmarks/separation.py measured (docs/performance.md).
JOINT_S_PER_MB = 0.05 * joint.ITERATIONS


def group_mb(wildcards) -> float:
    """The image files of a group's members, in MB (0 for the demo, simulated by the run)."""
    return sum(series_mb(series) for series in GROUP_BY_ID[wildcards.group].members)


def group_stores(stage: str):
    """The stores of a group's members at ``stage``, anchor first."""
    return lambda wildcards: [store(stage, series) for series in GROUP_BY_ID[wildcards.group].members]


def group_json(wildcards) -> str:
    group = GROUP_BY_ID[wildcards.group]
    return as_json(
        {"members": list(group.members), "relation": group.relation, "roles": {s: group.role(s) for s in group.members}}
    )


rule separate:
    input:
        aligned=group_stores("aligned"),
        reconstructed=group_stores("reconstructed"),
    output:
        directory(str(WORK / "separated" / "{group}")),
    params:
        group=group_json,
        settings=as_json(config["reconstruction"]),
    log:
        str(LOGS / "separate" / "{group}.log"),
    resources:
        mem_mb=lambda wildcards, attempt: attempt * math.ceil(2000 + 40 * group_mb(wildcards)),
        runtime=lambda wildcards, attempt: attempt * (10 + math.ceil(2 * JOINT_S_PER_MB * group_mb(wildcards) / 60)),
    shell:
        "{PHASEPIPE} separate --group {params.group:q} --aligned {input.aligned} --reconstructed {input.reconstructed}"
        " --settings {params.settings:q} --out {output} > {log} 2>&1"

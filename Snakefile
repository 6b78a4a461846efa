# phasepipe: ingest -> align -> reconstruct -> aggregate -> release (see docs/architecture.md).
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: workflow.source_path("config/config.yaml")


validate(config, "workflow/schemas/config.schema.yaml", set_default=True)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/reconstruct.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/release.smk"


rule all:
    default_target: True
    input:
        RELEASE_RECORD,

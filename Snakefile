# phasepipe: ingest -> align -> reconstruct -> aggregate -> release (see docs/architecture.md).
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from phasepipe import configuration

min_version("9.0")


configfile: workflow.source_path("config/config.yaml")


try:
    configuration.validate(config)
except configuration.ConfigError as exc:
    raise WorkflowError(str(exc)) from None
# series_sheet and results_dir, resolved against the --configfile that names them (else the cwd).
PATHS = configuration.resolve_paths(
    config, workflow.config_settings.configfiles, set(workflow.config_settings.config), Path.cwd()
)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/reconstruct.smk"
include: "workflow/rules/separate.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/release.smk"


rule all:
    default_target: True
    input:
        RELEASE_RECORD,


onsuccess:
    report_run(failed_jobs=False)


onerror:
    report_run(failed_jobs=True)

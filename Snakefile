# Distil language models and judge the results: KD-DAE, the teacher-feedback λ' sweep, DDK,
# MT-Bench and AlpacaEval. README.md says how to run it; workflow/schemas/ documents the config.
from snakemake.utils import min_version

min_version("9.0")


# A config file is whole: config.yaml (the embedded default) is read only when no --configfile
# is given. An overlay names its base: --configfile config.yaml configs/ci.yaml.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/sft.smk"
include: "workflow/rules/kd.smk"
include: "workflow/rules/dae.smk"
include: "workflow/rules/ddk.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/plots.smk"


# Before the first job runs (not in a dry run): the judge's API key and access to hub models.
onstart:
    check_before_jobs()


rule all:
    input:
        FIGURES,

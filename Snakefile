# Distil language models and judge the results: KD-DAE, the teacher-feedback λ' sweep, DDK,
# MT-Bench and AlpacaEval. README.md says how to run it; workflow/schemas/ documents the config.
from snakemake.utils import min_version

min_version("9.0")


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


rule all:
    input:
        FIGURES,

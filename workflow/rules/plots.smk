# Figures: each one a target of its own, each in the report with a caption. (The λ' figure is in
# sweep.smk, DDK's in ddk.smk, the judging figures in eval.smk.)

# Every figure and table the workflow makes; `rule all` asks for these.
FIGURES = [
    f"results/figures/{name}.png"
    for name in [
        "sft_loss",
        "training_curves",
        "ddk_weights",
        "ddk_domain_ppl",
        "lambda_sweep",
        "radar",
        "evaluation",
    ]
]
FIGURES.append("results/eval/domains/accuracy.csv")


rule sft_loss_figure:
    input:
        run_dirs({"sft": "sft"}),
    output:
        png=report(
            "results/figures/sft_loss.png",
            caption="../report/sft_loss.rst",
            category="Training",
        ),
        pdf="results/figures/sft_loss.pdf",
    log:
        "results/logs/figures/sft_loss.log",
    conda:
        ENV
    params:
        runs=run_logs({"sft": "sft"}),
    shell:
        "python -m distill.plots.training_curves --runs {params.runs} "
        "--title 'SFT baseline' --out {output.png} > {log} 2>&1"


rule training_curves_figure:
    input:
        run_dirs(TRAINING_RUNS),
    output:
        png=report(
            "results/figures/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
        pdf="results/figures/training_curves.pdf",
    log:
        "results/logs/figures/training_curves.log",
    conda:
        ENV
    params:
        runs=run_logs(TRAINING_RUNS),
    shell:
        "python -m distill.plots.training_curves --runs {params.runs} "
        "--title 'Students from the same init' --out {output.png} > {log} 2>&1"

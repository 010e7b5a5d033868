# Figures: each one a target of its own, each in the report with a caption.


rule sft_loss_figure:
    input:
        "results/models/student_sft",
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
    shell:
        "python -m distill.plots.training_curves --runs sft={input}/train_log.csv "
        "--title 'SFT baseline' --out {output.png} > {log} 2>&1"


rule training_curves_figure:
    input:
        list(TRAINING_RUNS.values()),
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
        runs=[f"{label}={path}/train_log.csv" for label, path in TRAINING_RUNS.items()],
    shell:
        "python -m distill.plots.training_curves --runs {params.runs} "
        "--title 'Students from the same init' --out {output.png} > {log} 2>&1"

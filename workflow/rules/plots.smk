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

"""MT-Bench by category: one polygon per model over FastChat's eight categories, radius 0-10.

    python -m distill.plots.radar --scores results/eval/mtbench/scores.csv \\
        --judge "teacher (in-process, expected rating)" --paper-reference \\
        --out results/figures/radar.png

Reads the scores table of `distill.eval.mtbench score` (one row per model, a column per category
label). Writes the PNG and a PDF beside it. A category with no judged question (a subset that
leaves it out) is drawn at 0 and marked "(none)" on its axis. With --paper-reference, the KD-DAE
paper's Flip-2x7B-Instruct-β is drawn as a dashed grey polygon (GPT-4 judge: another scale).
"""

from __future__ import annotations

import argparse
import math

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from distill.eval.mtbench import CATEGORY_LABELS  # noqa: E402
from distill.io import InputError, main_guard, setup_logging  # noqa: E402
from distill.plots.training_curves import save_figure  # noqa: E402

LABELS = list(CATEGORY_LABELS.values())  # FastChat's order: Writing, Roleplay, ..., Humanities

# KD-DAE (arXiv 2406.19112), MT-Bench by category of Flip-2x7B-Instruct-β with a GPT-4 judge,
# read off the published radar plot (repository flipkart-incubator/kd-dae,
# assets/images/evaluation.png) to about ±0.2.
PAPER_RADAR = {
    "label": "KD-DAE paper: Flip-2x7B-Instruct-β (GPT-4 judge)",
    "scores": {
        "Writing": 9.6,
        "Roleplay": 8.7,
        "Reasoning": 6.2,
        "Math": 5.8,
        "Coding": 5.2,
        "Extraction": 8.6,
        "STEM": 9.4,
        "Humanities": 9.7,
    },
}


def read_scores(path: str) -> pd.DataFrame:
    table = pd.read_csv(path, index_col="model")
    missing = [c for c in LABELS if c not in table.columns]
    if missing:
        raise InputError(
            f"{path}: no column {', '.join(missing)}. Fix: pass the scores.csv that "
            "`python -m distill.eval.mtbench score --out` writes."
        )
    return table


def radar(table: pd.DataFrame, judge: str, paper_reference: bool = False):
    """The figure: a polar axis with one closed polygon per row of `table` (categories LABELS)."""
    angles = [2 * math.pi * i / len(LABELS) for i in range(len(LABELS))]
    closed = [*angles, angles[0]]
    fig, ax = plt.subplots(figsize=(6.4, 6.0), subplot_kw={"projection": "polar"})
    ax.set_theta_offset(math.pi / 2)  # Writing at the top, then clockwise as FastChat draws it
    ax.set_theta_direction(-1)
    empty = [c for c in LABELS if table[c].isna().all()]
    for model, row in table.iterrows():
        values = [0.0 if pd.isna(row[c]) else float(row[c]) for c in LABELS]
        overall = row.get("overall", float("nan"))
        (line,) = ax.plot(closed, [*values, values[0]], lw=1.8, label=f"{model} ({overall:.2f})")
        ax.fill(closed, [*values, values[0]], color=line.get_color(), alpha=0.12)
    if paper_reference:
        values = [PAPER_RADAR["scores"][c] for c in LABELS]
        ax.plot(
            closed, [*values, values[0]], ls="--", lw=1.2, color="0.45", label=PAPER_RADAR["label"]
        )
    ax.set_xticks(angles)
    ax.set_xticklabels([f"{c}\n(none)" if c in empty else c for c in LABELS], fontsize=9)
    ax.set_ylim(0, 10)
    ax.set_yticks([2, 4, 6, 8, 10])
    ax.set_yticklabels(["2", "4", "6", "8", "10"], fontsize=7, color="0.4")
    ax.set_title(f"MT-Bench by category\njudge: {judge}", fontsize=9, pad=32)
    ax.legend(
        title="model (overall mean)",
        fontsize=7,
        title_fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.08),
        ncol=2,
    )
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scores", required=True, help="scores.csv (distill.eval.mtbench score)")
    parser.add_argument(
        "--judge", required=True, help="the judge, its mode and scale, for the title"
    )
    parser.add_argument("--paper-reference", action="store_true", help="draw the KD-DAE polygon")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    log = setup_logging()
    table = read_scores(args.scores)
    save_figure(radar(table, args.judge, args.paper_reference), args.out)
    log.info("%d models -> %s", len(table), args.out)


if __name__ == "__main__":
    main_guard(main)

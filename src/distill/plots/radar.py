"""MT-Bench by category: one polygon per model over FastChat's eight categories, radius 0-10.

    python -m distill.plots.radar --scores results/eval/mtbench/seed0/scores.csv \\
        --scores results/eval/mtbench/seed1/scores.csv \\
        --judge "teacher (in-process, expected rating)" --paper-reference \\
        --judge-check results/eval/judge_check.csv --min-accuracy 0.7 \\
        --out results/figures/radar.png

Reads the scores tables of `distill.eval.mtbench score`, one per replicate seed (one row per
model, a column per category label); a polygon is the mean over seeds, with the 95 % t-interval
shaded where there are ≥ 2 seeds. The judge check's line (distill.eval.judge_check.summary_line)
is printed above the title. Writes the PNG and a PDF beside it. A category with no judged
question (a subset that leaves it out) is drawn at 0 and marked "(none)" on its axis. With
--paper-reference, the KD-DAE paper's Flip-2x7B-Instruct-β is drawn as a dashed grey polygon
(GPT-4 judge: another scale).
"""

from __future__ import annotations

import argparse
import math
import textwrap

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from distill.eval.judge_check import summary_line  # noqa: E402
from distill.eval.mtbench import CATEGORY_LABELS  # noqa: E402
from distill.io import InputError, main_guard, setup_logging  # noqa: E402
from distill.plots.common import format_interval, mean_interval, save_figure  # noqa: E402

LABELS = list(CATEGORY_LABELS.values())  # FastChat's order: Writing, Roleplay, ..., Humanities

# KD-DAE (arXiv 2406.19112), MT-Bench by category of Flip-2x7B-Instruct-β with a GPT-4 judge,
# read off the published radar plot (repository flipkart-incubator/kd-dae,
# assets/images/radar_plot.png) to about ±0.2.
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


def over_seeds(tables: list[pd.DataFrame]) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """{model: (mean (9,), 95 % half-width (9,), n)} over the seeds' tables, for the columns
    LABELS + overall, in the first table's model order."""
    columns = [*LABELS, "overall"]
    out = {}
    for model in dict.fromkeys(m for t in tables for m in t.index):
        values = np.array(
            [t.loc[model, columns].to_numpy(float) for t in tables if model in t.index]
        )
        out[model] = mean_interval(values)
    return out


def radar(tables: list[pd.DataFrame], judge: str, paper_reference: bool = False, note: str = ""):
    """The figure: a polar axis with one closed polygon per model (categories LABELS), the mean
    over seeds with its interval shaded; `note` is printed under the title."""
    angles = [2 * math.pi * i / len(LABELS) for i in range(len(LABELS))]
    closed = [*angles, angles[0]]
    fig, ax = plt.subplots(figsize=(6.4, 6.0), subplot_kw={"projection": "polar"})
    ax.set_theta_offset(math.pi / 2)  # Writing at the top, then clockwise as FastChat draws it
    ax.set_theta_direction(-1)
    empty = [c for c in LABELS if all(t[c].isna().all() for t in tables)]
    for model, (mean, half, n) in over_seeds(tables).items():
        values = np.nan_to_num(mean[:-1])
        overall = format_interval(mean[-1], half[-1], n, digits=2)
        (line,) = ax.plot(closed, [*values, values[0]], lw=1.8, label=f"{model} ({overall})")
        if n >= 2:
            low, high = np.nan_to_num(values - half[:-1]), np.nan_to_num(values + half[:-1])
            ax.fill_between(
                closed, [*low, low[0]], [*high, high[0]], color=line.get_color(), alpha=0.15, lw=0
            )
        else:
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
    title = f"MT-Bench by category\njudge: {judge}"
    ax.set_title(title, fontsize=9, pad=32)
    if note:
        fig.text(
            0.5,
            1.03,
            textwrap.fill(note, 110),
            ha="center",
            va="bottom",
            fontsize=7,
            color="darkred" if "cannot rank" in note else "0.3",
        )
    ax.legend(
        title="model (overall mean ± 95 % interval, n seeds)",
        fontsize=7,
        title_fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.08),
        ncol=2,
    )
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scores", action="append", required=True, help="scores.csv, per seed")
    parser.add_argument(
        "--judge", required=True, help="the judge, its mode and scale, for the title"
    )
    parser.add_argument("--paper-reference", action="store_true", help="draw the KD-DAE polygon")
    parser.add_argument("--judge-check", help="judge_check.csv (distill.eval.judge_check)")
    parser.add_argument("--min-accuracy", type=float, help="eval.judge.min_accuracy")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    log = setup_logging()
    tables = [read_scores(path) for path in args.scores]
    note = ""
    if args.judge_check:
        note = summary_line(args.judge_check, args.min_accuracy, ["mtbench"])
    save_figure(radar(tables, args.judge, args.paper_reference, note), args.out)
    log.info("%d models, %d seeds -> %s", len(tables[0]), len(tables), args.out)


if __name__ == "__main__":
    main_guard(main)

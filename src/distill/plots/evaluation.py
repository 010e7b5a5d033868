"""MT-Bench against AlpacaEval win rate, one point per model, beside the KD-DAE paper's numbers.

    python -m distill.plots.evaluation --mtbench results/eval/mtbench/scores.csv \\
        --alpaca results/eval/alpaca/leaderboard.csv \\
        --judge "teacher (in-process; MT-Bench expected rating, AlpacaEval P(m)/P(M))" \\
        --reference teacher --out results/figures/evaluation.png

x: AlpacaEval win rate (%) against the reference outputs, with its standard error; y: MT-Bench
overall (mean over both turns, 1-10). Models are matched by name (the `model` column of
scores.csv, the `generator` column of leaderboard.csv); a model in only one table is left out
with a warning. The KD-DAE paper's published points are drawn as hollow grey diamonds, labelled:
their MT-Bench is GPT-4-judged and their AlpacaEval is AlpacaEval 1.0 (against text-davinci-003,
GPT-4 annotator), so they are on another scale than ours; the figure says so in a note.
Writes the PNG and a PDF beside it.
"""

from __future__ import annotations

import argparse
import textwrap

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from distill.io import InputError, main_guard, setup_logging  # noqa: E402
from distill.plots.training_curves import save_figure  # noqa: E402

# KD-DAE (arXiv 2406.19112; repository flipkart-incubator/kd-dae, assets/images/evaluation.png):
# (model, MT-Bench with a GPT-4 judge, AlpacaEval 1.0 win rate % vs text-davinci-003 with a GPT-4
# annotator). Mistral-Instruct v0.2 (MT-Bench 7.6) has no AlpacaEval number there.
PAPER_POINTS = [
    ("Flip-7B-Instruct-α", 7.58, 90.17),
    ("Flip-7B-Instruct-β", 7.70, 91.60),
    ("Flip-2x7B-Instruct-α", 7.70, 92.67),
    ("Flip-2x7B-Instruct-β", 7.90, 93.04),
    ("Zephyr 7B", 7.34, 90.60),
    ("Llama2-Chat 70B", 6.86, 92.66),
    ("Vicuna v1.3 33B", 7.12, 88.99),
    ("GPT-3.5-turbo", 7.94, 89.37),
    ("Claude 2", 8.06, 91.36),
    ("GPT-4", 8.99, 95.28),
]
# Where each label sits beside its point in the zoomed panel (offset in points, alignment): the
# points lie close together, so the places are chosen by hand.
PAPER_LABEL_PLACES = {
    "Flip-7B-Instruct-α": (-5, 2, "right"),
    "Flip-7B-Instruct-β": (0, 6, "center"),
    "Flip-2x7B-Instruct-α": (5, -6, "left"),
    "Flip-2x7B-Instruct-β": (5, 3, "left"),
    "Zephyr 7B": (5, -5, "left"),
    "Llama2-Chat 70B": (5, -3, "left"),
    "Vicuna v1.3 33B": (5, -4, "left"),
    "GPT-3.5-turbo": (0, 6, "center"),
    "Claude 2": (0, 6, "center"),
    "GPT-4": (-6, -2, "right"),
}
PAPER_NOTE = (
    "Grey diamonds: the KD-DAE paper's published numbers (arXiv 2406.19112): MT-Bench judged by "
    "GPT-4; AlpacaEval 1.0, win rate against text-davinci-003 with a GPT-4 annotator "
    "(Mistral-Instruct v0.2, MT-Bench 7.6, has none). Coloured points: ours, MT-Bench judged by "
    "{judge}, AlpacaEval against {reference}'s outputs with the same judge. Not the same scale."
)


def read_tables(mtbench_csv: str, alpaca_csv: str) -> pd.DataFrame:
    """One row per model in both tables: overall (MT-Bench), win_rate, standard_error."""
    scores = pd.read_csv(mtbench_csv)
    board = pd.read_csv(alpaca_csv)
    for path, frame, keys in (
        (mtbench_csv, scores, ["model", "overall"]),
        (alpaca_csv, board, ["generator", "win_rate", "standard_error"]),
    ):
        missing = [k for k in keys if k not in frame.columns]
        if missing:
            raise InputError(
                f"{path}: no column {', '.join(missing)}. Fix: pass the tables written by "
                "`distill.eval.mtbench score` and `distill.eval.alpaca score`."
            )
    board = board.rename(columns={"generator": "model"})
    joined = scores[["model", "overall"]].merge(
        board[["model", "win_rate", "standard_error"]], on="model", how="outer", indicator=True
    )
    alone = joined[joined["_merge"] != "both"]["model"].tolist()
    if alone:
        setup_logging().warning("models in only one of the tables, left out: %s", alone)
    both = joined[joined["_merge"] == "both"].drop(columns="_merge")
    if both.empty:
        raise InputError(
            f"{mtbench_csv} and {alpaca_csv} share no model. Fix: evaluate the same models."
        )
    return both.reset_index(drop=True)


def evaluation(points: pd.DataFrame, judge: str, reference: str, paper: bool = True):
    """The figure: MT-Bench (y) against AlpacaEval win rate (x), ours and the paper's.

    Left: every point on the full scales (0-100 %, 0-10). Right (with `paper`): the paper's
    points, close together near the top right, zoomed and labelled.
    """
    if paper:
        fig, (ax, zoom) = plt.subplots(
            1, 2, figsize=(10.0, 5.2), gridspec_kw={"width_ratios": [1.6, 1]}
        )
    else:
        fig, ax = plt.subplots(figsize=(6.6, 5.2))
    paper_style = {"marker": "D", "s": 22, "facecolors": "none", "edgecolors": "0.45", "lw": 0.9}
    if paper:
        wr = [p[2] for p in PAPER_POINTS]
        mt = [p[1] for p in PAPER_POINTS]
        ax.scatter(wr, mt, label="KD-DAE paper (another scale; right)", **paper_style)
        zoom.scatter(wr, mt, **paper_style)
        for name, y, x in PAPER_POINTS:
            dx, dy, ha = PAPER_LABEL_PLACES[name]
            zoom.annotate(
                name,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                fontsize=6.5,
                color="0.3",
            )
        zoom.set_xlim(87.5, 97.5)
        zoom.set_ylim(6.6, 9.3)
        zoom.set_xlabel("AlpacaEval 1.0 win rate vs text-davinci-003 (%)", fontsize=8)
        zoom.set_ylabel("MT-Bench (GPT-4 judge)", fontsize=8)
        zoom.set_title("KD-DAE paper, published (zoomed)", fontsize=9)
        zoom.tick_params(labelsize=7)
        zoom.grid(alpha=0.3)
    for i, (_, row) in enumerate(points.iterrows()):
        ax.errorbar(
            row["win_rate"],
            row["overall"],
            xerr=row["standard_error"],
            fmt="o",
            ms=6,
            capsize=3,
            label=row["model"],
        )
        # alternate the label above/below: models can land on nearly the same point
        ax.annotate(
            row["model"],
            (row["win_rate"], row["overall"]),
            textcoords="offset points",
            xytext=(5, 6 if i % 2 else -11),
            fontsize=8,
        )
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 10)
    ax.set_xlabel(f"AlpacaEval win rate against {reference} (%)")
    ax.set_ylabel("MT-Bench overall (1-10)")
    ax.set_title(f"MT-Bench vs AlpacaEval\njudge: {judge}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if paper:
        note = PAPER_NOTE.format(judge=judge, reference=reference)
        fig.text(0.01, -0.01, textwrap.fill(note, 160), fontsize=6.5, va="top", color="0.3")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mtbench", required=True, help="scores.csv (distill.eval.mtbench score)")
    parser.add_argument("--alpaca", required=True, help="leaderboard.csv (distill.eval.alpaca)")
    parser.add_argument("--judge", required=True, help="the judge and its modes, for the title")
    parser.add_argument("--reference", required=True, help="whose outputs AlpacaEval compares to")
    parser.add_argument("--no-paper", action="store_true", help="leave out the paper's points")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    log = setup_logging()
    points = read_tables(args.mtbench, args.alpaca)
    save_figure(evaluation(points, args.judge, args.reference, not args.no_paper), args.out)
    log.info("%d models -> %s", len(points), args.out)


if __name__ == "__main__":
    main_guard(main)

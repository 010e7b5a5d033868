"""MT-Bench against AlpacaEval win rate, one point per model, beside math accuracy and the
KD-DAE paper's numbers.

    python -m distill.plots.evaluation --mtbench results/eval/mtbench/seed0/scores.csv \\
        --alpaca results/eval/alpaca/seed0/leaderboard.csv \\
        --math sft=results/eval/domains/sft/seed0.json \\
        --judge "teacher (in-process; MT-Bench expected rating, AlpacaEval P(m)/P(M))" \\
        --reference teacher --judge-check results/eval/judge_check.csv --min-accuracy 0.7 \\
        --table results/eval/summary.csv --out results/figures/evaluation.png

--mtbench and --alpaca are given once per replicate seed, --math as label=path once per seed.
x: AlpacaEval win rate (%) against the reference outputs; y: MT-Bench overall (mean over both
turns, 1-10); each the mean over seeds with its 95 % t-interval as error bars (one seed: the win
rate's standard error, no y bar). A bar panel beside it shows each model's exact-match math
accuracy on the math test split (distill.eval.domains), mean over seeds with its interval, and
the judge check's line (distill.eval.judge_check.summary_line) is printed above the figure.
--table writes the same numbers per model (mean, half-width, n). Models are matched by name
(the `model` column of scores.csv, the `generator` column of leaderboard.csv); a model in only
one table is left out with a warning. The KD-DAE paper's published points are drawn as hollow
grey diamonds, labelled: their MT-Bench is GPT-4-judged and their AlpacaEval is AlpacaEval 1.0
(against text-davinci-003, GPT-4 annotator), so they are on another scale than ours (a note).
Writes the PNG and a PDF beside it.
"""

from __future__ import annotations

import argparse
import textwrap

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from distill.eval.judge_check import summary_line  # noqa: E402
from distill.io import InputError, atomic_path, main_guard, setup_logging  # noqa: E402
from distill.plots.common import mean_interval, parse_runs, save_figure  # noqa: E402

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


def math_accuracy(specs: list[str]) -> dict[str, list[float]]:
    """{label: [exact-match accuracy of each seed]} from distill.eval.domains result files."""
    from distill.eval.domains import read_result

    return {
        label: [read_result(path)["accuracy_all"] for path in paths]
        for label, paths in parse_runs(specs, "--math").items()
    }


def summary(per_seed: list[pd.DataFrame], math: dict[str, list[float]]) -> pd.DataFrame:
    """One row per model: mean, 95 % half-width and n over seeds of MT-Bench overall, AlpacaEval
    win rate and math accuracy; win_rate_se is the one seed's standard error when n = 1."""
    models = list(dict.fromkeys(m for t in per_seed for m in t["model"]))
    rows = []
    for model in models:
        seeds = [t[t["model"] == model].iloc[0] for t in per_seed if model in set(t["model"])]
        row = {"model": model}
        for key in ("overall", "win_rate"):
            mean, half, n = mean_interval(np.array([[s[key]] for s in seeds]))
            row |= {key: mean[0], f"{key}_ci95": half[0], "n_seeds": n}
        row["win_rate_se"] = seeds[0]["standard_error"] if len(seeds) == 1 else np.nan
        acc = math.get(model, [])
        mean, half, n = mean_interval(np.array([acc]).T) if acc else ([np.nan], [np.nan], 0)
        row |= {"math_accuracy": mean[0], "math_accuracy_ci95": half[0], "math_n_seeds": n}
        rows.append(row)
    return pd.DataFrame(rows)


def evaluation(points: pd.DataFrame, judge: str, reference: str, paper: bool = True, note=""):
    """The figure: MT-Bench (y) against AlpacaEval win rate (x) per model (`summary` rows), the
    models' math accuracy as bars, and (with `paper`) the paper's points zoomed and labelled;
    `note` (the judge check) is printed above."""
    widths = [1.6, 0.8, 1] if paper else [1.6, 0.8]
    fig, axes = plt.subplots(
        1, len(widths), figsize=(4.2 * sum(widths), 5.2), gridspec_kw={"width_ratios": widths}
    )
    ax, bars = axes[0], axes[1]
    paper_style = {"marker": "D", "s": 22, "facecolors": "none", "edgecolors": "0.45", "lw": 0.9}
    if paper:
        wr, mt = [p[2] for p in PAPER_POINTS], [p[1] for p in PAPER_POINTS]
        ax.scatter(wr, mt, label="KD-DAE paper (another scale; right)", **paper_style)
        draw_paper_zoom(axes[2], paper_style)
    for i, (_, row) in enumerate(points.iterrows()):
        xerr = row["win_rate_ci95"] if row["n_seeds"] >= 2 else row["win_rate_se"]
        yerr = row["overall_ci95"] if row["n_seeds"] >= 2 else None
        ax.errorbar(
            row["win_rate"],
            row["overall"],
            xerr=xerr,
            yerr=yerr,
            fmt="o",
            ms=6,
            capsize=3,
            label=f"{row['model']} (n={row['n_seeds']})",
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
    draw_math_bars(bars, points)
    if note:
        fig.suptitle(
            textwrap.fill(note, 150),
            fontsize=7.5,
            y=1.0,
            va="bottom",
            color="darkred" if "cannot rank" in note else "0.3",
        )
    if paper:
        text = PAPER_NOTE.format(judge=judge, reference=reference)
        fig.text(0.01, -0.01, textwrap.fill(text, 170), fontsize=6.5, va="top", color="0.3")
    fig.tight_layout()
    return fig


def draw_math_bars(ax, points: pd.DataFrame) -> None:
    """Exact-match math accuracy per model: mean bars with 95 % interval error bars."""
    known = points[points["math_n_seeds"] > 0]
    ax.bar(
        known["model"],
        100 * known["math_accuracy"],
        color="0.6",
        yerr=100 * known["math_accuracy_ci95"].fillna(0),
        capsize=3,
    )
    for x, (_, row) in enumerate(known.iterrows()):
        ax.annotate(
            f"{100 * row['math_accuracy']:.1f}",
            (x, 100 * row["math_accuracy"]),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=7,
        )
    ax.set_ylabel("exact-match accuracy on the math test split (%)", fontsize=8)
    ax.set_title("Math accuracy (no judge)", fontsize=9)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.set_ylim(0, max(10.0, 100 * float(known["math_accuracy"].max() or 0) * 1.3))
    ax.grid(alpha=0.3, axis="y")


def draw_paper_zoom(zoom, paper_style: dict) -> None:
    """The paper's points, close together near the top right, zoomed and labelled."""
    zoom.scatter([p[2] for p in PAPER_POINTS], [p[1] for p in PAPER_POINTS], **paper_style)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mtbench", action="append", required=True, help="scores.csv, per seed")
    parser.add_argument("--alpaca", action="append", required=True, help="leaderboard, per seed")
    parser.add_argument("--math", action="append", default=[], help="label=domains json, per seed")
    parser.add_argument("--judge", required=True, help="the judge and its modes, for the title")
    parser.add_argument("--reference", required=True, help="whose outputs AlpacaEval compares to")
    parser.add_argument("--no-paper", action="store_true", help="leave out the paper's points")
    parser.add_argument("--judge-check", help="judge_check.csv (distill.eval.judge_check)")
    parser.add_argument("--min-accuracy", type=float, help="eval.judge.min_accuracy")
    parser.add_argument("--table", help="CSV of the per-model numbers to write")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    log = setup_logging()
    if len(args.mtbench) != len(args.alpaca):
        raise InputError("--mtbench and --alpaca: give one file each per seed, in the same order.")
    per_seed = [read_tables(m, a) for m, a in zip(args.mtbench, args.alpaca, strict=True)]
    points = summary(per_seed, math_accuracy(args.math))
    note = ""
    if args.judge_check:
        note = summary_line(args.judge_check, args.min_accuracy, ["mtbench", "alpaca"])
    figure = evaluation(points, args.judge, args.reference, not args.no_paper, note)
    save_figure(figure, args.out)
    if args.table:
        with atomic_path(args.table) as tmp:
            points.round(4).to_csv(tmp, index=False)
    log.info("%d models, %d seeds -> %s", len(points), len(per_seed), args.out)


if __name__ == "__main__":
    main_guard(main)

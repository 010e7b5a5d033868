"""Training curves: loss against optimizer step per run label, over replicate seeds.

    python -m distill.plots.training_curves \
        --runs sft=results/models/student_sft/seed0/train_log.csv \
        --runs sft=results/models/student_sft/seed1/train_log.csv \
        --runs kd=results/models/student_kd/seed0/train_log.csv --title "Training" \
        --out results/figures/training_curves.png

The same label once per seed: with n ≥ 2 runs a label is its mean with a 95 % t-interval band
(distill.plots.common), with n = 1 the single run; the legend says n. Solid lines: the training
loss of each step; markers with error bars: the held-out cross-entropy where the runs measured it
(`valid_ce`). Writes the PNG and a PDF beside it.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402

from distill.io import main_guard, setup_logging  # noqa: E402
from distill.plots.common import (  # noqa: E402
    aligned,
    draw_curve,
    format_interval,
    mean_interval,
    parse_runs,
    read_csv,
    save_figure,
)

HINT = "Fix: pass a train_log.csv written by `python -m distill.train`."


def read_log(path: str):
    return read_csv(path, ["step", "loss"], HINT)


def draw_label(ax, label: str, paths: list[str], log) -> None:
    """One label's training loss (band over seeds) and held-out CE (error bars over seeds)."""
    frames = [read_log(p) for p in paths]
    steps, losses = aligned(frames, "step", "loss")
    line = draw_curve(ax, steps, losses, f"{label} train loss")
    if all("valid_ce" in f for f in frames):
        valid_steps, valid = aligned(frames, "step", "valid_ce")
        mean, half, n = mean_interval(valid)
        yerr = None if n < 2 else half
        style = {"fmt": "o--", "capsize": 3, "color": line.get_color(), "alpha": 0.7}
        ax.errorbar(valid_steps, mean, yerr=yerr, label=f"{label} held-out CE (n={n})", **style)
    final, half, n = mean_interval(losses[:, -1:])
    log.info("%s: %d runs, final loss %s", label, n, format_interval(final[0], half[0], n, 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs",
        nargs="+",
        action="extend",
        required=True,
        help="label=path/to/train_log.csv, the same label once per seed",
    )
    parser.add_argument("--title", default="Training curves")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    log = setup_logging()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, paths in parse_runs(args.runs).items():
        draw_label(ax, label, paths, log)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (token mean, nats)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, args.out)


if __name__ == "__main__":
    main_guard(main)

"""Training curves: loss against optimizer step for one or more runs (train_log.csv files).

    python -m distill.plots.training_curves --runs sft=results/models/student_sft/train_log.csv \
        kd=results/models/student_kd/train_log.csv --title "Training" \
        --out results/figures/training_curves.png

Writes the PNG and a PDF beside it. Solid lines: the training loss of each step; markers: the
held-out cross-entropy where the run measured it (`valid_ce`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from distill.io import InputError, atomic_path, main_guard, setup_logging  # noqa: E402


def save_figure(fig, png: str | Path) -> None:
    """Save `fig` as PNG and as PDF beside it, both atomically."""
    png = Path(png)
    for path in (png, png.with_suffix(".pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(fig)


def read_log(path: str) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = {"step", "loss"} - set(frame.columns)
    if missing:
        raise InputError(f"{path}: not a train_log.csv (no column {sorted(missing)}).")
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="label=path/to/train_log.csv")
    parser.add_argument("--title", default="Training curves")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    log = setup_logging()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for spec in args.runs:
        label, _, path = spec.partition("=")
        frame = read_log(path)
        (line,) = ax.plot(frame["step"], frame["loss"], label=f"{label} (train loss)")
        if "valid_ce" in frame:
            valid = frame.dropna(subset=["valid_ce"])
            ax.plot(valid["step"], valid["valid_ce"], "o--", color=line.get_color(), alpha=0.7,
                    label=f"{label} (held-out CE)")  # fmt: skip
        log.info("%s: %d rows, final loss %.4f", label, len(frame), frame["loss"].iloc[-1])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (token mean, nats)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, args.out)


if __name__ == "__main__":
    main_guard(main)

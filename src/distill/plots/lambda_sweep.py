"""The λ' sweep figure (seed 001): loss and held-out CE gap against training compute, per λ'.

    python -m distill.plots.lambda_sweep \
        --runs 0=results/models/sweep/lambda_0/train_log.csv \
               2=results/models/sweep/lambda_2/train_log.csv \
        --smooth 5 --title "SmolLM2-135M-Instruct -> 6.8M student" \
        --out results/figures/lambda_sweep.png

Left: the total training objective (`loss`: λ·(CE_student − CE_teacher) + λ'·feedback KL, what the
seed plots) against training FLOPs (log x), one curve per λ', a running mean over `--smooth`
logged steps. Its meaning changes with λ' (λ' adds a non-negative term), so the right panel is
the fair comparison: the held-out CE_student − CE_teacher (`heldout_ce_gap`, measured by the
objective on a fixed held-out slice) against the training FLOPs spent when it was measured. The
seed's published losses (at its x = 200) are printed under the figure for reference: another
teacher, student and x axis, so only the ordering compares. Writes the PNG and a PDF beside it.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from distill.io import InputError, main_guard, setup_logging  # noqa: E402
from distill.plots.training_curves import save_figure  # noqa: E402

# /work/shared/PUBLISHED.md, "The λ' sweep": loss at the seed's compute 200, per λ'.
PUBLISHED = {0: 0.66, 0.5: 0.46, 1: 0.32, 2: 0.15, 3: 0.09}
NEEDED = ["step", "flops", "loss", "heldout_step", "heldout_ce_gap"]


def read_run(path: str) -> pd.DataFrame:
    """A feedback run's train_log.csv, checked for the columns the figure needs."""
    try:
        frame = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError) as error:
        raise InputError(f"{path}: cannot read a train_log.csv ({error}).") from None
    missing = [c for c in NEEDED if c not in frame.columns]
    if missing:
        raise InputError(
            f"{path}: no column {missing}; is it a run of `distill.train --objective feedback`? "
            "Fix: rerun the sweep's training rule for it."
        )
    return frame


def smoothed(values: pd.Series, window: int) -> pd.Series:
    """Trailing running mean over `window` rows (the first rows average what there is)."""
    return values.rolling(window, min_periods=1).mean()


def heldout_points(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per held-out evaluation (the log repeats the latest one on every row), with the
    training FLOPs spent when it was made: those of the row whose `step` is its `heldout_step`
    (interpolated when that row was not logged; 0 before the first step)."""
    points = frame.dropna(subset=["heldout_step"]).drop_duplicates("heldout_step")
    steps = np.concatenate([[0.0], frame["step"].to_numpy(float)])
    flops = np.concatenate([[0.0], frame["flops"].to_numpy(float)])
    at = np.interp(points["heldout_step"].to_numpy(float), steps, flops)
    return pd.DataFrame(
        {"heldout_step": points["heldout_step"].to_numpy(), "heldout_flops": at,
         "heldout_ce_gap": points["heldout_ce_gap"].to_numpy()}
    )  # fmt: skip


def parse_runs(specs: list[str]) -> list[tuple[float, str]]:
    runs = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        try:
            runs.append((float(label), path))
        except ValueError:
            sep = ""
        if not sep:
            raise InputError(f"--runs {spec}: expected LAMBDA_PRIME=path/to/train_log.csv.")
    return sorted(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="λ'=path/to/train_log.csv")
    parser.add_argument("--smooth", type=int, default=5, help="running-mean window (rows)")
    parser.add_argument("--title", default="Teacher-feedback SFT: the λ' sweep")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    log = setup_logging()
    if args.smooth < 1:
        raise InputError(f"--smooth {args.smooth}: the running-mean window must be >= 1.")

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.get_cmap("viridis")
    runs = parse_runs(args.runs)
    initial_gaps = []
    for i, (lam_prime, path) in enumerate(runs):
        frame = read_run(path)
        color = colors(i / max(len(runs) - 1, 1))
        label = f"λ' = {lam_prime:g}"
        left.plot(frame["flops"], smoothed(frame["loss"], args.smooth), color=color, label=label)
        points = heldout_points(frame)
        # Log x has no 0: the evaluation before the first step (the same initial model in every
        # run) is drawn as a horizontal line instead.
        initial_gaps += points.loc[points["heldout_flops"] == 0, "heldout_ce_gap"].tolist()
        later = points[points["heldout_flops"] > 0]
        right.plot(later["heldout_flops"], later["heldout_ce_gap"], "o-", color=color,
                   markersize=3, label=label)  # fmt: skip
        log.info(
            "λ'=%g: %d rows, final loss %.4f, last held-out gap %.4f (%d evaluations)",
            lam_prime, len(frame), frame["loss"].iloc[-1],
            points["heldout_ce_gap"].iloc[-1], len(points),
        )  # fmt: skip
    if initial_gaps:
        right.axhline(initial_gaps[0], color="grey", ls=":", lw=1, label="at initialisation")

    left.set_xlabel("training FLOPs (student fwd+bwd, sampling, teacher forwards)")
    left.set_ylabel("loss: total objective [nats/token]")
    left.set_title(f"training objective (running mean of {args.smooth} steps)", fontsize=10)
    right.set_xlabel("training FLOPs when measured")
    right.set_ylabel("held-out CE_student − CE_teacher [nats/token]")
    right.set_title("held-out gap to the teacher (fair across λ')", fontsize=10)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels crowd a short log range
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    published = ", ".join(f"λ'={k:g}: {v:.2f}" for k, v in PUBLISHED.items())
    note = (
        f"Seed 001 (Llama-3.1-8B → 0.27B student, x = its unitless compute), loss at x = 200: "
        f"{published}. Other models and x axis: compare the ordering only."
    )
    fig.text(0.01, -0.03, note, fontsize=8, ha="left")
    fig.suptitle(args.title)
    save_figure(fig, args.out)
    log.info("wrote %s (+ .pdf)", args.out)


if __name__ == "__main__":
    main_guard(main)

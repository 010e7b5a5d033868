"""The λ' sweep figure (the teacher-feedback source work, "Knowledge distillation of large language
models"): loss and held-out CE gap against training compute, per λ', over replicate seeds.

    python -m distill.plots.lambda_sweep \
        --runs 0=results/models/sweep/lambda_0/seed0/train_log.csv \
        --runs 0=results/models/sweep/lambda_0/seed1/train_log.csv \
        --runs 2=results/models/sweep/lambda_2/seed0/train_log.csv \
        --runs 2=results/models/sweep/lambda_2/seed1/train_log.csv \
        --teacher-metrics results/eval/sweep_teacher.json \
        --smooth 5 --title "Llama-3.1-8B-Instruct -> 0.27B student" \
        --out results/figures/lambda_sweep.png

The same λ' once per seed: with n ≥ 2 runs a λ' is its mean with a 95 % t-interval band
(distill.plots.common), with n = 1 the single run. Left: the total training objective (`loss`:
λ·(CE_student − CE_teacher + λ'·feedback KL), what the source plots) against training FLOPs (log
x), a running mean over `--smooth` logged steps. Its meaning changes with λ' (λ' adds a
non-negative term), so the right panel is the fair comparison: the held-out CE_student −
CE_teacher (`heldout_ce_gap`, measured by the objective on a fixed held-out slice) against the
training FLOPs spent when it was measured. Seeds are aligned on the step; x is their mean FLOPs.

Under the plot: whether the teacher knows the math better than the student — the sweep
teacher's CE and exact-match accuracy on the sweep's test split (`--teacher-metrics`, the JSON of
distill.eval.domains), its CE on the runs' held-out slice, and the λ' = 0 student's final
held-out CE with its interval — and the source's published losses (docs/published.md, "The λ'
sweep"; another teacher, student and x axis: compare the ordering only). Writes PNG + PDF.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from distill.io import InputError, main_guard, setup_logging  # noqa: E402
from distill.plots.common import (  # noqa: E402
    add_note,
    aligned,
    draw_curve,
    format_interval,
    mean_interval,
    parse_runs,
    read_csv,
    save_figure,
)

# docs/published.md, "The λ' sweep": the source's loss at its compute 200, per λ'.
PUBLISHED = {0: 0.66, 0.5: 0.46, 1: 0.32, 2: 0.15, 3: 0.09}
NEEDED = ["step", "flops", "loss", "heldout_step", "heldout_ce_gap"]
HINT = "Is it a run of `distill.train --objective feedback`? Fix: rerun the sweep's training rule."


def read_run(path: str) -> pd.DataFrame:
    """A feedback run's train_log.csv, checked for the columns the figure needs."""
    return read_csv(path, NEEDED, HINT)


def smoothed(values: pd.Series, window: int) -> pd.Series:
    """Trailing running mean over `window` rows (the first rows average what there is)."""
    return values.rolling(window, min_periods=1).mean()


def heldout_points(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per held-out evaluation (the log repeats the latest one on every row), with the
    training FLOPs spent when it was made: those of the row whose `step` is its `heldout_step`
    (interpolated when that row was not logged; 0 before the first step)."""
    columns = [
        c for c in ("heldout_ce_gap", "heldout_ce_student", "heldout_ce_teacher") if c in frame
    ]
    points = frame.dropna(subset=["heldout_step"]).drop_duplicates("heldout_step")
    steps = np.concatenate([[0.0], frame["step"].to_numpy(float)])
    flops = np.concatenate([[0.0], frame["flops"].to_numpy(float)])
    at = np.interp(points["heldout_step"].to_numpy(float), steps, flops)
    out = pd.DataFrame({"heldout_step": points["heldout_step"].to_numpy(), "heldout_flops": at})
    for column in columns:
        out[column] = points[column].to_numpy()
    return out


def parse_lambda_runs(specs: list[str]) -> dict[float, list[str]]:
    """`λ'=path` specs (one per seed) -> {λ': [path, ...]} sorted by λ'."""
    runs: dict[float, list[str]] = {}
    for label, paths in parse_runs(specs).items():
        try:
            runs.setdefault(float(label), []).extend(paths)
        except ValueError:
            raise InputError(
                f"--runs {label}=...: the label must be the run's λ' (a number), e.g. "
                "--runs 0.5=results/models/sweep/lambda_0.5/seed0/train_log.csv."
            ) from None
    return dict(sorted(runs.items()))


def _pooled(value, weights: dict | None) -> float:
    """A number; or a {domain: value} dict: its "all" entry when it has one (distill.eval.domains
    pools CE over tokens there), else pooled with weights {domain: n} (else a plain mean)."""
    if not isinstance(value, dict):
        return float(value)
    if "all" in value:
        return float(value["all"])
    weights = weights or dict.fromkeys(value, 1)
    total = sum(weights.get(d, 0) for d in value)
    return sum(float(v) * weights.get(d, 0) for d, v in value.items()) / total


def read_teacher_metrics(path: str) -> dict[str, float]:
    """{"ce", "accuracy"} of the sweep teacher on the sweep's test split, from the JSON of
    distill.eval.domains ({"ce": {domain | "all": CE}, "accuracy": {domain: share},
    "accuracy_all", "n": {domain: questions}}). Also read: `valid_ce` or `test_ce` for `ce`, or
    `ppl` (its log is the CE); numbers or {domain: value} dicts (pooled by `n`)."""
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"--teacher-metrics {path}: cannot read it as JSON ({error}).") from None
    n = metrics.get("n") if isinstance(metrics.get("n"), dict) else None
    ce_key = next((k for k in ("ce", "valid_ce", "test_ce") if k in metrics), None)
    ce = None
    if ce_key is not None:
        ce = _pooled(metrics[ce_key], n)
    elif "ppl" in metrics:
        ppl = metrics["ppl"]
        log_ppl = {d: math.log(p) for d, p in ppl.items()} if isinstance(ppl, dict) else None
        ce = _pooled(log_ppl, n) if log_ppl is not None else math.log(ppl)
    accuracy = metrics.get("accuracy_all", metrics.get("accuracy"))
    if ce is None or accuracy is None:
        raise InputError(
            f"--teacher-metrics {path}: needs `ce` (or `ppl`) and `accuracy`, has "
            f"{sorted(metrics)}. Fix: pass the JSON that distill.eval.domains wrote for the "
            "sweep teacher on the sweep's test split."
        )
    return {"ce": ce, "accuracy": _pooled(accuracy, n)}


def draw_lambda(left, right, lam_prime: float, frames: list[pd.DataFrame], smooth: int, color):
    """One λ': its smoothed loss (left) and held-out gap (right), mean and band over seeds.
    Returns the held-out points of each run."""
    label = f"λ' = {lam_prime:g}"
    smoothed_frames = [f.assign(loss=smoothed(f["loss"], smooth)) for f in frames]
    steps, loss = aligned(smoothed_frames, "step", "loss")
    _, flops = aligned(frames, "step", "flops")
    draw_curve(left, flops.mean(axis=0), loss, label, color=color)
    points = [heldout_points(f) for f in frames]
    # Log x has no 0: the evaluation before the first step (the same initial model in every
    # run) is drawn as a horizontal line instead.
    later = [p[p["heldout_flops"] > 0] for p in points]
    _, at = aligned(later, "heldout_step", "heldout_flops")
    _, gap = aligned(later, "heldout_step", "heldout_ce_gap")
    if gap.size:
        draw_curve(right, at.mean(axis=0), gap, label, color=color, marker="o", markersize=3)
    return points


def final_heldout(points: list[pd.DataFrame], column: str) -> str | None:
    """The runs' last held-out `column` as `mean ± half (n=…)`, or None if not logged."""
    if not all(column in p for p in points):
        return None
    mean, half, n = mean_interval(np.array([[p[column].iloc[-1]] for p in points]))
    return format_interval(mean[0], half[0], n)


def teacher_note(teacher: dict | None, points_at_zero: list[pd.DataFrame] | None) -> str:
    """The line that says whether the teacher knows the math better than the λ' = 0 student."""
    parts = []
    if teacher is not None:
        parts.append(
            f"sweep teacher on the test split: CE {teacher['ce']:.3f} nats/token, exact-match "
            f"accuracy {teacher['accuracy']:.1%}"
        )
    if points_at_zero and all(
        c in p for p in points_at_zero for c in ("heldout_ce_teacher", "heldout_ce_student")
    ):
        teacher_ce = float(np.mean([p["heldout_ce_teacher"].iloc[-1] for p in points_at_zero]))
        final = np.array([[p["heldout_ce_student"].iloc[-1]] for p in points_at_zero])
        means, halves, n = mean_interval(final)
        mean, half = float(means[0]), float(halves[0])
        # The experiment can test the claim only if the teacher is better than the student by
        # more than the student's interval (with one seed: than nothing).
        margin = half if np.isfinite(half) else 0.0
        verdict = "below" if teacher_ce < mean - margin else "NOT below"
        parts.append(
            f"on the runs' held-out slice: teacher CE {teacher_ce:.3f}, λ' = 0 student's final "
            f"CE {format_interval(mean, half, n)}: the teacher is {verdict} the student's interval"
        )
    return "; ".join(parts)


def decorate(fig, left, right, smooth: int, title: str, note: str) -> None:
    left.set_xlabel("training FLOPs (student fwd+bwd, sampling, teacher forwards)")
    left.set_ylabel("loss: total objective [nats/token]")
    left.set_title(f"training objective (running mean of {smooth} steps)", fontsize=10)
    right.set_xlabel("training FLOPs when measured")
    right.set_ylabel("held-out CE_student − CE_teacher [nats/token]")
    right.set_title("held-out gap to the teacher (fair across λ')", fontsize=10)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels crowd a short log range
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    published = ", ".join(f"λ'={k:g}: {v:.2f}" for k, v in PUBLISHED.items())
    source = (
        f"Source work (Llama 8B → 0.27B student, x = its unitless compute), loss at x = 200: "
        f"{published}. Other models and x axis: compare the ordering only."
    )
    add_note(fig, [note, source])
    fig.suptitle(title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", action="extend", required=True,
                        help="λ'=path/to/train_log.csv, the same λ' once per seed")  # fmt: skip
    parser.add_argument("--teacher-metrics", help="JSON of distill.eval.domains for the teacher")
    parser.add_argument(
        "--smooth", type=int, required=True, help="sweep.smooth: running-mean window"
    )
    parser.add_argument("--title", default="Teacher-feedback SFT: the λ' sweep")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    log = setup_logging()
    if args.smooth < 1:
        raise InputError(f"--smooth {args.smooth}: the running-mean window must be >= 1.")
    runs = parse_lambda_runs(args.runs)
    teacher = read_teacher_metrics(args.teacher_metrics) if args.teacher_metrics else None

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.get_cmap("viridis")
    points_by_lambda, initial_gaps = {}, []
    for i, (lam_prime, paths) in enumerate(runs.items()):
        frames = [read_run(p) for p in paths]
        color = colors(i / max(len(runs) - 1, 1))
        points = points_by_lambda[lam_prime] = draw_lambda(
            left, right, lam_prime, frames, args.smooth, color
        )
        initial_gaps += [
            g for p in points for g in p.loc[p["heldout_flops"] == 0, "heldout_ce_gap"]
        ]
        log.info("λ'=%g: %d runs, last held-out gap %s", lam_prime, len(paths),
                 final_heldout(points, "heldout_ce_gap"))  # fmt: skip
    if initial_gaps:
        # The mean over seeds: each seed's initial student is its own.
        right.axhline(np.mean(initial_gaps), color="grey", ls=":", lw=1, label="at initialisation")
    note = teacher_note(teacher, points_by_lambda.get(0.0))
    log.info("%s", note)
    decorate(fig, left, right, args.smooth, args.title, note)
    save_figure(fig, args.out)
    log.info("wrote %s (+ .pdf)", args.out)


if __name__ == "__main__":
    main_guard(main)

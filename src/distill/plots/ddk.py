"""DDK's figures: domain weights beside the perplexity ratios over training; per-domain perplexity
by method. Both take each run once per replicate seed (the same label repeated) and draw the mean
with a 95 % t-interval when n ≥ 2 (distill.plots.common).

    python -m distill.plots.ddk weights \
        --runs ddk=results/models/ddk/seed0/train_log.csv \
        --runs ddk=results/models/ddk/seed1/train_log.csv \
        --out results/figures/ddk_weights.png
    python -m distill.plots.ddk ppl --results teacher=results/eval/domains/teacher.json \
        --results sft=results/eval/domains/sft/seed0.json \
        --results sft=results/eval/domains/sft/seed1.json ... \
        --out results/figures/ddk_domain_ppl.png

Eq. 1 is a softmax of the ratios ℓ_S/ℓ_T: when they differ by more than about 5 it puts almost
all its mass on one domain (it "saturates"), and Eq. 2 then gives that domain α + (1 − α)/N and
every other (1 − α)/N whatever the other ratios say. The weights figure checks this at every
re-weighting of every run and says so under the plot, with the numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from distill.ddk import initial_domain_weights  # noqa: E402
from distill.io import InputError, main_guard, setup_logging  # noqa: E402
from distill.plots.common import (  # noqa: E402
    add_note,
    aligned,
    draw_curve,
    mean_interval,
    parse_runs,
    read_csv,
    save_figure,
)

# Eq. 1 "saturates" when its largest weight is at least this: the other domains share < 1 %.
SATURATED = 0.99


def read_ddk_log(path: str) -> tuple[pd.DataFrame, list[str]]:
    """A DDK run's re-weighting rows (those with weights) and its domains (sorted)."""
    frame = read_csv(path, ["step"], "Fix: pass the train_log.csv of a `--objective ddk` run.")
    domains = sorted(c.split("/", 1)[1] for c in frame.columns if c.startswith("weight/"))
    if not domains or not all(f"ratio/{d}" in frame for d in domains):
        raise InputError(
            f"{path}: no weight/<domain> and ratio/<domain> columns; is this a DDK run's log "
            "(modes ddk or no_smoothing)? Fix: pass the train_log.csv of such a run."
        )
    return frame.dropna(subset=[f"weight/{domains[0]}"]), domains


def saturation(updates: pd.DataFrame, domains: list[str]) -> list[dict]:
    """Re-weightings where Eq. 1 (softmax of the logged ratios) puts ≥ SATURATED on one domain:
    [{"step", "domain", "weight", "ratio_min", "ratio_max"}]."""
    found = []
    for _, row in updates.iterrows():
        ratios = np.array([row[f"ratio/{d}"] for d in domains], dtype=np.float64)
        eq1 = initial_domain_weights(ratios, np.ones_like(ratios))
        if eq1.max() >= SATURATED:
            found.append({"step": int(row["step"]) - 1, "domain": domains[int(eq1.argmax())],
                          "weight": float(eq1.max()), "ratio_min": float(ratios.min()),
                          "ratio_max": float(ratios.max())})  # fmt: skip
    return found


def saturation_note(label: str, found: list[dict], total: int) -> str:
    """One sentence: does Eq. 1 saturate in these runs, with the numbers of the last case."""
    if not found:
        return (
            f"{label}: Eq. 1 does not saturate (its largest weight stays < {SATURATED}) in "
            f"{total} re-weightings (all seeds)."
        )
    last = found[-1]
    return (
        f"{label}: Eq. 1 SATURATES in {len(found)} of {total} re-weightings (all seeds): e.g. at "
        f"step {last['step']} softmax(ℓ_S/ℓ_T) puts {last['weight']:.4f} on {last['domain']} "
        f"(ratios {last['ratio_min']:.3g}–{last['ratio_max']:.3g}), so the weights are "
        "α on one domain + (1 − α)/N everywhere: the re-weighting does not use the other ratios."
    )


def draw_weights_row(left, right, label: str, paths: list[str]) -> str:
    """Weights (left) and ratios (right) of one label over its seeds -> its saturation note."""
    logs = [read_ddk_log(p) for p in paths]
    domains = logs[0][1]
    updates = [u for u, _ in logs]
    colors = plt.get_cmap("tab10")
    for i, domain in enumerate(domains):
        steps, weights = aligned(updates, "step", f"weight/{domain}")
        _, ratios = aligned(updates, "step", f"ratio/{domain}")
        set_at = steps - 1  # a row's values were measured before its step: set at step − 1
        draw_curve(
            left, set_at, weights, domain, color=colors(i % 10), drawstyle="steps-post", marker="o"
        )
        draw_curve(right, set_at, ratios, domain, color=colors(i % 10), marker="o")
    left.set(xlabel="step (weights apply from here)", ylabel="sampling weight",
             title=f"{label}: domain weights")  # fmt: skip
    right.set(xlabel="step", ylabel="ℓ_S / ℓ_T (perplexity ratio)",
              title=f"{label}: student/teacher ratio")  # fmt: skip
    right.axhline(1.0, color="grey", lw=0.8, ls=":")
    _, all_ratios = aligned(updates, "step", f"ratio/{domains[0]}")
    if np.nanmax(all_ratios) / max(np.nanmin(all_ratios), 1e-12) > 20:
        right.set_yscale("log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=7, ncol=2)
    found = [s for u in updates for s in saturation(u, domains)]
    return saturation_note(label, found, sum(len(u) for u in updates))


def weights_figure(runs: dict[str, list[str]], out: str, log) -> None:
    """Per label a row: domain weights r_t at each re-weighting | ℓ_S/ℓ_T per domain (Fig. 3)."""
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 4.2 * len(runs)), squeeze=False)
    notes = [
        draw_weights_row(weights_ax, ratios_ax, label, paths)
        for (weights_ax, ratios_ax), (label, paths) in zip(axes, runs.items(), strict=True)
    ]
    for note in notes:
        log.info("%s", note)
    add_note(fig, notes)
    save_figure(fig, out)


def ppl_figure(results: dict[str, list[str]], out: str) -> None:
    """Grouped bars: per-domain perplexity by method, mean ± 95 % interval over seeds (error
    bars); the teacher (label `teacher`) as a reference marker."""
    data = {label: [json.loads(Path(p).read_text())["ppl"] for p in paths]
            for label, paths in results.items()}  # fmt: skip
    teacher = data.pop("teacher", None)
    domains = sorted({d for runs in data.values() for ppl in runs for d in ppl})
    x = np.arange(len(domains))
    width = 0.8 / max(1, len(data))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(domains)), 4.2))
    for i, (label, runs) in enumerate(data.items()):
        mean, half, n = mean_interval(
            np.array([[ppl.get(d, np.nan) for d in domains] for ppl in runs])
        )
        ax.bar(x + (i - (len(data) - 1) / 2) * width, mean, width, yerr=None if n < 2 else half,
               capsize=3, label=f"{label} (n={n})")  # fmt: skip
    if teacher:
        ax.scatter(x, [teacher[0].get(d, np.nan) for d in domains], marker="_", s=900,
                   color="black", zorder=3, label="teacher")  # fmt: skip
    ax.set_xticks(x, domains, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set(ylabel="held-out perplexity (log scale)", title="Per-domain perplexity by method")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    save_figure(fig, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("figure", choices=["weights", "ppl"])
    runs_help = "weights: label=train_log.csv of a DDK run, once per seed"
    parser.add_argument("--runs", nargs="+", action="extend", default=[], help=runs_help)
    results_help = "ppl: label=domains.json, once per seed"
    parser.add_argument("--results", nargs="+", action="extend", default=[], help=results_help)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    log = setup_logging()
    option = "--runs" if args.figure == "weights" else "--results"
    specs = args.runs if args.figure == "weights" else args.results
    if not specs:
        raise InputError(
            f"distill.plots.ddk {args.figure}: give {option} LABEL=PATH (once per seed)."
        )
    if args.figure == "weights":
        weights_figure(parse_runs(specs, option), args.out, log)
    else:
        ppl_figure(parse_runs(specs, option), args.out)


if __name__ == "__main__":
    main_guard(main)

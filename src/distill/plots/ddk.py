"""DDK's figures: domain weights and ratios over training; per-domain perplexity by method.

    python -m distill.plots.ddk weights --log results/models/student_ddk_ddk/train_log.csv \
        --out results/figures/ddk_weights.png
    python -m distill.plots.ddk ppl --results teacher=results/eval/domains/teacher.json \
        sft=results/eval/domains/sft.json ddk_ddk=... --out results/figures/ddk_domain_ppl.png
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

from distill.io import InputError, main_guard, setup_logging  # noqa: E402
from distill.plots.training_curves import save_figure  # noqa: E402


def weights_figure(log_path: str, out: str) -> None:
    """Left: domain weights r_t at each re-weighting; right: ℓ_S/ℓ_T per domain (paper Fig. 3)."""
    frame = pd.read_csv(log_path)
    weight_cols = [c for c in frame.columns if c.startswith("weight/")]
    if not weight_cols:
        raise InputError(f"{log_path}: no weight/<domain> columns; is this a DDK run's log?")
    updates = frame.dropna(subset=weight_cols[:1])
    # A row's values were measured before its step ran: weights logged on row s were set at s−1.
    set_at = updates["step"] - 1
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for col in weight_cols:
        domain = col.split("/", 1)[1]
        left.step(set_at, updates[col], where="post", marker="o", label=domain)
        right.plot(set_at, updates[f"ratio/{domain}"], marker="o", label=domain)
    left.set(
        xlabel="step (weights apply from here)", ylabel="sampling weight", title="Domain weights"
    )
    right.set(xlabel="step", ylabel="ℓ_S / ℓ_T (perplexity ratio)", title="Student/teacher ratio")
    right.axhline(1.0, color="grey", lw=0.8, ls=":")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=8, ncol=2)
    save_figure(fig, out)


def ppl_figure(results: dict[str, str], out: str) -> None:
    """Grouped bars: per-domain perplexity by method; the teacher as a reference marker."""
    data = {label: json.loads(Path(path).read_text())["ppl"] for label, path in results.items()}
    teacher = data.pop("teacher", None)
    domains = sorted({d for ppl in data.values() for d in ppl})
    x = np.arange(len(domains))
    width = 0.8 / max(1, len(data))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(domains)), 4.2))
    for i, (label, ppl) in enumerate(data.items()):
        ax.bar(x + (i - (len(data) - 1) / 2) * width, [ppl.get(d, np.nan) for d in domains],
               width, label=label)  # fmt: skip
    if teacher:
        ax.scatter(x, [teacher.get(d, np.nan) for d in domains], marker="_", s=900, color="black",
                   zorder=3, label="teacher")  # fmt: skip
    ax.set_xticks(x, domains, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set(ylabel="held-out perplexity (log scale)", title="Per-domain perplexity by method")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    save_figure(fig, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("figure", choices=["weights", "ppl"])
    parser.add_argument("--log", help="train_log.csv of a DDK run (weights)")
    parser.add_argument("--results", nargs="+", help="label=domains.json (ppl)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    setup_logging()
    if args.figure == "weights":
        weights_figure(args.log, args.out)
    else:
        ppl_figure(dict(spec.split("=", 1) for spec in args.results), args.out)


if __name__ == "__main__":
    main_guard(main)

"""The small-scale study's numbers for README's findings: mean ± 95 % t-interval over seeds.

    python bench/study_summary.py --results results [--out bench/results/cpu_study.md]

Reads what `snakemake -c2 --configfile config.yaml configs/cpu-study.yaml` wrote: every
model's per-domain held-out cross-entropy and math accuracy (results/eval/domains/<model>/
seed<s>.json) and the λ' runs' held-out CE gap (results/models/sweep/lambda_<λ'>/seed<s>/
train_log.csv), and prints one table per claim. A paired difference (same seed) is given where
two methods share seeds, since the seed moves both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from distill.plots.common import format_interval, mean_interval

MATH_DOMAINS = ("algebra", "arithmetic", "comparison", "numbers")


def domain_rows(results: Path) -> pd.DataFrame:
    """One row per (model, seed): CE overall, on the math domains, on the rest; accuracy."""
    rows = []
    for path in sorted((results / "eval/domains").glob("*/seed*.json")):
        data = json.loads(path.read_text())
        ce = data["ce"]
        math_ce = [v for k, v in ce.items() if k in MATH_DOMAINS]
        other_ce = [v for k, v in ce.items() if k not in MATH_DOMAINS and k != "all"]
        rows.append({"model": path.parent.name, "seed": int(path.stem[4:]), "ce": ce["all"],
                     "ce_math": np.mean(math_ce) if math_ce else np.nan,
                     "ce_general": np.mean(other_ce) if other_ce else np.nan,
                     "accuracy": data["accuracy_all"]})  # fmt: skip
    return pd.DataFrame(rows)


def interval_table(frame: pd.DataFrame, columns: list[str]) -> str:
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for model, group in frame.groupby("model", sort=False):
        cells = []
        for column in columns:
            mean, half, n = mean_interval(group[column].to_numpy()[:, None])
            cells.append(format_interval(float(mean[0]), float(half[0]), n))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(frame: pd.DataFrame, a: str, b: str, column: str) -> str:
    """a − b on the seeds both have, with its interval."""
    wide = frame.pivot_table(index="seed", columns="model", values=column)
    if a not in wide or b not in wide:
        return f"{a} − {b} ({column}): not both present"
    diff = (wide[a] - wide[b]).dropna().to_numpy()
    mean, half, n = mean_interval(diff[:, None])
    return f"{a} − {b} ({column}): {format_interval(float(mean[0]), float(half[0]), n)}"


def sweep_rows(results: Path) -> pd.DataFrame:
    """Final held-out CE_student − CE_teacher and final loss of every λ' run."""
    rows = []
    for log in sorted((results / "models/sweep").glob("lambda_*/seed*/train_log.csv")):
        frame = pd.read_csv(log)
        gap = frame.get("heldout_gap", frame.get("heldout_ce_gap"))
        rows.append({"model": log.parent.parent.name, "seed": int(log.parent.name[4:]),
                     "final_loss": frame["loss"].tail(10).mean(),
                     "heldout_gap": gap.dropna().iloc[-1] if gap is not None else np.nan,
                     "valid_ce": frame["valid_ce"].dropna().iloc[-1]})  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results", type=Path)
    parser.add_argument("--out", help="also write the tables to this markdown file")
    args = parser.parse_args()
    domains = domain_rows(args.results)
    parts = ["## Held-out CE (nats/token) and math accuracy, per model",
             interval_table(domains, ["ce", "ce_math", "ce_general", "accuracy"]), ""]  # fmt: skip
    for a, b, column in [("kd", "sft", "ce"), ("kd_dae", "kd", "ce_math"),
                         ("kd_dae", "kd", "ce_general"), ("ddk", "ddk_natural", "ce"),
                         ("ddk_no_smoothing", "ddk_natural", "ce"),
                         ("ddk_equal", "ddk_natural", "ce")]:  # fmt: skip
        parts.append("- " + paired(domains, a, b, column))
    sweep = sweep_rows(args.results)
    if not sweep.empty:
        parts += ["", "## λ' sweep (final values)",
                  interval_table(sweep, ["final_loss", "heldout_gap", "valid_ce"])]  # fmt: skip
    text = "\n".join(parts) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

"""Time the whole embedded default from an empty results/ and tabulate each job's benchmark.

    python bench/workflow_time.py --out bench/results/embedded_default.md [-- extra snakemake args]

Runs `snakemake -c2` (the README's run command without the report) in a copy of the checkout,
so the checkout's own results/ stay as they are, and prints the wall time and a table of the
`benchmark:` files (seconds and peak RSS of every heavy job), slowest first.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--workdir", help="where to copy the checkout (default: a temp dir)")
    parser.add_argument("snakemake_args", nargs="*")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="embedded-default-"))
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    for name in files:
        if (REPO / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes((REPO / name).read_bytes())
    snakemake = Path(sys.executable).parent / "snakemake"
    started = time.time()
    run = subprocess.run([str(snakemake), "-c2", *args.snakemake_args], cwd=work)
    wall = time.time() - started
    rows = []
    for tsv in sorted((work / "results/benchmarks").rglob("*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        rows.append({"job": str(tsv.relative_to(work / "results/benchmarks"))[:-4],
                     "seconds": round(float(frame["s"].iloc[-1]), 1),
                     "max_rss_mb": round(float(frame["max_rss"].iloc[-1]))})  # fmt: skip
    table = pd.DataFrame(rows).sort_values("seconds", ascending=False)
    text = (f"exit code {run.returncode}; wall {wall:.0f} s ({wall / 60:.1f} min) for "
            f"`snakemake -c2 {' '.join(args.snakemake_args)}` in {work}\n\n"
            + table.to_markdown(index=False) + "\n")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

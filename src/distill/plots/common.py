"""What every figure shares: `label=path` run specs repeated once per seed, the mean with a 95 %
t-interval over seeds, bands and error bars, and saving PNG + PDF.

A figure that compares training runs gets each run once per replicate seed, the same label
repeated (`--runs sft=seed0/train_log.csv --runs sft=seed1/train_log.csv ...`). With n ≥ 2 runs
a label is drawn as the mean with a 95 % Student-t interval, mean ± t_{0.975, n−1}·s/√n (s the
sample standard deviation): a band on curves, an error bar on bars; with n = 1 the single run.
The legend says n.

The t quantiles are a table (no scipy: it is not a dependency of this project, and 30 numbers do
not justify one); above 30 degrees of freedom a Cornish–Fisher expansion around the normal
quantile is accurate to 1e-4.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from distill.io import InputError, atomic_path  # noqa: E402

# t_{0.975, df} for df = 1..30 (two-sided 95 %), to the table's usual 3 decimals and beyond.
T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
)  # fmt: skip
Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` ≥ 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975  # Cornish–Fisher: t ≈ z + (z³+z)/4ν + (5z⁵+16z³+3z)/96ν² + ...
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def mean_interval(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and half-width of the 95 % t-interval over runs.

    values (n, P): one row per run (seed), P points (NaN: a run without that point; the point's
    n is then its count of finite values). Returns mean (P,), half-width (P,) (NaN where fewer
    than 2 runs have the point) and n (the number of rows).
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    counts = np.isfinite(values).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(values, axis=0) / counts
        sq = np.nansum((values - mean) ** 2, axis=0)
        std = np.sqrt(sq / (counts - 1))
    t = np.array([t_quantile_975(int(c) - 1) if c >= 2 else np.nan for c in counts])
    half = np.where(counts >= 2, t * std / np.sqrt(np.maximum(counts, 1)), np.nan)
    mean = np.where(counts >= 1, mean, np.nan)
    return mean, half, values.shape[0]


def format_interval(mean: float, half: float, n: int, digits: int = 3) -> str:
    """`1.234 ± 0.056 (n=3)`, or `1.234 (n=1)` when there is no interval."""
    if n < 2 or not math.isfinite(half):
        return f"{mean:.{digits}f} (n={n})"
    return f"{mean:.{digits}f} ± {half:.{digits}f} (n={n})"


def parse_runs(specs: Sequence[str], option: str = "--runs") -> dict[str, list[str]]:
    """`label=path` specs -> {label: [path, ...]} in first-seen label order (one path per seed)."""
    runs: dict[str, list[str]] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise InputError(
                f"{option} {spec}: expected LABEL=PATH (the same label once per seed, e.g. "
                f"{option} sft=results/models/student_sft/seed0/train_log.csv)."
            )
        runs.setdefault(label, []).append(path)
    return runs


def read_csv(path: str, needed: Sequence[str], hint: str) -> pd.DataFrame:
    """A CSV with at least the columns `needed`; InputError naming the file and `hint` if not."""
    try:
        frame = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError) as error:
        raise InputError(f"{path}: cannot read a train_log.csv ({error}). {hint}") from None
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: no column {missing}. {hint}")
    return frame


def aligned(frames: Sequence[pd.DataFrame], key: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Runs' `column` at the values of `key` that every run has (inner join: seeds log the same
    steps, a run cut short limits the others). -> key values (P,), values (n, P)."""
    series = [f.dropna(subset=[column]).drop_duplicates(key).set_index(key)[column] for f in frames]
    table = pd.concat(series, axis=1, join="inner").sort_index()
    return table.index.to_numpy(), table.to_numpy(dtype=np.float64).T


def draw_curve(ax, x, values: np.ndarray, label: str, **style):
    """Mean line of runs (n, P) with its 95 % band when n ≥ 2; returns the line."""
    mean, half, n = mean_interval(values)
    (line,) = ax.plot(x, mean, label=f"{label} (n={n})", **style)
    if n >= 2:
        step = "post" if style.get("drawstyle") == "steps-post" else None
        ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.2, lw=0,
                        step=step)  # fmt: skip
    return line


def add_note(fig, lines: Sequence[str], width: int = 180) -> None:
    """Text under the figure (below its axes labels; the tight bounding box of save_figure takes
    it in), each line wrapped at `width` characters."""
    wrapped = [textwrap.fill(line, width) for line in lines if line]
    fig.text(0.01, -0.01, "\n".join(wrapped), fontsize=8, ha="left", va="top")


def save_figure(fig, png: str | Path) -> None:
    """Save `fig` as PNG and as PDF beside it, both atomically."""
    png = Path(png)
    for path in (png, png.with_suffix(".pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=150, bbox_inches="tight")
    plt.close(fig)

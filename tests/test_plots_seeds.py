"""Figures over replicate seeds: the mean and 95 % t-interval (against float64 arithmetic written
out here, t quantiles from the t density integrated numerically), `label=path` runs repeated once
per seed, and the λ' and DDK figures' notes (the sweep teacher's metrics, Eq. 1 saturation)."""

from __future__ import annotations

import json
import math
import statistics

import matplotlib
import numpy as np
import pandas as pd
import pytest
from conftest import run_module

from distill.io import InputError
from distill.plots.common import (
    T975,
    aligned,
    draw_curve,
    format_interval,
    mean_interval,
    parse_runs,
    t_quantile_975,
)
from distill.plots.ddk import saturation, saturation_note
from distill.plots.lambda_sweep import read_teacher_metrics, teacher_note

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def t_cdf_above_half(q: float, df: int, intervals: int = 4000) -> float:
    """P(0 < T < q) for Student's t: Simpson's rule on the density written from its definition."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    h = q / intervals
    total = 0.0
    for i in range(intervals + 1):
        x = i * h
        weight = 1 if i in (0, intervals) else (4 if i % 2 else 2)
        total += weight * math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))
    return total * h / 3


def t_quantile_by_bisection(df: int) -> float:
    low, high = 0.0, 20.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf_above_half(mid, df) < 0.475 else (low, mid)
    return (low + high) / 2


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 19, 30, 31, 45, 80])
def test_t_quantiles_match_the_integrated_density(df):
    expected = t_quantile_by_bisection(df)
    tolerance = 2e-6 if df <= len(T975) else 2e-4  # table to 6 decimals; expansion beyond
    assert t_quantile_975(df) == pytest.approx(expected, abs=tolerance)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_mean_and_interval_against_float64_arithmetic():
    runs = np.array([[1.0, 2.0, 10.0], [3.0, 4.5, np.nan], [6.5, 5.0, np.nan]])
    mean, half, n = mean_interval(runs)
    assert n == 3
    for j, column in enumerate(([1.0, 3.0, 6.5], [2.0, 4.5, 5.0])):
        assert mean[j] == pytest.approx(sum(column) / 3, rel=1e-15)
        expected = 4.302652729911275 * statistics.stdev(column) / math.sqrt(3)  # t_{0.975,2}
        assert half[j] == pytest.approx(expected, rel=1e-6)
    assert mean[2] == 10.0 and math.isnan(half[2])  # one run has the point: no interval
    single_mean, single_half, single_n = mean_interval(np.array([[1.5, 2.5]]))
    assert single_n == 1 and single_mean.tolist() == [1.5, 2.5] and np.isnan(single_half).all()
    assert format_interval(1.23456, 0.0789, 3) == "1.235 ± 0.079 (n=3)"
    assert format_interval(1.23456, float("nan"), 1) == "1.235 (n=1)"


def test_runs_repeat_a_label_once_per_seed():
    runs = parse_runs(["kd=a0.csv", "sft=b0.csv", "kd=a1.csv", "kd=a2=x.csv"])
    assert runs == {"kd": ["a0.csv", "a1.csv", "a2=x.csv"], "sft": ["b0.csv"]}
    assert list(runs) == ["kd", "sft"]  # first-seen order
    for bad in ("kd", "=x.csv", "kd="):
        with pytest.raises(InputError, match="LABEL=PATH"):
            parse_runs([bad])


def test_seeds_are_aligned_on_their_common_steps_and_drawn_as_a_band():
    frames = [
        pd.DataFrame({"step": [1, 2, 3, 4], "loss": [4.0, 3.0, 2.0, 1.0]}),
        pd.DataFrame({"step": [1, 2, 3], "loss": [5.0, 3.5, 2.5]}),  # cut short
    ]
    steps, values = aligned(frames, "step", "loss")
    assert steps.tolist() == [1, 2, 3]
    assert values.tolist() == [[4.0, 3.0, 2.0], [5.0, 3.5, 2.5]]
    fig, ax = plt.subplots()
    draw_curve(ax, steps, values, "kd")
    assert ax.get_lines()[0].get_label() == "kd (n=2)"
    band = ax.collections[0].get_paths()[0].vertices
    mean, half, _ = mean_interval(values)
    assert band[:, 1].max() == pytest.approx(float((mean + half).max()))
    assert band[:, 1].min() == pytest.approx(float((mean - half).min()))
    plt.close(fig)


def sweep_log(path, seed: int, lam_prime: float):
    """A feedback run's train_log.csv: held-out evaluations at steps 0 and 2 (repeated per row)."""
    rng = np.random.default_rng(seed)
    rows = []
    for step in (1, 2, 3, 4):
        heldout_step = 0 if step <= 2 else 2
        student_ce = 3.0 - 0.2 * heldout_step - 0.1 * lam_prime + 0.05 * seed
        rows.append({"step": step, "flops": 1e9 * step * (1 + 0.01 * seed),
                     "loss": 2.0 - 0.1 * step + rng.normal(0, 0.01),
                     "heldout_step": heldout_step, "heldout_ce_student": student_ce,
                     "heldout_ce_teacher": 1.5, "heldout_ce_gap": student_ce - 1.5})  # fmt: skip
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_lambda_sweep_figure_with_seeds_and_the_teacher_metrics(tmp_path):
    runs = []
    for lam_prime in (0, 1):
        for seed in (0, 1, 2):
            path = sweep_log(tmp_path / f"l{lam_prime}s{seed}.csv", seed, lam_prime)
            runs += ["--runs", f"{lam_prime}={path}"]
    metrics = tmp_path / "sweep_teacher.json"
    metrics.write_text(json.dumps({"ce": 0.8123, "accuracy": 0.625}))
    out = tmp_path / "lambda_sweep.png"
    result = run_module("distill.plots.lambda_sweep", *runs, "--teacher-metrics", metrics,
                        "--smooth", "1", "--out", out)  # fmt: skip
    assert out.stat().st_size > 0 and out.with_suffix(".pdf").stat().st_size > 0
    # λ' = 0's final held-out student CE over seeds 0, 1, 2: 2.6 + 0.05·seed.
    values = [2.6, 2.65, 2.7]
    half = T975[1] * statistics.stdev(values) / math.sqrt(3)
    assert "CE 0.812 nats/token, exact-match accuracy 62.5%" in result.stderr
    assert f"final CE 2.650 ± {half:.3f} (n=3)" in result.stderr
    assert "teacher CE 1.500" in result.stderr
    assert "the teacher is below the student's interval" in result.stderr


def test_teacher_metrics_keys_and_domain_pooling(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"valid_ce": 1.25, "accuracy": 0.5}))
    assert read_teacher_metrics(path) == {"ce": 1.25, "accuracy": 0.5}
    # distill.eval.domains' per-domain dicts, pooled by the rows per domain.
    per_domain = {"ppl": {"a": math.e, "b": math.e**3}, "accuracy": {"a": 1.0, "b": 0.0}}
    path.write_text(json.dumps({**per_domain, "n": {"a": 3, "b": 1}}))
    assert read_teacher_metrics(path) == pytest.approx(
        {"ce": (3 * 1 + 1 * 3) / 4, "accuracy": 0.75}
    )
    # distill.eval.domains today: CE pooled over tokens in "all", accuracy over questions.
    path.write_text(json.dumps({"ce": {"a": 1.0, "b": 3.0, "all": 1.4}, **per_domain,
                                "n": {"a": 3, "b": 1}, "accuracy_all": 0.7}))  # fmt: skip
    assert read_teacher_metrics(path) == {"ce": 1.4, "accuracy": 0.7}
    path.write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(InputError, match="needs `ce`"):
        read_teacher_metrics(path)
    assert teacher_note(None, None) == ""


def ddk_log(path, ratios_by_update: list[list[float]], weights_by_update: list[list[float]]):
    rows = []
    for i, (ratios, weights) in enumerate(zip(ratios_by_update, weights_by_update, strict=True)):
        rows.append({"step": 1 + 2 * i, "loss": 1.0})  # a re-weighting row, then a plain one
        rows[-1].update({f"ratio/{d}": r for d, r in zip("ab", ratios, strict=True)})
        rows[-1].update({f"weight/{d}": w for d, w in zip("ab", weights, strict=True)})
        rows.append({"step": 2 + 2 * i, "loss": 0.9})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_ddk_weights_figure_says_when_eq1_saturates(tmp_path):
    calm = [[1.2, 1.0], [1.1, 1.0]]
    calm_eq1 = 1 / (1 + math.exp(-0.2))  # softmax([1.2, 1.0])[0] = 0.5498...
    saturated = [[30.0, 2.0], [25.0, 2.0]]
    weights = [[0.6, 0.4], [0.7, 0.3]]
    frame = pd.read_csv(ddk_log(tmp_path / "calm.csv", calm, weights))
    assert saturation(frame.dropna(subset=["weight/a"]), ["a", "b"]) == []
    assert calm_eq1 < 0.99
    frame = pd.read_csv(ddk_log(tmp_path / "sat.csv", saturated, weights))
    found = saturation(frame.dropna(subset=["weight/a"]), ["a", "b"])
    assert [f["step"] for f in found] == [0, 2] and found[0]["domain"] == "a"
    assert found[1]["weight"] == pytest.approx(1 / (1 + math.exp(-23.0)))
    note = saturation_note("ddk", found, 4)
    assert "SATURATES in 2 of 4" in note and "ratios 2–25" in note

    out = tmp_path / "weights.png"
    result = run_module("distill.plots.ddk", "weights", "--runs", f"ddk={tmp_path / 'sat.csv'}",
                        "--runs", f"ddk={ddk_log(tmp_path / 'sat2.csv', saturated, weights)}",
                        "--out", out)  # fmt: skip
    assert out.stat().st_size > 0 and "SATURATES in 4 of 4" in result.stderr
    result = run_module("distill.plots.ddk", "weights", "--runs", f"ddk={tmp_path / 'calm.csv'}",
                        "--out", out)  # fmt: skip
    assert "does not saturate" in result.stderr


def test_ddk_ppl_figure_with_seeds(tmp_path):
    specs = []
    for label, seeds in (("teacher", [0]), ("kd", [0, 1, 2]), ("ddk", [0, 1])):
        for seed in seeds:
            path = tmp_path / f"{label}{seed}.json"
            path.write_text(json.dumps({"ppl": {"a": 5.0 + seed, "b": 9.0 - seed}}))
            specs += ["--results", f"{label}={path}"]
    out = tmp_path / "ppl.png"
    run_module("distill.plots.ddk", "ppl", *specs, "--out", out)
    assert out.stat().st_size > 0
    with pytest.raises(AssertionError, match="--results"):
        run_module("distill.plots.ddk", "ppl", "--out", out)

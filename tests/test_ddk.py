"""Tests for distill.ddk: DDK domain re-weighting (arXiv 2407.16154) and the domain sampler."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from distill.ddk import (
    MODES,
    DomainSampler,
    domain_ratios,
    initial_domain_weights,
    interval_weights,
    uniform_domain_weights,
    update_domain_weights,
)

N_RANDOM_CASES = 500


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Random (weights, student_ppl, teacher_ppl, alpha) with N in [1, 12]."""
    n = int(rng.integers(1, 13))
    teacher = rng.uniform(1.0, 50.0, size=n)
    student = teacher * rng.uniform(0.5, 20.0, size=n)  # ratios in [0.5, 20]
    weights = rng.dirichlet(np.full(n, 0.7))
    alpha = float(rng.uniform(0.0, 1.0))
    return weights, student, teacher, alpha


# --------------------------------------------------------------------------------------------
# equations
# --------------------------------------------------------------------------------------------


def test_eq2_hand_computed_example():
    # ratios ρ = [20/10, 12/12, 30/10] = [2, 1, 3], r_t = [0.5, 0.3, 0.2], α = 0.5, N = 3.
    # ψ = [0.5 e², 0.3 e, 0.2 e³] = [3.6945280494653251, 0.81548454853771357, 4.0171073846375335]
    # Σψ = 8.5271199826405722;  r_{t+1} = 0.5 ψ/Σψ + 0.5/3   (evaluated in 40-digit decimal)
    expected = np.array([0.38330065662966761629, 0.21448378136646384719, 0.40221556200386853652])
    got = update_domain_weights([0.5, 0.3, 0.2], [20.0, 12.0, 30.0], [10.0, 12.0, 10.0], 0.5)
    assert got.dtype == np.float64
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=0)
    # the same numbers from the equation written out with math.exp
    psi = [0.5 * math.exp(2), 0.3 * math.exp(1), 0.2 * math.exp(3)]
    np.testing.assert_allclose(got, [0.5 * p / sum(psi) + 0.5 / 3 for p in psi], rtol=1e-14)


def test_domain_ratios():
    np.testing.assert_array_equal(domain_ratios([20, 12, 30], [10, 12, 10]), [2.0, 1.0, 3.0])


def test_eq1_is_softmax_of_ratios():
    rng = np.random.default_rng(1)
    for _ in range(N_RANDOM_CASES):
        _, student, teacher, _ = _random_case(rng)
        ratios = student / teacher
        expected = np.exp(ratios) / np.exp(ratios).sum()  # ratios <= 20: no overflow here
        np.testing.assert_allclose(initial_domain_weights(student, teacher), expected, rtol=1e-12)
        for mode, first in (("no_smoothing", False), ("no_smoothing", True), ("ddk", True)):
            got = interval_weights(
                mode, uniform_domain_weights(len(ratios)), student, teacher, 0.5, first=first
            )
            np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_eq2_properties_on_random_inputs():
    rng = np.random.default_rng(2)
    for _ in range(N_RANDOM_CASES):
        weights, student, teacher, alpha = _random_case(rng)
        n = len(weights)
        new = update_domain_weights(weights, student, teacher, alpha)
        assert new.shape == (n,)
        assert np.all(np.isfinite(new))
        assert new.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.all(new >= (1 - alpha) / n - 1e-15)
        # the result is the mode "ddk" after its first interval
        got = interval_weights("ddk", weights, student, teacher, alpha, first=False)
        np.testing.assert_array_equal(got, new)


def test_eq2_larger_ratio_never_gets_smaller_weight_from_uniform_start():
    rng = np.random.default_rng(3)
    for _ in range(N_RANDOM_CASES):
        _, student, teacher, alpha = _random_case(rng)
        n = len(student)
        new = update_domain_weights(uniform_domain_weights(n), student, teacher, alpha)
        ratios = student / teacher
        for i in range(n):
            for j in range(n):
                if ratios[i] > ratios[j]:
                    assert new[i] >= new[j]


def test_eq2_alpha_zero_gives_uniform_and_alpha_one_from_uniform_gives_eq1():
    rng = np.random.default_rng(4)
    for _ in range(N_RANDOM_CASES):
        weights, student, teacher, _ = _random_case(rng)
        n = len(weights)
        np.testing.assert_allclose(
            update_domain_weights(weights, student, teacher, alpha=0.0), np.full(n, 1 / n)
        )
        np.testing.assert_allclose(
            update_domain_weights(uniform_domain_weights(n), student, teacher, alpha=1.0),
            initial_domain_weights(student, teacher),
            rtol=1e-12,
        )


def test_eq2_is_stable_for_huge_ratios_and_zero_weights():
    # ratios 1e6, 1, 5e5: exp(1e6) overflows float64, the log-space update must not.
    new = update_domain_weights([0.2, 0.3, 0.5], [1e6, 2.0, 5e5], [1.0, 2.0, 1.0], alpha=0.5)
    assert np.all(np.isfinite(new))
    np.testing.assert_allclose(new, [0.5 + 0.5 / 3, 0.5 / 3, 0.5 / 3], rtol=1e-12)
    eq1 = initial_domain_weights([1e6, 2.0], [1.0, 2.0])
    np.testing.assert_allclose(eq1, [1.0, 0.0])
    # a domain with weight 0 keeps exactly the floor (1 − α)/N
    new = update_domain_weights([0.0, 1.0], [50.0, 1.0], [1.0, 1.0], alpha=0.5)
    np.testing.assert_allclose(new, [0.25, 0.75])


def test_equal_and_natural_modes_stay_uniform():
    rng = np.random.default_rng(5)
    for mode in ("equal", "natural"):
        weights = uniform_domain_weights(4)
        for step in range(50):
            student = rng.uniform(1.0, 100.0, size=4)
            teacher = rng.uniform(1.0, 100.0, size=4)
            weights = interval_weights(mode, weights, student, teacher, 0.5, first=step == 0)
            np.testing.assert_array_equal(weights, np.full(4, 0.25))


def test_repeated_ddk_updates_stay_distributions():
    rng = np.random.default_rng(6)
    weights = initial_domain_weights([30.0, 10.0, 12.0, 8.0], [10.0, 9.0, 10.0, 8.0])
    for _ in range(200):
        student = rng.uniform(5.0, 40.0, size=4)
        teacher = rng.uniform(5.0, 10.0, size=4)
        weights = interval_weights("ddk", weights, student, teacher, 0.5, first=False)
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.all(weights >= 0.5 / 4 - 1e-15)


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([0.5, 0.5], [1.0, 0.0], [1.0, 1.0]), "student_ppl must be positive"),
        (([0.5, 0.5], [1.0, 2.0], [-1.0, 1.0]), "teacher_ppl must be positive"),
        (([0.5, 0.5], [1.0, float("nan")], [1.0, 1.0]), "student_ppl must be finite"),
        (([0.5, 0.5], [1.0, 2.0], [1.0, float("inf")]), "teacher_ppl must be finite"),
        (([0.5, 0.5], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0]), "same length"),
        (([0.5, 0.5], [1.0, 2.0], [1.0, 1.0, 1.0]), "same length"),
        (([0.5, 0.6], [1.0, 2.0], [1.0, 1.0]), "must sum to 1"),
        (([1.5, -0.5], [1.0, 2.0], [1.0, 1.0]), "non-negative"),
        (([], [], []), "at least one domain"),
        (([[0.5, 0.5]], [[1.0, 2.0]], [[1.0, 1.0]]), "must be 1-D"),
        ((["a", "b"], [1.0, 2.0], [1.0, 1.0]), "array of numbers"),
    ],
)
def test_update_validation(args, match):
    with pytest.raises(ValueError, match=match):
        update_domain_weights(*args, 0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.01, float("nan"), "x"])
def test_alpha_validation(alpha):
    with pytest.raises(ValueError, match="alpha"):
        update_domain_weights([0.5, 0.5], [1.0, 2.0], [1.0, 1.0], alpha)
    for mode in MODES:
        with pytest.raises(ValueError, match="alpha"):
            interval_weights(mode, [0.5, 0.5], [1.0, 2.0], [1.0, 1.0], alpha, first=False)


def test_interval_weights_validation():
    assert MODES == ("ddk", "no_smoothing", "equal", "natural")  # the schema's ddk.modes enum
    with pytest.raises(ValueError, match="valid modes are ddk, no_smoothing, equal, natural"):
        interval_weights("DDK", [0.5, 0.5], [1.0, 2.0], [1.0, 1.0], 0.5, first=False)
    for mode in MODES:  # every mode validates its inputs the same way
        with pytest.raises(ValueError, match="same length"):
            interval_weights(mode, [0.5, 0.5], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0], 0.5, first=False)
        with pytest.raises(ValueError, match="must sum to 1"):
            interval_weights(mode, [0.5, 0.6], [1.0, 2.0], [1.0, 1.0], 0.5, first=True)
    with pytest.raises(ValueError, match="at least 1"):
        uniform_domain_weights(0)


# --------------------------------------------------------------------------------------------
# sampler
# --------------------------------------------------------------------------------------------


def _domains() -> dict[str, list[int]]:
    # disjoint index ranges so a drawn index tells its domain; deliberately unsorted keys
    return {
        "math": list(range(100, 130)),
        "code": list(range(0, 50)),
        "web": list(range(200, 207)),
        "books": list(range(300, 311)),
    }


def _domain_of(index: int) -> str:
    return {0: "code", 1: "math", 2: "web", 3: "books"}[index // 100]


def test_sampler_domains_are_sorted():
    sampler = DomainSampler(_domains(), seed=0)
    assert sampler.domains == ("books", "code", "math", "web")
    np.testing.assert_array_equal(sampler.weights, np.full(4, 0.25))
    sampler.set_weights({"web": 0.1, "math": 0.2, "code": 0.3, "books": 0.4})
    np.testing.assert_allclose(sampler.weights, [0.4, 0.3, 0.2, 0.1])


def test_sampler_empirical_mixture_matches_weights():
    # For n independent draws, the share of domain i is a binomial proportion with standard
    # error sqrt(p(1-p)/n). Tolerance: 4 standard errors, i.e. a two-sided false-failure
    # probability of about 6e-5 per domain (< 3e-4 for all four), for a random seed; the seed is
    # fixed, so the test is deterministic.
    n = 20_000
    weights = np.array([0.05, 0.5, 0.3, 0.15])  # books, code, math, web
    sampler = DomainSampler(_domains(), seed=7, weights=weights)
    draws = []
    for _ in range(n // 100):
        draws.extend(sampler.next_batch(100))
    assert len(draws) == n
    counts = {name: 0 for name in sampler.domains}
    for index in draws:
        counts[_domain_of(index)] += 1
    for name, p in zip(sampler.domains, weights, strict=True):
        share = counts[name] / n
        tolerance = 4 * math.sqrt(p * (1 - p) / n)
        assert abs(share - p) <= tolerance, (name, share, p, tolerance)


def test_sampler_zero_weight_domain_is_never_drawn():
    sampler = DomainSampler(_domains(), seed=3, weights=[0.0, 0.5, 0.5, 0.0])
    drawn = {_domain_of(i) for i in sampler.next_batch(2000)}
    assert drawn == {"code", "math"}


def test_sampler_cycles_each_example_once_before_repeats():
    domains = {"a": list(range(10)), "b": list(range(100, 103))}
    sampler = DomainSampler(domains, seed=11, weights=[0.5, 0.5])
    per_domain: dict[str, list[int]] = {"a": [], "b": []}
    for _ in range(40):
        for index in sampler.next_batch(7):
            per_domain["a" if index < 100 else "b"].append(index)
    for name, seen in per_domain.items():
        size = len(domains[name])
        assert len(seen) >= 3 * size  # several passes over the smaller domains
        for start in range(0, len(seen) - size + 1, size):
            assert sorted(seen[start : start + size]) == domains[name], (name, start)
    # reshuffling changes the order between passes (not a fixed cycle)
    a = per_domain["a"]
    assert any(a[k * 10 : k * 10 + 10] != a[:10] for k in range(1, len(a) // 10))


def test_sampler_single_domain_full_pass():
    sampler = DomainSampler({"only": [5, 6, 7, 8, 9]}, seed=0)
    first = sampler.next_batch(5)
    assert sorted(first) == [5, 6, 7, 8, 9]
    assert sorted(sampler.next_batch(5)) == [5, 6, 7, 8, 9]
    assert sampler.next_batch(0) == []


def test_sampler_same_seed_same_stream_and_different_seed_differs():
    a = DomainSampler(_domains(), seed=5)
    b = DomainSampler(_domains(), seed=5)
    c = DomainSampler(_domains(), seed=6)
    sa = [a.next_batch(16) for _ in range(10)]
    assert sa == [b.next_batch(16) for _ in range(10)]
    assert sa != [c.next_batch(16) for _ in range(10)]


@pytest.mark.parametrize(("k", "m"), [(0, 5), (3, 20), (17, 40)])
def test_sampler_resume_is_exact(k, m):
    weights_schedule = [[0.1, 0.4, 0.3, 0.2], [0.7, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 1.0]]

    def run(sampler: DomainSampler, start: int, stop: int) -> list[list[int]]:
        out = []
        for step in range(start, stop):
            if step % 5 == 0:  # weights change every K = 5 steps, as in training
                sampler.set_weights(weights_schedule[(step // 5) % len(weights_schedule)])
            out.append(sampler.next_batch(9))
        return out

    uninterrupted = DomainSampler(_domains(), seed=42)
    expected = run(uninterrupted, 0, k + m)

    first = DomainSampler(_domains(), seed=42)
    before = run(first, 0, k)
    text = json.dumps(first.state_dict())
    state = json.loads(text)
    assert state == first.state_dict()  # the state is plain JSON data

    resumed = DomainSampler(_domains(), seed=999)  # seed is overwritten by the state
    resumed.load_state_dict(state)
    assert before + run(resumed, k, k + m) == expected
    assert resumed.state_dict() == uninterrupted.state_dict()


def test_sampler_resume_keeps_weights_between_updates():
    sampler = DomainSampler(_domains(), seed=1, weights=[0.1, 0.2, 0.3, 0.4])
    sampler.next_batch(13)
    state = json.loads(json.dumps(sampler.state_dict()))
    resumed = DomainSampler(_domains(), seed=1)
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(resumed.weights, sampler.weights)
    assert [resumed.next_batch(8) for _ in range(30)] == [sampler.next_batch(8) for _ in range(30)]


def test_sampler_validation():
    with pytest.raises(ValueError, match="non-empty mapping"):
        DomainSampler({}, seed=0)
    with pytest.raises(ValueError, match="has no examples"):
        DomainSampler({"a": [1], "b": []}, seed=0)
    with pytest.raises(ValueError, match="must be str"):
        DomainSampler({1: [1]}, seed=0)
    with pytest.raises(ValueError, match="int example index"):
        DomainSampler({"a": [1.5]}, seed=0)
    with pytest.raises(ValueError, match="seed"):
        DomainSampler({"a": [1]}, seed=-1)
    sampler = DomainSampler(_domains(), seed=0)
    with pytest.raises(ValueError, match="4 domains"):
        sampler.set_weights([0.5, 0.5])
    with pytest.raises(ValueError, match="must sum to 1"):
        sampler.set_weights([0.5, 0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="exactly the domains"):
        sampler.set_weights({"code": 1.0})
    with pytest.raises(ValueError, match="batch_size"):
        sampler.next_batch(-1)
    with pytest.raises(ValueError, match="batch_size"):
        sampler.next_batch(2.0)

    state = sampler.state_dict()
    other = DomainSampler({"code": list(range(50))}, seed=0)
    with pytest.raises(ValueError, match="state has domains"):
        other.load_state_dict(state)
    changed = _domains()
    changed["web"] = list(range(200, 208))
    with pytest.raises(ValueError, match="differ"):
        DomainSampler(changed, seed=0).load_state_dict(state)
    broken = dict(state)
    del broken["rng"]
    with pytest.raises(ValueError, match="missing keys"):
        sampler.load_state_dict(broken)
    broken = json.loads(json.dumps(state))
    broken["positions"]["web"] = 99
    with pytest.raises(ValueError, match="outside"):
        sampler.load_state_dict(broken)


# --------------------------------------------------------------------------------------------
# the objective: settings from the schema, perplexities on plain-text rows
# --------------------------------------------------------------------------------------------


def test_objective_settings_come_from_the_schema_with_the_paper_values():
    from distill.objectives.ddk import with_schema_defaults

    filled = with_schema_defaults({"mode": "ddk", "teacher": "t", "gamma": 0.3})
    assert filled["gamma"] == 0.3  # given: kept
    # The paper's settings (docs/published.md, DDK) are the schema's defaults.
    assert (filled["alpha"], filled["interval"], filled["temperature"]) == (0.5, 1000, 1.0)
    assert filled["valid_per_domain"] == 500


def test_paper_config_runs_ddk_with_the_paper_settings():
    from pathlib import Path

    import yaml

    from distill.config import validate_config

    paper = Path(__file__).resolve().parents[1] / "configs" / "paper.yaml"
    ddk_config = validate_config(yaml.safe_load(paper.read_text()))["ddk"]
    expected = {"alpha": 0.5, "interval": 1000, "gamma": 0.2, "temperature": 1.0,
                "valid_per_domain": 500}  # fmt: skip
    assert {k: ddk_config[k] for k in expected} == expected


@pytest.mark.slow
def test_domain_perplexity_on_plain_text_rows_counts_every_token(tiny_student_dir):
    """Pretraining rows {"id", "domain", "text"}: every token after the first is a target; the
    per-domain perplexity is exp of the token-mean CE, computed here in float64 row by row."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.batching import encode_examples
    from distill.objectives.ddk import domain_perplexity

    tokenizer = AutoTokenizer.from_pretrained(tiny_student_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    rows = [
        {"id": "a", "domain": "web", "text": "The cat sat on the mat."},
        {"id": "b", "domain": "code", "text": "def f(x):\n    return x + 1"},
        {"id": "c", "domain": "web", "text": "Rain is water that falls from clouds today."},
    ]
    examples = encode_examples(tokenizer, rows, 64)
    ppl = domain_perplexity(model, examples, tokenizer.pad_token_id, torch.device("cpu"),
                            batch_size=2)  # fmt: skip

    double = copy.deepcopy(model).double().eval()
    sums: dict[str, list[float]] = {}
    for row in rows:
        ids = torch.tensor([tokenizer(row["text"], add_special_tokens=True)["input_ids"]])
        with torch.no_grad():
            logprobs = torch.log_softmax(double(input_ids=ids).logits[0, :-1], -1)
        nll = -logprobs.gather(-1, ids[0, 1:, None]).sum()
        total = sums.setdefault(row["domain"], [0.0, 0])
        total[0] += float(nll)
        total[1] += ids.shape[1] - 1
    expected = {d: math.exp(s / n) for d, (s, n) in sums.items()}
    assert ppl.keys() == expected.keys()
    for domain, value in expected.items():
        assert ppl[domain] == pytest.approx(value, rel=1e-4)

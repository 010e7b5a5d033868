"""distill.data.math: determinism across processes and hash seeds, splits, row format, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.data.math import answers_match, generate, hash_seed
from distill.io import InputError, check_example

# algebra__polynomial_roots and algebra__linear_1d depend on PYTHONHASHSEED (checked below);
# numbers__gcd_composed goes through the mended composition.expand_entities; numbers__is_prime
# draws from sympy's own random generator.
MODULES = [
    "algebra__polynomial_roots",
    "algebra__linear_1d",
    "arithmetic__add_or_sub",
    "numbers__gcd_composed",
    "numbers__is_prime",
]
N = {"train": 30, "valid": 10, "test": 10}


def _cli(
    out_dir: Path, seed: int, hash_seed_env: str, jobs: int = 1, modules: list[str] = MODULES
) -> dict[str, bytes]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed_env}
    cmd = [sys.executable, "-m", "distill.data.math", "--modules", *modules]
    cmd += ["--difficulty", "train-easy", "--seed", str(seed), "--out-dir", str(out_dir)]
    cmd += ["--n-train", str(N["train"]), "--n-valid", str(N["valid"]), "--n-test", str(N["test"])]
    cmd += ["--jobs", str(jobs)]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return {s: (out_dir / f"{s}.jsonl").read_bytes() for s in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    tmp = tmp_path_factory.mktemp("math")
    return {
        "a": _cli(tmp / "a", seed=0, hash_seed_env="0", jobs=1),
        "b": _cli(tmp / "b", seed=0, hash_seed_env="987", jobs=3),
        "other_seed": _cli(tmp / "c", seed=1, hash_seed_env="0", jobs=2, modules=MODULES[:2]),
    }


def _rows(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines()]


def test_same_seed_same_bytes_across_processes(runs):
    assert runs["a"] == runs["b"]


def test_different_seed_different_data(runs):
    for split in ("train", "valid", "test"):
        a = {r["messages"][0]["content"] for r in _rows(runs["a"][split])[: 2 * N[split]]}
        c = {r["messages"][0]["content"] for r in _rows(runs["other_seed"][split])}
        assert a != c
        assert len(a & c) < len(a) / 2


def test_hash_seed_matters_so_the_determinism_test_is_real():
    """Sampling in-process under two PYTHONHASHSEEDs gives different polynomial_roots rows."""
    code = (
        "import json, logging; logging.disable(logging.INFO)\n"
        "from distill.data.math import _generate_here\n"
        "rows = _generate_here(['algebra__polynomial_roots'], 'train-easy', "
        "{'train': 20, 'valid': 0, 'test': 0}, 0)\n"
        "print(json.dumps(rows))"
    )
    outs = [
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": h},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for h in ("1", "2")
    ]
    assert outs[0] != outs[1]


def test_rows_follow_the_contract(runs):
    for split, n in N.items():
        rows = _rows(runs["a"][split])
        assert len(rows) == n * len(MODULES)
        assert len({r["id"] for r in rows}) == len(rows)
        for row in rows:
            assert check_example(row) is None, row
            module = row["module"]
            assert module in MODULES
            assert row["domain"] == module.split("__")[0]
            assert row["id"].startswith(f"{module}-{split}-")
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
            assert row["messages"][1]["content"] == row["answer"] != ""
        assert [r["module"] for r in rows] == [m for m in MODULES for _ in range(n)]


def test_no_question_in_two_splits(runs):
    questions = {
        split: [r["messages"][0]["content"] for r in _rows(runs["a"][split])]
        for split in ("train", "valid", "test")
    }
    for split, qs in questions.items():
        assert len(set(qs)) == len(qs), split
    assert not set(questions["train"]) & set(questions["valid"])
    assert not set(questions["train"]) & set(questions["test"])
    assert not set(questions["valid"]) & set(questions["test"])


def test_module_rows_independent_of_other_modules_and_n_train(runs):
    """One module alone, fewer train rows: same test/valid rows and a prefix of the train rows."""
    alone = generate(["arithmetic__add_or_sub"], "train-easy", {**N, "train": 5}, seed=0)
    for split in ("train", "valid", "test"):
        full = [r for r in _rows(runs["a"][split]) if r["module"] == "arithmetic__add_or_sub"]
        assert alone[split] == full[: len(alone[split])]
    assert len(alone["train"]) == 5


def test_test_split_from_another_regime():
    rows = generate(
        ["numbers__gcd"],
        "train-easy",
        {"train": 20, "valid": 5, "test": 5},
        seed=3,
        test_difficulty="interpolate",
    )
    test_q = {r["messages"][0]["content"] for r in rows["test"]}
    train_q = {r["messages"][0]["content"] for r in rows["train"] + rows["valid"]}
    assert len(test_q) == 5 and len(train_q) == 25 and not test_q & train_q


def test_unknown_module_names_close_matches():
    with pytest.raises(InputError) as e:
        generate(["algebra__linear_1d", "numbers__gdc"], "train-easy", {"train": 1}, seed=0)
    message = str(e.value)
    assert "numbers__gdc" in message and "close: numbers__gcd" in message
    assert "arithmetic__add_or_sub" in message  # lists the valid names
    with pytest.raises(InputError, match="difficulty"):
        generate(["numbers__gcd"], "train-impossible", {"train": 1}, seed=0)
    with pytest.raises(InputError, match="counts"):
        generate(["numbers__gcd"], "train-easy", {"train": -1}, seed=0)


def test_cli_unknown_module_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "distill.data.math", "--modules", "algebra__linear1d"]
        + ["--n-train", "1", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "error: unknown module" in proc.stderr and "algebra__linear_1d" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_hash_seed_is_a_valid_pythonhashseed():
    for seed in (0, 1, 2**40, -5):
        assert 1 <= int(hash_seed(seed)) <= 2**32 - 1
    assert hash_seed(0) != hash_seed(1)


@pytest.mark.parametrize(
    ("predicted", "answer", "expected"),
    [
        ("5", "5", True),
        (" 5 ", "5", True),
        ("5.0", "5", True),
        ("-3/4", "-3/4", True),
        ("-0.75", "-3/4", True),
        ("-6/8", "-3/4", True),
        ("3/4", "-3/4", False),
        ("+7", "7", True),
        (".5", "1/2", True),
        ("-2, 1/3", "-2,1/3", True),
        ("-2, 0.5", "-2, 1/2", True),
        ("1/2, -2", "-2, 1/2", False),
        ("-2", "-2, 1/2", False),
        ("True", "True", True),
        ("true", "True", False),
        ("False", "True", False),
        ("2*x**2 + 3", "2*x**2+3", True),
        ("3 + 2*x**2", "2*x**2 + 3", False),
        ("1/0", "0", False),
        ("1e3", "1000", False),
        ("", "0", False),
        ("5", "6", False),
    ],
)
def test_answers_match(predicted, answer, expected):
    assert answers_match(predicted, answer) is expected


def test_used_up_question_space_stops_with_input_error():
    from types import SimpleNamespace

    from distill.data.math import _draw

    def sample(fn):
        return SimpleNamespace(question=f"q{fn()}", answer="a"), 0

    values = iter(range(10**9))
    with pytest.raises(InputError, match="used up"):
        _draw(lambda: next(values) % 7, sample, set(), 10, "tiny")
    assert len(_draw(lambda: next(values), sample, set(), 50, "big")) == 50


def test_mend_refuses_what_it_does_not_expect():
    from distill.data.math import _ATTRIBUTE, _rename_names

    def f(a):
        return a.itemset(0, 1)

    with pytest.raises(RuntimeError, match="cannot mend"):
        _rename_names(f, {"object": "object_"}, _ATTRIBUTE)
    _rename_names(f, {"itemset": "__setitem__"}, _ATTRIBUTE)
    a = [0]
    f(a)
    assert a == [1]

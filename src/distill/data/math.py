"""Maths question/answer data from DeepMind's `mathematics_dataset` (PyPI 1.0.1), in chat format.

Launch (writes train.jsonl, valid.jsonl, test.jsonl atomically and logs the counts):

    python -m distill.data.math --modules algebra__linear_1d arithmetic__add_or_sub \\
        --difficulty train-easy --n-train 1000 --n-valid 100 --n-test 100 --seed 0 \\
        --out-dir results/data/math

`--n-*` are per module. `--difficulty` is one of the package's regimes: train-easy,
train-medium, train-hard (training entropy in thirds), interpolate (the package's held-out test
regime, same module names as training) or extrapolate (harder test modules with their own names,
e.g. arithmetic__add_or_sub_big). `--test-difficulty interpolate` draws only the test split from
another regime. Module names are the package's own, `<family>__<name>`; `--list` prints them.

Each row: {"id": "<module>-<split>-<i>", "domain": "<family>", "module": "<module>",
"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
"answer": answer}. `answers_match(predicted, answer)` scores a prediction against "answer".

Splits. Per module, one seeded stream of questions fills test first, then valid, then train; a
question whose text was already drawn is skipped, so no question is in two splits and the split a
question lands in is its first place in a deterministic stream (the test set stays the same when
only --n-train or --n-valid change). With --test-difficulty the test split has its own stream and
the train/valid stream skips its questions.

Determinism (same arguments -> same bytes). The package draws from `random` and `np.random`, and
some modules iterate over sets of strings (free-variable letters), whose order follows Python's
string hashing, i.e. PYTHONHASHSEED, which is read only at interpreter start. So `generate()`
always runs the sampling in a child interpreter (`python -m distill.data.math --worker`) started
with PYTHONHASHSEED fixed from the seed; inside it `random` and `np.random` are re-seeded from
(seed, regime, module) before each module, so adding or reordering modules leaves every other
module's rows unchanged. The child's stdout carries the rows back as JSON.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from distill.io import InputError, main_guard, setup_logging, write_jsonl

log = logging.getLogger("distill.data.math")

SPLITS = ("train", "valid", "test")
# The package's regimes (generate.init_modules(train_split=True)).
DIFFICULTIES = ("train-easy", "train-medium", "train-hard", "interpolate", "extrapolate")
# A module whose question space runs out is stopped after this many draws per wanted question.
_MAX_DRAWS_PER_ROW = 50


# --------------------------------------------------------------------------------------------
# Mending the PyPI package (1.0.1, last released 2019) for sympy >= 1.6 and numpy 2.


def _rename_names(func: Any, renames: dict[str, str], opnames: set[str]) -> None:
    """Make `func`'s code use name `new` wherever it uses name `old` (via one of `opnames`).

    Only the name table (co_names) of the function's code object changes; the function object,
    which other modules may already hold, is kept. Refuses if a name is missing or is also used
    by another kind of instruction (an attribute vs. a global), so that a changed package fails
    loudly instead of subtly.
    """
    import dis

    code = func.__code__
    for old in renames:
        uses = {i.opname for i in dis.get_instructions(code) if i.argval == old}
        if not uses or uses - opnames:
            raise RuntimeError(
                f"cannot mend {func.__module__}.{func.__qualname__}: expected {old!r} loaded by "
                f"{sorted(opnames)}, found {sorted(uses)}. Is mathematics-dataset still 1.0.1?"
            )
    func.__code__ = code.replace(co_names=tuple(renames.get(n, n) for n in code.co_names))


_ATTRIBUTE = {"LOAD_ATTR", "LOAD_METHOD"}


class _InsertionOrderedSet(dict):
    """The part of `set` that composition.expand_entities uses, iterating in insertion order."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__(dict.fromkeys(items))

    def add(self, item: Any) -> None:
        self[item] = None


def _mend_mathematics_dataset() -> None:
    """Patch mathematics_dataset 1.0.1 (2019) where it breaks on today's sympy/numpy/CPython.

    1. `sample/polynomials.py` does `from sympy.solvers.diophantine import base_solution_linear`;
       since sympy 1.6 the function lives in the submodule `sympy.solvers.diophantine.diophantine`
       (same signature and behaviour). Re-export it on the package before the import runs.
    2. `np.object` (an alias of the builtin `object`, removed in numpy 1.24) is used as a dtype in
       `expand_coefficients` and `coefficients_linear_split`: those two now read `np.object_`,
       the same object dtype. Done per function rather than by setting `numpy.object`, so numpy
       stays as it is for everything else in the process.
    3. `ndarray.itemset(index, value)` (removed in numpy 2; numpy's C type cannot be given the
       method back) in `sample_coefficients` and `expand_coefficients`: those two now call
       `ndarray.__setitem__(index, value)`, i.e. `array[index] = value`, which is what itemset did
       for the full integer index used there.
    4. Not a crash but nondeterminism: `util/composition.expand_entities` collects `Entity`
       objects (hashed by memory address) in a `set`, then `random.shuffle`s `list(that set)`;
       the starting order, hence the shuffled order of the "Let x = ..." clauses in composed
       questions, changed from run to run even with the same seeds and PYTHONHASHSEED. It now
       builds an insertion-ordered set instead; the shuffle still draws a uniform order.
    Each mend swaps one name in a function's name table (see `_rename_names`); none of the
    package's code is copied. Idempotent. `generate.py` needs no mending: its absl flags only
    have to be marked parsed.
    """
    import importlib

    # importlib, not `import ... as`: the attribute `sympy.solvers.diophantine` is the function
    # diophantine(), which shadows the package of the same name.
    diophantine_pkg = importlib.import_module("sympy.solvers.diophantine")
    if not hasattr(diophantine_pkg, "base_solution_linear"):
        home = importlib.import_module("sympy.solvers.diophantine.diophantine")
        diophantine_pkg.base_solution_linear = home.base_solution_linear

    from mathematics_dataset.sample import polynomials
    from mathematics_dataset.util import composition

    if getattr(polynomials, "_distill_mended", False):
        return
    _rename_names(polynomials.sample_coefficients, {"itemset": "__setitem__"}, _ATTRIBUTE)
    _rename_names(
        polynomials.expand_coefficients, {"itemset": "__setitem__", "object": "object_"}, _ATTRIBUTE
    )
    _rename_names(polynomials.coefficients_linear_split, {"object": "object_"}, _ATTRIBUTE)
    composition._InsertionOrderedSet = _InsertionOrderedSet
    _rename_names(composition.expand_entities, {"set": "_InsertionOrderedSet"}, {"LOAD_GLOBAL"})
    polynomials._distill_mended = True


def _load_generate() -> Any:
    """Return the package's `generate` module, mended, with all regimes' modules built."""
    _mend_mathematics_dataset()
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # defaults: no --filter, no --show_dropped
    from mathematics_dataset import generate

    generate.init_modules(train_split=True)
    return generate


# --------------------------------------------------------------------------------------------
# Sampling (runs inside the worker interpreter).


def _derived_seed(*parts: Any, bits: int = 32) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in ("distill.data.math", *parts)).encode())
    return int.from_bytes(digest.digest()[:8], "big") % (1 << bits)


def hash_seed(seed: int) -> str:
    """The PYTHONHASHSEED the worker runs under for `seed` (1 .. 2**32-1; 0 would disable it)."""
    return str(_derived_seed("hash", seed) % (2**32 - 1) + 1)


def _check_names(modules: list[str], regimes: dict[str, list[str]]) -> None:
    """Raise InputError for a module not in a regime, with close matches and the valid names."""
    for regime, names in regimes.items():
        unknown = [m for m in modules if m not in names]
        if not unknown:
            continue
        hints = []
        for m in unknown:
            close = difflib.get_close_matches(m, names, n=3, cutoff=0.5)
            hints.append(f"{m!r} (close: {', '.join(close)})" if close else repr(m))
        raise InputError(
            f"unknown module(s) for difficulty {regime}: {'; '.join(hints)}. "
            f"Fix: use the package's names, one of: {', '.join(names)}."
        )


def _draw(module_fn: Any, sample: Any, seen: set[str], count: int, what: str) -> list:
    """Draw `count` questions not in `seen` (adding them), as (question, answer) pairs."""
    out: list[tuple[str, str]] = []
    draws = 0
    limit = _MAX_DRAWS_PER_ROW * count + 1000
    while len(out) < count:
        if draws >= limit:
            raise InputError(
                f"{what}: only {len(out)} new distinct questions in {draws} draws, {count} wanted; "
                "its question space at this difficulty is too small. Fix: lower --n-* for it or "
                "use a harder --difficulty."
            )
        draws += 1
        problem, _ = sample(module_fn)
        question = str(problem.question)
        if question in seen:
            continue
        seen.add(question)
        out.append((question, str(problem.answer)))
    return out


def _seed_rngs(seed: int, regime: str, module: str) -> None:
    """Seed every generator the package draws from, from (seed, regime, module) alone.

    Besides `random` and `np.random`, sympy >= 1.8 keeps its own generator (sympy.core.random),
    which `sympy.randprime` (numbers__is_prime) draws from; in 2019 that was `random` itself.
    """
    import random

    import numpy as np
    import sympy.core.random

    random.seed(_derived_seed("random", seed, regime, module, bits=64))
    np.random.seed(_derived_seed("numpy", seed, regime, module))
    sympy.core.random.seed(_derived_seed("sympy", seed, regime, module, bits=64))


def _generate_here(
    modules: list[str],
    difficulty: str,
    n: dict[str, int],
    seed: int,
    test_difficulty: str | None = None,
) -> dict[str, list[dict]]:
    """Sample in this interpreter (its PYTHONHASHSEED is whatever it started with)."""
    generate = _load_generate()
    test_regime = test_difficulty or difficulty
    regimes = {r: list(generate.filtered_modules[r]) for r in dict.fromkeys([difficulty])}
    if n.get("test", 0) > 0:
        regimes[test_regime] = list(generate.filtered_modules[test_regime])
    _check_names(modules, regimes)

    out: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for module in modules:
        t0 = time.perf_counter()
        seen: set[str] = set()
        fn = generate.filtered_modules[difficulty][module]
        drawn: dict[str, list] = {}
        if test_regime != difficulty and n.get("test", 0) > 0:
            _seed_rngs(seed, test_regime, module)
            test_fn = generate.filtered_modules[test_regime][module]
            what = f"{module} ({test_regime})"
            drawn["test"] = _draw(test_fn, generate.sample_from_module, seen, n["test"], what)
        _seed_rngs(seed, difficulty, module)
        for split in ("test", "valid", "train"):
            if split not in drawn:
                what = f"{module} ({difficulty})"
                drawn[split] = _draw(fn, generate.sample_from_module, seen, n.get(split, 0), what)
        family = module.split("__", 1)[0]
        for split in SPLITS:
            for i, (question, answer) in enumerate(drawn[split]):
                out[split].append(
                    {
                        "id": f"{module}-{split}-{i}",
                        "domain": family,
                        "module": module,
                        "messages": [
                            {"role": "user", "content": question},
                            {"role": "assistant", "content": answer},
                        ],
                        "answer": answer,
                    }
                )
        total = sum(len(v) for v in drawn.values())
        seconds = time.perf_counter() - t0
        log.info(
            "%s: %s in %.2f s (%.0f examples/s)",
            module,
            ", ".join(f"{len(drawn[s])} {s}" for s in SPLITS),
            seconds,
            total / seconds if seconds else 0.0,
        )
    return out


def _worker() -> None:
    """Child side of `generate()`: JSON spec on stdin -> {"rows"} or {"error"} JSON on stdout."""
    setup_logging()
    spec = json.load(sys.stdin)
    if os.environ.get("PYTHONHASHSEED") != hash_seed(spec["seed"]):
        raise RuntimeError("the worker must be started by generate() with its PYTHONHASHSEED")
    try:
        result: dict[str, Any] = {"rows": _generate_here(**spec)}
    except InputError as e:
        result = {"error": str(e)}
    json.dump(result, sys.stdout, ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# Public API.


def generate(
    modules: list[str],
    difficulty: str,
    n: dict[str, int],
    seed: int,
    test_difficulty: str | None = None,
) -> dict[str, list[dict]]:
    """Sample `n[split]` rows per module for each split in ("train", "valid", "test").

    Runs in a child interpreter with PYTHONHASHSEED derived from `seed`, so the result depends
    only on the arguments (see the module docstring). Raises InputError for bad arguments.
    """
    if difficulty not in DIFFICULTIES:
        raise InputError(f"unknown difficulty {difficulty!r}. Fix: use one of {DIFFICULTIES}.")
    if test_difficulty is not None and test_difficulty not in DIFFICULTIES:
        raise InputError(
            f"unknown test difficulty {test_difficulty!r}. Fix: use one of {DIFFICULTIES}."
        )
    if not modules:
        raise InputError("no modules given. Fix: name at least one, e.g. algebra__linear_1d.")
    if len(set(modules)) != len(modules):
        raise InputError(f"a module is named twice in {modules}. Fix: name each once.")
    if set(n) - set(SPLITS) or any(not isinstance(v, int) or v < 0 for v in n.values()):
        raise InputError(f"n must map splits {SPLITS} to counts >= 0, got {n}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an integer, got {seed!r}.")
    spec = {
        "modules": list(modules),
        "difficulty": difficulty,
        "n": {split: int(n.get(split, 0)) for split in SPLITS},
        "seed": seed,
        "test_difficulty": test_difficulty,
    }
    env = {**os.environ, "PYTHONHASHSEED": hash_seed(seed)}
    proc = subprocess.run(
        [sys.executable, "-m", "distill.data.math", "--worker"],
        input=json.dumps(spec),
        stdout=subprocess.PIPE,
        env=env,
        text=True,
        encoding="utf-8",
    )
    if proc.returncode != 0:
        raise RuntimeError(f"math data worker failed (exit {proc.returncode}); see its log above")
    result = json.loads(proc.stdout)
    if "error" in result:
        raise InputError(result["error"])
    return result["rows"]


def list_modules(difficulty: str = "train-easy") -> list[str]:
    """The package's module names for one regime (imports the package in this interpreter)."""
    if difficulty not in DIFFICULTIES:
        raise InputError(f"unknown difficulty {difficulty!r}. Fix: use one of {DIFFICULTIES}.")
    return list(_load_generate().filtered_modules[difficulty])


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")


def _as_number(text: str) -> Fraction | None:
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(predicted: str, answer: str) -> bool:
    """Whether a predicted answer equals the reference answer.

    Whitespace is ignored. Numbers compare by value (so "-3/4" == "-0.75" == "-6/8",
    "5" == "5.0"); comma-separated lists of numbers (polynomial roots, prime factors, sorted
    lists) compare element by element in order; anything else (expressions, True/False, times)
    must match as a string.
    """
    p = "".join(str(predicted).split())
    a = "".join(str(answer).split())
    if p == a:
        return True
    p_items, a_items = p.split(","), a.split(",")
    if len(p_items) != len(a_items):
        return False
    for x, y in zip(p_items, a_items, strict=True):
        if x == y:
            continue
        nx, ny = _as_number(x), _as_number(y)
        if nx is None or ny is None or nx != ny:
            return False
    return True


# --------------------------------------------------------------------------------------------
# CLI.


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker()
    parser = argparse.ArgumentParser(
        prog="python -m distill.data.math",
        description="Write train/valid/test jsonl of mathematics_dataset questions.",
    )
    parser.add_argument("--modules", nargs="+", help="package module names, e.g. numbers__gcd")
    parser.add_argument("--difficulty", default="train-easy", choices=DIFFICULTIES)
    parser.add_argument("--test-difficulty", choices=DIFFICULTIES, default=None)
    parser.add_argument("--n-train", type=int, default=1000, help="rows per module")
    parser.add_argument("--n-valid", type=int, default=100, help="rows per module")
    parser.add_argument("--n-test", type=int, default=100, help="rows per module")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path)
    parser.add_argument("--list", action="store_true", help="print module names and exit")
    args = parser.parse_args(argv)
    setup_logging()
    if args.list:
        print("\n".join(list_modules(args.difficulty)))
        return None
    if not args.modules or args.out_dir is None:
        parser.error("--modules and --out-dir are required (or use --list)")
    n = {"train": args.n_train, "valid": args.n_valid, "test": args.n_test}
    t0 = time.perf_counter()
    rows = generate(args.modules, args.difficulty, n, args.seed, args.test_difficulty)
    for split in SPLITS:
        write_jsonl(args.out_dir / f"{split}.jsonl", rows[split])
    log.info(
        "wrote %s to %s in %.1f s (seed %d, %s, PYTHONHASHSEED %s)",
        ", ".join(f"{len(rows[s])} {s}" for s in SPLITS),
        args.out_dir,
        time.perf_counter() - t0,
        args.seed,
        args.difficulty
        if not args.test_difficulty
        else f"{args.difficulty}/test {args.test_difficulty}",
        hash_seed(args.seed),
    )
    return None


if __name__ == "__main__":
    main_guard(main)

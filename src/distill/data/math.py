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

Determinism (same arguments -> same bytes, whatever the caller's PYTHONHASHSEED or --jobs).
The package draws from `random`, `np.random` and (through sympy.randprime) sympy's own generator;
and about half its modules pick variable letters from sets of strings, whose order follows
Python's string hashing, i.e. PYTHONHASHSEED, which is read only at interpreter start. So
`generate()` never samples in the calling interpreter: it starts one child interpreter per module
(`python -m distill.data.math --worker`, up to `jobs` at once) with PYTHONHASHSEED set to a value
derived from the seed, which re-seeds all three generators from (seed, regime, module) and hands
its rows back as JSON on stdout. Adding, removing or reordering modules leaves each module's rows
unchanged (the rows are concatenated in the order the modules are named). The last source of
run-to-run change, a set of objects hashed by memory address in the package, is mended (see
`_mend_mathematics_dataset`).
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
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

from distill.config import schema_defaults
from distill.io import InputError, main_guard, setup_logging, write_jsonl

log = logging.getLogger("distill.data.math")

SPLITS = ("train", "valid", "test")
# The package's regimes (generate.init_modules(train_split=True)).
DIFFICULTIES = ("train-easy", "train-medium", "train-hard", "interpolate", "extrapolate")
# A module whose question space runs out (fewer than 1% new questions in a window of draws) stops.
_WINDOW = 10_000


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
    draws = new_at_window_start = 0
    while len(out) < count:
        problem, _ = sample(module_fn)  # (it already drops over-long questions/answers)
        draws += 1
        question = str(problem.question)
        if question not in seen:
            seen.add(question)
            out.append((question, str(problem.answer)))
        if draws % _WINDOW == 0:
            if len(out) - new_at_window_start < _WINDOW // 100:
                raise InputError(
                    f"{what}: only {len(out) - new_at_window_start} new distinct questions in "
                    f"the last {_WINDOW} draws ({len(out)} of {count} wanted); its question space "
                    "is used up. Fix: ask for fewer rows of it or use a harder --difficulty."
                )
            new_at_window_start = len(out)
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


def _regimes(difficulty: str, n: dict[str, int], test_difficulty: str | None) -> list[str]:
    """The regimes a request samples from: `difficulty`, and the test one if it differs."""
    regimes = [difficulty] if n.get("train", 0) + n.get("valid", 0) > 0 else []
    if n.get("test", 0) > 0:
        regimes.append(test_difficulty or difficulty)
    return list(dict.fromkeys(regimes)) or [difficulty]


def _generate_here(
    modules: list[str],
    difficulty: str,
    n: dict[str, int],
    seed: int,
    test_difficulty: str | None = None,
) -> dict[str, list[dict]]:
    """Sample in this interpreter, whose PYTHONHASHSEED is whatever it started with."""
    generate = _load_generate()
    test_regime = test_difficulty or difficulty
    _check_names(
        modules,
        {r: list(generate.filtered_modules[r]) for r in _regimes(difficulty, n, test_difficulty)},
    )
    out: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for module in modules:
        t0 = time.perf_counter()
        seen: set[str] = set()
        drawn: dict[str, list] = {}
        if test_regime != difficulty and n.get("test", 0) > 0:
            _seed_rngs(seed, test_regime, module)
            drawn["test"] = _draw(
                generate.filtered_modules[test_regime][module],
                generate.sample_from_module,
                seen,
                n["test"],
                f"{module} ({test_regime})",
            )
        _seed_rngs(seed, difficulty, module)
        for split in ("test", "valid", "train"):  # test first: it stays put when n_train changes
            if split not in drawn:
                drawn[split] = _draw(
                    generate.filtered_modules[difficulty].get(module),
                    generate.sample_from_module,
                    seen,
                    n.get(split, 0),
                    f"{module} ({difficulty})",
                )
        family = module.split("__", 1)[0]
        for split in SPLITS:
            out[split].extend(
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
                for i, (question, answer) in enumerate(drawn[split])
            )
        seconds = time.perf_counter() - t0
        total = sum(len(rows) for rows in drawn.values())
        log.info(
            "%s: %s in %.2f s (%.0f examples/s)",
            module,
            ", ".join(f"{len(drawn[s])} {s}" for s in SPLITS),
            seconds,
            total / seconds if seconds else 0.0,
        )
    return out


def _worker() -> None:
    """Child side of `generate()`: a JSON request on stdin, a JSON answer on stdout.

    The answer is {"rows": {split: [...]}}, or {"error": message} for an InputError, or
    {"valid": {regime: [names]}} when a module name is unknown (the parent then names every
    unknown module of the request at once).
    """
    setup_logging()
    spec = json.load(sys.stdin)
    if os.environ.get("PYTHONHASHSEED") != hash_seed(spec["seed"]):
        raise RuntimeError("the worker must be started by generate(), which sets PYTHONHASHSEED")
    generate = _load_generate()
    regimes = _regimes(spec["difficulty"], spec["n"], spec["test_difficulty"])
    valid = {r: list(generate.filtered_modules[r]) for r in regimes}
    result: dict[str, Any]
    if any(m not in valid[r] for r in regimes for m in spec["modules"]):
        result = {"valid": valid}
    else:
        try:
            result = {"rows": _generate_here(**spec)}
        except InputError as e:
            result = {"error": str(e)}
    json.dump(result, sys.stdout)  # ASCII JSON: no dependence on the child's locale


# --------------------------------------------------------------------------------------------
# Public API.


def generate(
    modules: list[str],
    difficulty: str,
    n: dict[str, int],
    seed: int,
    test_difficulty: str | None = None,
    jobs: int = 1,
) -> dict[str, list[dict]]:
    """Sample `n[split]` rows per module for each split of ("train", "valid", "test").

    `modules`: package names such as "algebra__linear_1d"; `difficulty`: one of DIFFICULTIES,
    for all splits, or all but test when `test_difficulty` is given. Each module is sampled in
    its own child interpreter (at most `jobs` at once) whose PYTHONHASHSEED derives from `seed`,
    so the result depends only on the arguments (not on `jobs`). Rows come module by module in
    the order given. Raises InputError for bad arguments, naming close matches of an unknown
    module.
    """
    for name, value in (("difficulty", difficulty), ("test difficulty", test_difficulty)):
        if value is not None and value not in DIFFICULTIES:
            raise InputError(
                f"unknown {name} {value!r}. Fix: use one of {', '.join(DIFFICULTIES)}."
            )
    if isinstance(modules, str) or not modules:
        raise InputError("modules must be a non-empty list of names, e.g. ['algebra__linear_1d'].")
    if len(set(modules)) != len(modules):
        raise InputError(f"a module is named twice in {modules}. Fix: name each once.")
    if set(n) - set(SPLITS) or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in n.values()
    ):
        raise InputError(f"n must map splits {SPLITS} to counts >= 0, got {n}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an integer, got {seed!r}.")
    env = {**os.environ, "PYTHONHASHSEED": hash_seed(seed)}
    counts = {split: n.get(split, 0) for split in SPLITS}

    def run_worker(module: str) -> dict[str, Any]:
        spec = {
            "modules": [module],
            "difficulty": difficulty,
            "n": counts,
            "seed": seed,
            "test_difficulty": test_difficulty,
        }
        proc = subprocess.run(
            [sys.executable, "-m", "distill.data.math", "--worker"],
            input=json.dumps(spec),
            stdout=subprocess.PIPE,  # stderr (its log, or a traceback) goes to ours
            env=env,
            encoding="utf-8",
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"the worker for {module} failed (exit {proc.returncode}); see above"
            )
        return json.loads(proc.stdout)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(run_worker, modules))
    for result in results:
        if "valid" in result:
            _check_names(modules, result["valid"])  # raises, naming all unknown modules
    for result in results:
        if "error" in result:
            raise InputError(result["error"])
    return {split: [row for r in results for row in r["rows"][split]] for split in SPLITS}


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
        description="Write train/valid/test jsonl of mathematics_dataset questions and answers.",
    )
    parser.add_argument("--modules", nargs="+", help="package module names, e.g. numbers__gcd")
    defaults = schema_defaults("data.math")  # the schema is the one home of defaults
    parser.add_argument("--difficulty", default=defaults["difficulty"], choices=DIFFICULTIES)
    parser.add_argument(
        "--test-difficulty", choices=DIFFICULTIES, help="regime of the test split (default: same)"
    )
    for split in ("train", "valid", "test"):
        key = f"n_{split}"
        parser.add_argument(f"--n-{split}", type=int, default=defaults[key], help="rows per module")
    parser.add_argument("--seed", type=int, default=schema_defaults()["seed"])
    parser.add_argument("--out-dir", type=Path)
    parser.add_argument("--jobs", type=int, default=1, help="modules sampled at once")
    parser.add_argument("--list", action="store_true", help="print the module names and exit")
    args = parser.parse_args(argv)
    setup_logging()
    if args.list:
        print("\n".join(list_modules(args.difficulty)))
        return None
    if not args.modules or args.out_dir is None:
        parser.error("--modules and --out-dir are required (or use --list)")
    n = {"train": args.n_train, "valid": args.n_valid, "test": args.n_test}
    t0 = time.perf_counter()
    rows = generate(args.modules, args.difficulty, n, args.seed, args.test_difficulty, args.jobs)
    for split in SPLITS:
        write_jsonl(args.out_dir / f"{split}.jsonl", rows[split])
    log.info(
        "wrote %s rows to %s in %.1f s (seed %d, difficulty %s%s, PYTHONHASHSEED %s)",
        ", ".join(f"{len(rows[s])} {s}" for s in SPLITS),
        args.out_dir,
        time.perf_counter() - t0,
        args.seed,
        args.difficulty,
        f", test {args.test_difficulty}" if args.test_difficulty else "",
        hash_seed(args.seed),
    )
    return None


if __name__ == "__main__":
    main_guard(main)

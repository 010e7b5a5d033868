"""AlpacaEval's two protocols and its leaderboard, from the installed alpaca_eval package.

Launch:

    # judge a model's outputs against the reference outputs -> alpaca_eval annotations
    python -m distill.eval.alpaca annotate --annotator alpaca_eval_gpt4 \\
        --model-outputs results/eval/alpaca/seed0/outputs/sft.json \\
        --reference-outputs results/eval/alpaca/data/alpaca_eval.json \\
        --judge-config judge.yaml --out results/eval/alpaca/seed0/annotations/sft.json
    # (--judge-json '{"kind": "transformers", "model_dir": ...}' instead of a YAML file)

    # annotations (one or more files) -> leaderboard, one row per generator
    python -m distill.eval.alpaca score \\
        --annotations results/eval/alpaca/seed0/annotations/*.json \\
        --out results/eval/alpaca/seed0/leaderboard.csv

Formats (alpaca_eval's):
- model_outputs.json: [{"instruction", "output", "generator", "dataset"}, ...]; the evaluation
  set alpaca_eval.json (tatsu-lab/alpaca_eval) has this format too, with text-davinci-003's
  outputs, so it is AlpacaEval 1.0's reference file as it is.
- annotations.json: [{"instruction", "output_1", "generator_1", "output_2", "generator_2",
  "annotator", "preference", "preference_raw_completion", "dataset"}, ...] where output_1 is
  the reference (baseline) and output_2 the evaluated model, as alpaca_eval's
  annotate_head2head(outputs_1=reference_outputs, outputs_2=model_outputs) writes them.

Preference convention (alpaca_eval's): 1 = output_1 (the reference) is better, 2 = output_2 (the
model) is better, 1.5 = tie; win_rate = 100 * mean(preference - 1) is the model's win rate.

The annotator (`--annotator`, config eval.alpaca.annotator) is read from the installed package
(evaluators_configs/<annotator>/configs.yaml: prompt_template, completions_kwargs,
fn_completion_parser), and its parser decides the protocol:
- `ranking_parser` — **AlpacaEval 1.0** (`alpaca_eval_gpt4`, KD-DAE's numbers): the judge ranks
  "model_1" and "model_2" in a Python list; the library's ranking_parser reads model_1's rank
  (1 or 2). A judge with rating `generate` writes the ranking (max_tokens and temperature from the
  annotator's completions_kwargs); an in-process judge with rating `expected` is prefilled with
  RANKING_PREFILL, the place where the rank-1 model is named, and the ranking text written from
  P("model_1") against P("model_2") there is parsed by the same library parser.
- `logprob_parser` — **AlpacaEval 2.0's weighted protocol** (`weighted_alpaca_eval_gpt4_turbo`):
  the judge names the better output "m" (shown first) or "M" (shown second); preference =
  2 - P(m) / (P(m) + P(M)) in shown order (logprob_parser with is_binarize=False). Neither token
  among the judge's top log-probs -> NaN (alpaca_eval's value; get_winrate drops it).
In both, the prompt is filled by alpaca_eval.utils.make_prompts and turned into chat messages by
prompt_to_chatml; the two outputs are shown swapped when `random.Random("is_switched_outputs" +
instruction + "0").choices([False, True])[0]` is True (RandomSwitchTwoColumnsProcessor with
PairwiseAnnotator's seed 0), and the shown-order preference x becomes 3 - x then; identical
outputs get 1.5 without a judge call.

Metrics come from alpaca_eval.metrics.get_winrate itself: win_rate, standard_error, n_wins,
n_wins_base, n_draws, n_total, discrete_win_rate; avg_length = int(mean(len(output_2))) as
alpaca_eval's leaderboard computes it from the model outputs. The length-controlled win rate (2.0)
needs alpaca_eval's df_gamed.csv (a hub download) and its 805-instruction "index" column: when
either is missing offline, `length_controlled_winrate` is NaN and `length_controlled_note` says
why.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from distill.eval.mtbench import add_judge_arguments, judge_settings  # one judge CLI for both
from distill.io import InputError, atomic_path, main_guard, setup_logging, write_json

log = logging.getLogger(__name__)

WEIGHTED = "weighted_alpaca_eval_gpt4_turbo"  # AlpacaEval 2.0's annotator
RANKING = "alpaca_eval_gpt4"  # AlpacaEval 1.0's annotator (KD-DAE's numbers)
SWITCH_SEED_PREFIX = "is_switched_outputs"  # alpaca_eval's _switch_column, the seed's prefix
ANNOTATOR_SEED = 0  # PairwiseAnnotator's default seed, passed down to the switch processor
FIRST, SECOND = "m", "M"  # the identifiers the prompt gives the shown-first / shown-second output
RANK_NAMES = ("model_1", "model_2")  # alpaca_eval_gpt4's names of the shown-first / -second output
# Where alpaca_eval_gpt4's answer names its rank-1 model (the prompt's own output layout).
RANKING_PREFILL = "[\n    {'model': '"
PROTOCOLS = {"logprob_parser": "weighted", "ranking_parser": "ranking"}

MODEL_OUTPUT_KEYS = ("instruction", "output", "generator")
ANNOTATION_KEYS = (
    "instruction",
    "output_1",
    "generator_1",
    "output_2",
    "generator_2",
    "preference",
)
METRIC_KEYS = (
    "win_rate",
    "standard_error",
    "n_wins",
    "n_wins_base",
    "n_draws",
    "n_total",
    "discrete_win_rate",
)


def _alpaca_eval():
    """Import alpaca_eval quietly (it imports pkg_resources, which warns on import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        import alpaca_eval.completion_parsers
        import alpaca_eval.metrics
        import alpaca_eval.utils

    return alpaca_eval


# --- the protocol (pure functions) -------------------------------------------------------------


def is_switched_outputs(instruction: str, seed: int = ANNOTATOR_SEED) -> bool:
    """Whether alpaca_eval shows output_2 first for this instruction (seeded on its text)."""
    return random.Random(SWITCH_SEED_PREFIX + instruction + str(seed)).choices([False, True])[0]


def preference_from_logprobs(logprobs: Mapping[str, float], switched: bool) -> float:
    """alpaca_eval preference in [1, 2] from the judge's log-probs of "m" and "M".

    logprobs: {"m": log P(shown-first is best), "M": log P(shown-second is best)}, -inf (or
    absent) when the judge did not list the token. switched: whether output_2 was shown first.
    Returns 1 (output_1 better) ... 2 (output_2 better), NaN when neither token was listed.
    """
    lp_first = logprobs.get(FIRST, -math.inf)
    lp_second = logprobs.get(SECOND, -math.inf)
    if lp_first == -math.inf and lp_second == -math.inf:
        return math.nan
    top = max(lp_first, lp_second)
    # P(m) / (P(m) + P(M)) computed stably (logsumexp).
    p_first = math.exp(lp_first - top) / (math.exp(lp_first - top) + math.exp(lp_second - top))
    shown = 2 - p_first  # 1: the shown-first output is better
    return 3 - shown if switched else shown


def ranking_text(first: str) -> str:
    """The ranking alpaca_eval_gpt4 asks for, with `first` ("model_1" or "model_2") ranked 1."""
    second = RANK_NAMES[1] if first == RANK_NAMES[0] else RANK_NAMES[0]
    return f"{RANKING_PREFILL}{first}', 'rank': 1}},\n    {{'model': '{second}', 'rank': 2}}\n]"


def annotator_config(annotator: str) -> dict:
    """The annotator's settings from the installed alpaca_eval package (configs.yaml)."""
    import yaml

    ae = _alpaca_eval()
    path = Path(ae.__file__).parent / "evaluators_configs" / annotator / "configs.yaml"
    if not path.is_file():
        raise InputError(
            f"eval.alpaca.annotator {annotator!r} is not in the installed alpaca_eval ({path} "
            f"missing). Fix: use {RANKING} (AlpacaEval 1.0) or {WEIGHTED} (2.0)."
        )
    return yaml.safe_load(path.read_text(encoding="utf-8"))[annotator]


class Annotator:
    """One alpaca_eval annotator as the package defines it: prompt, protocol, parser, settings."""

    def __init__(self, name: str):
        import functools

        ae = _alpaca_eval()
        config = annotator_config(name)
        self.name = name
        self.protocol = PROTOCOLS.get(config.get("fn_completion_parser"))
        if self.protocol is None:
            raise InputError(
                f"annotator {name!r} parses with {config.get('fn_completion_parser')!r}; only "
                f"{', '.join(PROTOCOLS)} are supported. Fix: use {RANKING} or {WEIGHTED}."
            )
        folder = Path(ae.__file__).parent / "evaluators_configs"
        self.template = (folder / config["prompt_template"]).read_text(encoding="utf-8")
        parser_kwargs = config.get("completion_parser_kwargs", {})
        self.parser = functools.partial(
            getattr(ae.completion_parsers, config["fn_completion_parser"]), **parser_kwargs
        )
        self.completions_kwargs = config.get("completions_kwargs", {})
        wanted = {"numerator_token": FIRST, "denominator_tokens": [FIRST, SECOND]}
        if self.protocol == "weighted" and any(
            parser_kwargs.get(k) != v for k, v in wanted.items()
        ):
            raise InputError(f"annotator {name!r} does not ask for 'm' or 'M'; not supported.")

    def messages(self, instruction: str, shown_1: str, shown_2: str) -> list[dict]:
        """The judge's chat messages with the outputs in the order they are shown."""
        ae = _alpaca_eval()
        df = pd.DataFrame([{"instruction": instruction, "output_1": shown_1, "output_2": shown_2}])
        prompts, _ = ae.utils.make_prompts(df, self.template, batch_size=1)
        return ae.utils.prompt_to_chatml(prompts[0])

    def judge_shown(
        self, judge, instruction: str, shown_1: str, shown_2: str
    ) -> tuple[float, dict]:
        """(preference in shown order: 1 = the shown-first output is better ... 2; NaN when the
        verdict cannot be read, and the raw verdict) for one pair, as shown."""
        messages = self.messages(instruction, shown_1, shown_2)
        if self.protocol == "weighted":
            lps = judge.choice_logprobs(messages, [FIRST, SECOND])
            raw = {"logprobs": {k: _json_float(v) for k, v in lps.items()}}
            return preference_from_logprobs(lps, switched=False), raw
        raw = {}
        if judge.rating == "expected":
            lps = judge.continuation_logprobs(messages, RANKING_PREFILL, list(RANK_NAMES))
            raw["logprobs"] = {k: _json_float(v) for k, v in lps.items()}
            completion = ranking_text(max(RANK_NAMES, key=lambda k: lps[k]))
        else:
            kwargs = self.completions_kwargs
            completion = judge.complete(
                messages, max_tokens=kwargs["max_tokens"], temperature=kwargs["temperature"]
            )
        raw["completion"] = completion
        [rank] = self.parser(completion)  # the library's ranking_parser: model_1's rank or NaN
        return float(rank), raw


def build_messages(
    annotator: Annotator, instruction: str, output_1: str, output_2: str
) -> tuple[list[dict], bool]:
    """The judge's chat messages for one pair, and whether the outputs are shown swapped.

    output_1 / output_2 are in annotation order (reference, model).
    """
    switched = is_switched_outputs(instruction)
    shown_1, shown_2 = (output_2, output_1) if switched else (output_1, output_2)
    return annotator.messages(instruction, shown_1, shown_2), switched


# --- annotating --------------------------------------------------------------------------------


def pair_outputs(reference: Sequence[Mapping], model: Sequence[Mapping]) -> list[dict]:
    """Rows to annotate: the model's outputs matched to the reference's by instruction.

    Keeps the reference's order; instructions the model has no output for are left out (with a
    warning), as alpaca_eval's inner merge does.
    """
    seen = set()
    for i, r in enumerate(reference):
        if r["instruction"] in seen:
            raise InputError(f"reference outputs: instruction #{i} appears twice. Fix: one each.")
        seen.add(r["instruction"])
    by_instruction = {}
    for i, m in enumerate(model):
        if m["instruction"] in by_instruction:
            raise InputError(
                f"model outputs: instruction #{i} appears twice. Fix: one output each."
            )
        by_instruction[m["instruction"]] = m
    rows, missing = [], 0
    for r in reference:
        m = by_instruction.get(r["instruction"])
        if m is None:
            missing += 1
            continue
        row = {
            "instruction": r["instruction"],
            "output_1": r["output"],
            "generator_1": r["generator"],
            "output_2": m["output"],
            "generator_2": m["generator"],
        }
        if "dataset" in r:
            row["dataset"] = r["dataset"]
        rows.append(row)
    if missing:
        log.warning("%d reference instructions have no model output; left out", missing)
    if not rows:
        raise InputError("no instruction is in both output files. Fix: pass matching files.")
    return rows


def annotate(judge, rows: Sequence[Mapping], annotator: str) -> list[dict]:
    """Annotate pairs with `judge` (a distill.eval.judges.Judge) by `annotator`'s protocol.

    rows: {"instruction", "output_1" (reference), "generator_1", "output_2" (model),
    "generator_2", ...}. Returns annotation records (input keys + "annotator", "preference",
    "preference_raw_completion": the verdict as read ({"logprobs"} and/or {"completion"}) and
    "is_switched_outputs"; None for identical outputs), alpaca_eval's column names.
    """
    from distill.eval.judges import judge_map

    setup = Annotator(annotator)

    def one(row: Mapping) -> dict:
        out = dict(row) | {"annotator": annotator}
        if row["output_1"] == row["output_2"]:
            return out | {"preference": 1.5, "preference_raw_completion": None}
        switched = is_switched_outputs(row["instruction"])
        shown = (
            (row["output_2"], row["output_1"]) if switched else (row["output_1"], row["output_2"])
        )
        pref, raw = setup.judge_shown(judge, row["instruction"], *shown)
        raw[SWITCH_SEED_PREFIX] = switched
        pref = 3 - pref if switched else pref  # back to annotation order (NaN stays NaN)
        return out | {"preference": pref, "preference_raw_completion": raw}

    # judge None: every pair is identical (cmd_annotate then loads no judge at all)
    records = judge_map(judge, one, rows) if judge is not None else [one(r) for r in rows]
    n_nan = sum(isinstance(r["preference"], float) and math.isnan(r["preference"]) for r in records)
    if n_nan:
        log.warning("%d pairs: the judge's verdict could not be read (NaN, left out)", n_nan)
    return records


def _json_float(x: float) -> float | None:
    return None if math.isinf(x) or math.isnan(x) else x  # JSON has no -inf


# --- files -------------------------------------------------------------------------------------


def _read_json_list(path: str | os.PathLike, what: str, keys: Sequence[str]) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found. Fix: check the path.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}).") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of {what} records, as alpaca_eval writes.")
    for i, row in enumerate(data):
        missing = [k for k in keys if not isinstance(row, dict) or k not in row]
        if missing:
            raise InputError(
                f"{path}: record {i} lacks {', '.join(missing)}. Fix: every {what} record needs "
                f"{', '.join(keys)}."
            )
    return data


def write_model_outputs(path: str | os.PathLike, records: Sequence[Mapping]) -> None:
    """model_outputs.json: [{"instruction", "output", "generator", "dataset"}, ...]."""
    for i, r in enumerate(records):
        if any(k not in r for k in MODEL_OUTPUT_KEYS):
            raise InputError(f"{path}: model output {i} needs {', '.join(MODEL_OUTPUT_KEYS)}.")
    write_json(path, [dict(r) for r in records])


def read_model_outputs(path: str | os.PathLike) -> list[dict]:
    return _read_json_list(path, "model output", MODEL_OUTPUT_KEYS)


def write_annotations(path: str | os.PathLike, records: Sequence[Mapping]) -> None:
    """annotations.json as alpaca_eval writes it (a JSON list, indent 2; NaN written as null)."""
    rows = []
    for r in records:
        r = dict(r)
        if isinstance(r.get("preference"), float) and math.isnan(r["preference"]):
            r["preference"] = None
        rows.append(r)
    write_json(path, rows)


def read_annotations(path: str | os.PathLike) -> list[dict]:
    rows = _read_json_list(path, "annotation", ANNOTATION_KEYS)
    for i, r in enumerate(rows):
        p = r["preference"]
        if p is not None and not (isinstance(p, int | float) and (math.isnan(p) or 0 <= p <= 2)):
            raise InputError(
                f"{path}: record {i} has preference {p!r}. Fix: preferences are in [1, 2] "
                "(0 or 1.5 for a tie), or null."
            )
    return rows


# --- leaderboard -------------------------------------------------------------------------------


def _length_controlled(group: pd.DataFrame) -> tuple[float, float, str]:
    """(length_controlled_winrate, lc_standard_error, note); NaN + the reasons when unavailable.

    Never downloads: alpaca_eval's GLM needs df_gamed.csv from the hub, used only when it is
    already in the local hub cache, and the 805-instruction "index" column of its annotations.
    """
    nan = math.nan
    ae = _alpaca_eval()
    missing = []
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(
            repo_id="tatsu-lab/alpaca_eval",
            filename="df_gamed.csv",
            repo_type="dataset",
            cache_dir=ae.constants.DEFAULT_CACHE_DIR,
            local_files_only=True,  # offline or unavailable
        )
    except Exception:  # not in the local hub cache (or no hub client)
        missing.append("alpaca_eval's df_gamed.csv is not in the local hub cache (a download)")
    if "index" not in group.columns:
        missing.append("the annotations have no alpaca_eval 'index' (instruction number) column")
    if missing:
        return nan, nan, "unavailable: " + "; ".join(missing)
    try:
        m = ae.metrics.get_length_controlled_winrate(
            group.copy(), save_weights_dir=None, is_warn_extreme_changes=False
        )
    except Exception as e:  # the GLM fit can fail on odd inputs; report, never invent
        return nan, nan, f"unavailable: alpaca_eval's GLM failed ({type(e).__name__}: {e})"
    lc, lc_se = m["length_controlled_winrate"], m["lc_standard_error"]
    return lc, lc_se, "alpaca_eval length_controlled_v1"


def leaderboard(annotations: Sequence[Mapping] | pd.DataFrame) -> pd.DataFrame:
    """One row per generator_2 (the evaluated model), metrics from alpaca_eval's get_winrate.

    Columns: win_rate, standard_error, n_wins, n_wins_base, n_draws, n_total, discrete_win_rate,
    avg_length, length_controlled_winrate, lc_standard_error, length_controlled_note, baseline,
    annotator; indexed by generator, sorted by win_rate (descending).
    """
    ae = _alpaca_eval()
    df = (
        annotations.copy()
        if isinstance(annotations, pd.DataFrame)
        else pd.DataFrame(list(annotations))
    )
    if df.empty:
        raise InputError("no annotations to score. Fix: pass non-empty annotation files.")
    df["preference"] = pd.to_numeric(df["preference"], errors="coerce")  # null -> NaN
    rows = {}
    for generator, group in df.groupby("generator_2", sort=True):
        for col in ("generator_1", "annotator"):
            values = group[col].unique() if col in group else ["?"]
            if len(values) > 1:
                raise InputError(
                    f"generator {generator}: annotations mix several {col} values "
                    f"({', '.join(map(str, values))}). Fix: score one baseline and one annotator "
                    "per generator."
                )
        if group["instruction"].duplicated().any():
            raise InputError(
                f"generator {generator}: an instruction is annotated twice (the same file given "
                "twice?). Fix: pass each annotation file once."
            )
        metrics = ae.metrics.get_winrate(group.reset_index(drop=True))
        row = {k: metrics[k] for k in METRIC_KEYS}
        row["avg_length"] = int(group["output_2"].str.len().mean())
        lc, lc_se, note = _length_controlled(group.reset_index(drop=True))
        row |= {"length_controlled_winrate": lc, "lc_standard_error": lc_se}
        row["length_controlled_note"] = note
        row["baseline"] = group["generator_1"].iloc[0]
        row["annotator"] = group["annotator"].iloc[0] if "annotator" in group else None
        rows[generator] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "generator"
    return table.sort_values("win_rate", ascending=False, kind="stable")


# --- CLI ---------------------------------------------------------------------------------------


def cmd_annotate(args: argparse.Namespace) -> None:
    from distill.eval.judges import JudgeError, judge_from_config

    rows = pair_outputs(
        read_model_outputs(args.reference_outputs), read_model_outputs(args.model_outputs)
    )
    settings, where = judge_settings(args)
    # Identical outputs are ties without a judge call (the reference against itself): then no
    # judge is loaded at all, which saves loading a model in-process.
    needs_judge = any(r["output_1"] != r["output_2"] for r in rows)
    judge = judge_from_config(settings, where) if needs_judge else None
    try:
        records = annotate(judge, rows, annotator=args.annotator)
    except JudgeError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    write_annotations(args.out, records)
    log.info("wrote %d annotations to %s", len(records), args.out)


def cmd_score(args: argparse.Namespace) -> None:
    records: list[dict[str, Any]] = [r for p in args.annotations for r in read_annotations(p)]
    table = leaderboard(records)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.drop(columns=["length_controlled_note"]).to_string())
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp)
        log.info("wrote %s", args.out)


def main(argv: Sequence[str] | None = None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("annotate", help="judge model outputs against reference outputs")
    a.add_argument("--model-outputs", required=True)
    a.add_argument("--reference-outputs", required=True)
    add_judge_arguments(a)
    a.add_argument("--annotator", required=True, help=f"{RANKING} (1.0) or {WEIGHTED} (2.0)")
    a.add_argument("--out", required=True)
    a.set_defaults(fn=cmd_annotate)
    s = sub.add_parser("score", help="leaderboard rows from annotation files")
    s.add_argument("--annotations", nargs="+", required=True)
    s.add_argument("--out", help="leaderboard CSV to write")
    s.set_defaults(fn=cmd_score)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main_guard(main)

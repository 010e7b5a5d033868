"""AlpacaEval's weighted pairwise protocol (weighted_alpaca_eval_gpt4_turbo) and its leaderboard.

Launch:

    # judge a model's outputs against the reference outputs -> alpaca_eval annotations
    python -m distill.eval.alpaca annotate \\
        --model-outputs results/eval/alpaca/outputs/sft.json \\
        --reference-outputs results/eval/alpaca/outputs/teacher.json \\
        --judge-config judge.yaml --out results/eval/alpaca/annotations/sft.json
    # (--judge-json '{"kind": "transformers", "model_dir": ...}' instead of a YAML file)

    # annotations (one or more files) -> leaderboard, one row per generator
    python -m distill.eval.alpaca score --annotations results/eval/alpaca/annotations/*.json \\
        --out results/eval/alpaca/leaderboard.csv

Formats (alpaca_eval's):
- model_outputs.json: [{"instruction", "output", "generator", "dataset"}, ...]
- annotations.json: [{"instruction", "output_1", "generator_1", "output_2", "generator_2",
  "annotator", "preference", "preference_raw_completion", "dataset"}, ...] where output_1 is
  the reference (baseline) and output_2 the evaluated model, as alpaca_eval's
  annotate_head2head(outputs_1=reference_outputs, outputs_2=model_outputs) writes them.

Preference convention (alpaca_eval's): 1 = output_1 (the reference) is better, 2 = output_2 (the
model) is better, 1.5 = tie; the weighted protocol gives any value in [1, 2], and win_rate =
100 * mean(preference - 1) is the model's win rate against the reference.

The protocol, as alpaca_eval 0.6.6 runs it (read from its source, not copied):
- the prompt is the annotator's own file inside the installed alpaca_eval package
  (evaluators_configs/<annotator>/configs.yaml -> prompt_template, alpaca_eval_clf.txt), filled
  by alpaca_eval.utils.make_prompts and turned into chat messages by prompt_to_chatml;
- the two outputs are shown swapped when `random.Random("is_switched_outputs" + instruction +
  "0").choices([False, True])[0]` is True (RandomSwitchTwoColumnsProcessor, the annotator seed
  being PairwiseAnnotator's default 0);
- the judge names the better output "m" (shown first) or "M" (shown second); with the log-probs
  of those two next tokens, preference = 2 - P(m) / (P(m) + P(M)) in shown order, and 3 - that
  when the outputs were swapped (logprob_parser with is_binarize=False, then the un-switch).
  Neither token among the judge's top log-probs -> NaN (alpaca_eval's value; get_winrate drops it);
- identical outputs get 1.5 without a judge call.

Metrics come from alpaca_eval.metrics.get_winrate itself: win_rate, standard_error, n_wins,
n_wins_base, n_draws, n_total, discrete_win_rate; avg_length = int(mean(len(output_2))) as
alpaca_eval's leaderboard computes it from the model outputs. The length-controlled win rate needs
alpaca_eval's df_gamed.csv (a hub download) and its 805-instruction "index" column: when either is
missing offline, `length_controlled_winrate` is NaN and `length_controlled_note` says why.
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

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
SWITCH_SEED_PREFIX = "is_switched_outputs"  # alpaca_eval's _switch_column, the seed's prefix
ANNOTATOR_SEED = 0  # PairwiseAnnotator's default seed, passed down to the switch processor
FIRST, SECOND = "m", "M"  # the identifiers the prompt gives the shown-first / shown-second output

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


def annotator_config(annotator: str = ANNOTATOR) -> dict:
    """The annotator's settings from the installed alpaca_eval package (configs.yaml)."""
    import yaml

    ae = _alpaca_eval()
    path = Path(ae.__file__).parent / "evaluators_configs" / annotator / "configs.yaml"
    if not path.is_file():
        raise InputError(f"annotator {annotator!r} is not in alpaca_eval ({path} missing).")
    return yaml.safe_load(path.read_text(encoding="utf-8"))[annotator]


def load_prompt_template(annotator: str = ANNOTATOR) -> str:
    """The annotator's prompt text, read from the installed alpaca_eval package."""
    ae = _alpaca_eval()
    config = annotator_config(annotator)
    parser = config.get("completion_parser_kwargs", {})
    if parser.get("numerator_token") != FIRST or set(parser.get("denominator_tokens", [])) != {
        FIRST,
        SECOND,
    }:
        raise InputError(f"annotator {annotator!r} does not ask for 'm' or 'M'; not supported.")
    path = Path(ae.__file__).parent / "evaluators_configs" / config["prompt_template"]
    return path.read_text(encoding="utf-8")


def build_messages(
    template: str, instruction: str, output_1: str, output_2: str
) -> tuple[list[dict], bool]:
    """The judge's chat messages for one pair, and whether the outputs are shown swapped.

    output_1 / output_2 are in annotation order (reference, model).
    """
    ae = _alpaca_eval()
    switched = is_switched_outputs(instruction)
    shown_1, shown_2 = (output_2, output_1) if switched else (output_1, output_2)
    df = pd.DataFrame([{"instruction": instruction, "output_1": shown_1, "output_2": shown_2}])
    prompts, _ = ae.utils.make_prompts(df, template, batch_size=1)
    return ae.utils.prompt_to_chatml(prompts[0]), switched


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


def annotate(judge, rows: Sequence[Mapping], annotator: str = ANNOTATOR) -> list[dict]:
    """Annotate pairs with `judge` (a distill.eval.judges.Judge) by the weighted protocol.

    rows: {"instruction", "output_1" (reference), "generator_1", "output_2" (model),
    "generator_2", ...}. Returns annotation records (input keys + "annotator", "preference",
    "preference_raw_completion": {"logprobs": {"m", "M"}, "is_switched_outputs"}, None for
    identical outputs), alpaca_eval's column names.
    """
    from distill.eval.judges import judge_map

    template = load_prompt_template(annotator)

    def one(row: Mapping) -> dict:
        out = dict(row) | {"annotator": annotator}
        if row["output_1"] == row["output_2"]:
            return out | {"preference": 1.5, "preference_raw_completion": None}
        messages, switched = build_messages(
            template, row["instruction"], row["output_1"], row["output_2"]
        )
        lps = judge.choice_logprobs(messages, [FIRST, SECOND])
        pref = preference_from_logprobs(lps, switched)
        raw = {
            "logprobs": {k: _json_float(v) for k, v in lps.items()},
            SWITCH_SEED_PREFIX: switched,
        }
        return out | {"preference": pref, "preference_raw_completion": raw}

    records = judge_map(judge, one, rows)
    n_nan = sum(isinstance(r["preference"], float) and math.isnan(r["preference"]) for r in records)
    if n_nan:
        log.warning("%d pairs: neither 'm' nor 'M' in the judge's top log-probs (NaN)", n_nan)
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
    a.add_argument("--annotator", default=ANNOTATOR)
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

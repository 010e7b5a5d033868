"""KD benchmark: SFT, KD from the cache, KD online and TRL's GKDTrainer, in one run.

Same models (the embedded teacher SmolLM2-135M-Instruct and its 6-layer student slice), same
data (the instruction set of the embedded default), same batch, same steps. Each method runs in
a child process of its own so that its peak RSS is its own (`os.wait4`). Tokens/s counts the
non-padding tokens of the training batches over the training steps' wall time (model loading
and the first, warm-up step excluded).

Also: the loss's peak memory at vocab 49152, chunked vs unchunked, and the cache's bytes/token
against full fp16 logits with its top-k error (from the cache manifest).

    pip install -e '.[bench]'        # TRL, for its GKDTrainer
    snakemake -c2 results/models/student_kd/seed0   # models, data, cache
    python bench/bench_kd.py --steps 12 --out bench/results/kd.json

The loss's memory with the fused hidden-state loss: bench/bench_fused_kd.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Set from --results in main(): where the workflow left the models, data and cache.
MODELS = DATA = CACHE = Path()


def run_child(command: list[str]) -> tuple[float, str]:
    """Run a command; return (peak RSS in MB, stderr). Fails loudly if the command fails."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        text = err.read()
    if status != 0:
        raise SystemExit(f"{command[:4]} failed:\n{text[-3000:]}")
    return usage.ru_maxrss / 1024, text


def ours(objective: str, objective_settings: dict, steps: int, batch: int, max_len: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"bench-{objective}-"))
    settings = {"steps": steps, "batch_size": batch, "max_len": max_len, "warmup_steps": 1,
                "checkpoint_every": 10**6, "eval_every": 10**6, "eval_batches": 1}  # fmt: skip
    command = [sys.executable, "-m", "distill.train", "--objective", objective,
               "--student", str(MODELS / "student_init"), "--train", str(DATA / "train.jsonl"),
               "--valid", str(DATA / "valid.jsonl"), "--settings", json.dumps(settings),
               "--objective-settings", json.dumps(objective_settings), "--precision", "bf16",
               "--ckpt-dir", str(out / "ckpt"), "--out", str(out / "model")]  # fmt: skip
    rss, _ = run_child(command)
    rows = [line.split(",") for line in (out / "model/train_log.csv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    tokens = [float(r[header.index("tokens")]) for r in rows]
    wall = [float(r[header.index("wall_s")]) for r in rows]
    step_s = [wall[i] - wall[i - 1] for i in range(1, len(wall))]  # step 1 is warm-up
    return {
        "tokens_per_s": (tokens[-1] - tokens[0]) / (wall[-1] - wall[0]),
        "median_step_s": statistics.median(step_s),
        "peak_rss_mb": rss,
    }


TRL_SCRIPT = r"""
import json, sys, time
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl.experimental.gkd import GKDConfig, GKDTrainer
student_dir, teacher_dir, data, steps, batch, max_len, out = sys.argv[1:8]
rows = [json.loads(l) for l in open(data)]
tok = AutoTokenizer.from_pretrained(student_dir)
times, tokens = [], []
class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw): self.t = time.perf_counter()
    def on_step_end(self, args, state, control, **kw): times.append(time.perf_counter() - self.t)
class CountTokens:
    def __init__(self, inner): self.inner = inner
    def __call__(self, examples):
        b = self.inner(examples); tokens.append(int(b["attention_mask"].sum())); return b
args = GKDConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(batch),
                 lmbda=0.0, beta=0.0, temperature=1.0, max_length=int(max_len), learning_rate=1e-4,
                 use_cpu=True, bf16=True, report_to=[], save_strategy="no", logging_steps=10**6,
                 dataloader_num_workers=0, seed=0)
trainer = GKDTrainer(model=AutoModelForCausalLM.from_pretrained(student_dir),
                     teacher_model=AutoModelForCausalLM.from_pretrained(teacher_dir), args=args,
                     train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in rows]),
                     processing_class=tok, callbacks=[Clock()])
trainer.data_collator = CountTokens(trainer.data_collator)
trainer.train()
json.dump({"times": times, "tokens": tokens}, open(out + "/clock.json", "w"))
"""


def trl_gkd(steps: int, batch: int, max_len: int) -> dict:
    out = tempfile.mkdtemp(prefix="bench-trl-")
    command = [sys.executable, "-c", TRL_SCRIPT, str(MODELS / "student_init"),
               str(MODELS / "teacher"), str(DATA / "train.jsonl"), str(steps), str(batch),
               str(max_len), out]  # fmt: skip
    rss, _ = run_child(command)
    clock = json.loads(Path(out, "clock.json").read_text())
    # The collator runs before the step's clock starts: tokens[i] belongs to times[i].
    times, tokens = clock["times"][1:], clock["tokens"][1 : len(clock["times"])]
    return {
        "tokens_per_s": sum(tokens) / sum(times),
        "median_step_s": statistics.median(times),
        "peak_rss_mb": rss,
    }


LOSS_SCRIPT = r"""
import sys, torch
from distill import losses
n, vocab, chunk = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
student = torch.randn(1, n, vocab, dtype=torch.bfloat16, requires_grad=True)
teacher = torch.randn(1, n, vocab, dtype=torch.bfloat16)
mask = torch.ones(1, n, dtype=torch.bool)
loss = losses.forward_kl(student, teacher, mask, chunk_size=None if chunk == "none" else int(chunk))
loss.backward()
"""


def loss_memory(tokens: int, vocab: int) -> dict:
    """Peak RSS of forward+backward of forward KL on bf16 logits, minus that of the logits alone."""
    inputs_only = LOSS_SCRIPT.replace("loss.backward()", "").replace("loss = losses", "# ")
    base, _ = run_child([sys.executable, "-c", inputs_only, str(tokens), str(vocab), "none"])
    chunked, _ = run_child([sys.executable, "-c", LOSS_SCRIPT, str(tokens), str(vocab), "1024"])
    full, _ = run_child([sys.executable, "-c", LOSS_SCRIPT, str(tokens), str(vocab), "none"])
    return {"tokens": tokens, "vocab": vocab, "inputs_only_mb": base,
            "chunked_1024_mb": chunked, "unchunked_mb": full}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each method (medians)")
    parser.add_argument("--out", default="bench/results/kd.json")
    parser.add_argument("--results", default=str(REPO / "results"), help="the workflow's results/")
    args = parser.parse_args()
    global MODELS, DATA, CACHE
    results = Path(args.results).resolve()
    MODELS, DATA = results / "models", results / "data/instructions"
    # The cache folder is named by the temperature and max_len it was built with.
    CACHE = next((results / "cache/teacher/instructions").glob("*/manifest.json")).parent
    manifest = json.loads((CACHE / "manifest.json").read_text())
    teacher = str(MODELS / "teacher")
    methods = {
        "sft": lambda: ours("sft", {}, args.steps, args.batch, args.max_len),
        "kd_cache": lambda: ours(
            "kd",
            {"teacher": teacher, "teacher_source": "cache", "cache": str(CACHE)},
            args.steps,
            args.batch,
            args.max_len,
        ),  # fmt: skip
        "kd_online": lambda: ours(
            "kd",
            {"teacher": teacher, "teacher_source": "online"},
            args.steps,
            args.batch,
            args.max_len,
        ),  # fmt: skip
        "trl_gkd": lambda: trl_gkd(args.steps, args.batch, args.max_len),
    }
    runs: dict[str, list[dict]] = {name: [] for name in methods}
    for repeat in range(args.repeats):  # interleaved, so load drifts hit every method alike
        for name, run in methods.items():
            started = time.time()
            runs[name].append(run())
            print(
                f"[{repeat}] {name}: {runs[name][-1]} ({time.time() - started:.0f} s)", flush=True
            )
    summary = {
        name: {k: statistics.median(r[k] for r in results) for k in results[0]}
        for name, results in runs.items()
    }
    sft, cache, online, trl = (summary[k] for k in ("sft", "kd_cache", "kd_online", "trl_gkd"))
    summary["ratios"] = {
        "kd_cache_step_over_sft_step": cache["median_step_s"] / sft["median_step_s"],
        "kd_cache_tokens_per_s_over_trl": cache["tokens_per_s"] / trl["tokens_per_s"],
        "kd_online_tokens_per_s_over_trl": online["tokens_per_s"] / trl["tokens_per_s"],
        "kd_online_rss_over_trl": online["peak_rss_mb"] / trl["peak_rss_mb"],
    }
    summary["loss_memory"] = loss_memory(2048, 49152)
    summary["cache"] = {
        k: manifest.get(k) for k in ("kind", "k", "samples", "bytes_per_token", "quality")
    }
    summary["runs"] = runs
    summary["command"] = " ".join(["python", *sys.argv])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()

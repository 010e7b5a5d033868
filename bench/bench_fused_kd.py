"""Loss memory and time: forward KL from hidden states, unchunked vs chunked vs fused.

The part of a KD step that the loss owns: the student's last hidden states ``(N, D)`` and its
output projection ``(V, D)`` in, the loss and the gradients of both out, against full teacher
logits ``(N, V)`` (bf16), under bf16 autocast as in training. Three ways:

  unchunked     logits = h @ W^T, then `losses.forward_kl(chunk_size=None)`
  chunked       logits = h @ W^T, then `losses.forward_kl(chunk_size=1024)` (the path before
                distill.fused_kd: the logits and their fp32 gradient still exist)
  fused         `fused_kd.fused_divergence` (chunk 256): no (N, V) tensor of the student's

Each measurement runs in a child process of its own: its peak RSS (`os.wait4`) minus the peak of
a child that only allocates the inputs and the two gradients is the loss's memory; the child
also times forward + backward (median of `--iterations` after one warm-up). Children of the
three ways are interleaved `--repeats` times and the medians reported.

    nice python bench/bench_fused_kd.py --repeats 3 --out bench/results/fused_kd.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, statistics, sys, time, torch
from distill import losses
from distill.fused_kd import LinearHead, fused_divergence
method, n, vocab, dim, iterations = sys.argv[1], *map(int, sys.argv[2:6])
torch.manual_seed(0)
hidden = torch.randn(n, 1, dim, requires_grad=True)
weight = (torch.randn(vocab, dim) * 0.05).requires_grad_(True)
teacher = torch.randn(n, 1, vocab, dtype=torch.bfloat16)
mask = torch.ones(n, 1, dtype=torch.bool)
hidden.grad, weight.grad = torch.zeros_like(hidden), torch.zeros_like(weight)

def step():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if method == "fused":
            loss = fused_divergence("forward_kl", LinearHead(hidden, weight), teacher, mask,
                                    chunk_size=256)
        else:
            logits = torch.nn.functional.linear(hidden, weight)
            chunk = None if method == "unchunked" else 1024
            loss = losses.forward_kl(logits, teacher, mask, chunk_size=chunk)
    loss.backward()

times = []
if method != "inputs":
    for i in range(iterations + 1):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
print(json.dumps({"step_s": statistics.median(times[1:]) if times else 0.0}))
"""


def child(method: str, tokens: int, vocab: int, dim: int, iterations: int) -> dict:
    """Run one measurement; return {"peak_rss_mb", "step_s"}."""
    command = [sys.executable, "-c", CHILD, method, str(tokens), str(vocab), str(dim),
               str(iterations)]  # fmt: skip
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        err.seek(0)
        if status != 0:
            raise SystemExit(f"{method} failed:\n{err.read()[-3000:]}")
        return {"peak_rss_mb": usage.ru_maxrss / 1024, **json.loads(out.read())}


def measure(tokens: int, vocab: int, dim: int, repeats: int, iterations: int) -> dict:
    methods = ("inputs", "unchunked", "chunked", "fused")
    runs = {m: [] for m in methods}
    for _ in range(repeats):
        for method in methods:
            runs[method].append(child(method, tokens, vocab, dim, iterations))
            print(vocab, method, runs[method][-1], flush=True)
    median = {m: {k: statistics.median(r[k] for r in runs[m]) for k in runs[m][0]} for m in runs}
    base = median["inputs"]["peak_rss_mb"]
    loss_mb = {m: median[m]["peak_rss_mb"] - base for m in methods[1:]}
    return {
        "tokens": tokens, "vocab": vocab, "hidden": dim, "inputs_mb": base,
        "loss_mb": loss_mb,
        "step_s": {m: median[m]["step_s"] for m in methods[1:]},
        "fused_over_unchunked_memory": loss_mb["fused"] / loss_mb["unchunked"],
        "chunked_over_unchunked_memory": loss_mb["chunked"] / loss_mb["unchunked"],
        "fused_over_chunked_time": median["fused"]["step_s"] / median["chunked"]["step_s"],
        "runs": runs,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=3, help="timed steps per child")
    parser.add_argument("--hidden", type=int, default=576, help="D (SmolLM2-135M: 576)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fused_kd.json"))
    args = parser.parse_args()
    # 128,256 (Llama 3) at half the tokens keeps the unchunked child within a shared machine.
    shapes = [(2048, 49152), (1024, 128256)]
    results = [measure(n, v, args.hidden, args.repeats, args.iterations) for n, v in shapes]
    summary = {"results": results, "command": " ".join(["python", *sys.argv])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    for r in results:
        print(json.dumps({k: v for k, v in r.items() if k != "runs"}))


if __name__ == "__main__":
    main()

"""The one training loop: SFT, KD, DAE, DDK and teacher feedback all run through `main()` here.

Each objective is a small module in `distill.objectives` that computes the loss terms of a
micro-batch (and, for DDK, chooses the batches); this loop owns everything else: data, the
optimizer and schedule, gradient accumulation, mixed precision, checkpoints, logs and export.

    python -m distill.train --objective sft --student results/models/student_init \
        --train results/data/instructions/train.jsonl \
        --valid results/data/instructions/valid.jsonl \
        --settings '{"steps": 30, "batch_size": 8, "lr": 1e-4}' --seed 0 \
        --ckpt-dir results/checkpoints/student_sft --out results/models/student_sft

On GPUs, one process per GPU: `accelerate launch --num_processes N -m distill.train ...`; on a CPU
machine `torchrun --nproc_per_node 2 -m distill.train ...` gives two gloo processes.

Gradient accumulation: the loss of every micro-batch is divided by the number of target tokens
in the WHOLE accumulation window over ALL processes, so each step's gradient is the gradient of
the token-mean loss of the window, whatever the micro-batch sizes are.

A rerun after a kill resumes from `<ckpt-dir>/checkpoint.pt` (model, optimizer, scheduler, RNG
states, data position, log rows) and ends where an uninterrupted run ends.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import random
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

from distill import losses
from distill.batching import collate, encode_examples
from distill.config import SCHEMA
from distill.io import InputError, atomic_dir, atomic_path, main_guard, read_examples, setup_logging
from distill.models.resolve import check_model_dir
from distill.objectives import build_objective, needs_attentions

CHECKPOINT = "checkpoint.pt"
# Tests set DISTILL_KILL_AFTER_STEP to SIGKILL the run right after that step (resume tests).
KILL_AFTER_STEP = int(os.environ.get("DISTILL_KILL_AFTER_STEP", "-1"))


class EpochSampler:
    """Seeded shuffled epochs over example positions; its state is (epoch, position)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.position = n, seed, 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist()

    def next_batch(self, batch_size: int) -> list[int]:
        out = []
        while len(out) < batch_size:
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self._order[self.position])
            self.position += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()


def train_settings(overrides: dict) -> dict:
    """The `train` defaults from the schema, updated with `overrides` (validated keys only)."""
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())["$defs"]["train"]["properties"]
    unknown = set(overrides) - set(schema)
    if unknown:
        raise InputError(
            f"--settings: unknown training keys {sorted(unknown)}; known: {sorted(schema)}"
        )
    return {k: overrides.get(k, spec["default"]) for k, spec in schema.items()}


def pick_precision(requested: str, device_type: str) -> str:
    """'bf16' when asked for and the device supports it, else 'no' (fp32)."""
    if requested != "bf16":
        return "no"
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16"  # CPU autocast supports bf16 (FACTS.md: 1.85x faster on these machines)


def capture_rng() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_log(path: Path, rows: list[dict]) -> None:
    """train_log.csv: one row per logged step; columns are the union of every row's keys."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


@torch.no_grad()
def evaluate(model, examples, batch_size, pad_id, accelerator, max_batches=None) -> dict:
    """Held-out token-mean cross-entropy, overall and per domain (first `max_batches` batches)."""
    model.eval()
    size = batch_size
    limit = len(examples) if max_batches is None else min(len(examples), size * max_batches)
    totals: dict[str, list[float]] = {}
    for start in range(0, limit, size):
        chunk = examples[start : start + size]
        batch = {k: v.to(accelerator.device) for k, v in collate(chunk, pad_id).items()}
        with accelerator.autocast():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        for b, example in enumerate(chunk):
            mask = batch["target_mask"][b : b + 1]
            ce = losses.cross_entropy(logits[b : b + 1], batch["labels"][b : b + 1], mask)
            n = int(mask.sum())
            for key in ("all", example.domain):
                t = totals.setdefault(key, [0.0, 0])
                t[0] += float(ce) * n
                t[1] += n
    model.train()
    return {k: s / n for k, (s, n) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", required=True, help="sft | kd | dae | ddk | feedback")
    parser.add_argument("--student", required=True, help="initial student model directory")
    parser.add_argument("--train", required=True, help="training jsonl")
    parser.add_argument("--valid", required=True, help="held-out jsonl")
    parser.add_argument("--settings", default="{}", help="JSON of training keys (see schema)")
    parser.add_argument("--objective-settings", default="{}", help="JSON for the objective")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--ckpt-dir", required=True, help="resumable checkpoints (kept on failure)")
    parser.add_argument("--out", required=True, help="the trained model directory")
    args = parser.parse_args()
    log = setup_logging()
    settings = train_settings(json.loads(args.settings))
    ckpt_dir = Path(args.ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    # --- setup: processes, seed, data, model, objective, optimizer --------------------------
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = pick_precision(args.precision, device_type)
    accelerator = Accelerator(cpu=device_type == "cpu", mixed_precision=precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)

    check_model_dir(args.student)
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    train_rows = read_examples(args.train)
    valid_rows = read_examples(args.valid)
    train_examples = encode_examples(tokenizer, train_rows, settings["max_len"])
    valid_examples = encode_examples(tokenizer, valid_rows, settings["max_len"])
    if not train_examples:
        raise InputError(f"{args.train}: no example has a response token within max_len.")
    objective_settings = json.loads(args.objective_settings)
    model = AutoModelForCausalLM.from_pretrained(
        args.student,
        dtype=torch.float32,
        # Attention probabilities exist only with eager attention (sdpa returns none).
        attn_implementation="eager" if needs_attentions(objective_settings) else "sdpa",
    )
    model.config.use_cache = False
    objective = build_objective(
        args.objective,
        objective_settings,
        student=model,
        train_rows=train_rows,
        train_examples=train_examples,
        valid_examples=valid_examples,
        tokenizer=tokenizer,
        accelerator=accelerator,
        seed=args.seed,
        train_path=args.train,
        max_len=settings["max_len"],
    )
    sampler = objective.sampler or EpochSampler(len(train_examples), args.seed)
    params = [p for p in model.parameters() if p.requires_grad] + list(objective.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=settings["weight_decay"])
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, settings["warmup_steps"], settings["steps"]
    )
    n_params = sum(p.numel() for p in model.parameters())

    # --- resume: into the bare model and optimizer, before `prepare` wraps/shards them --------
    step, tokens, flops, wall, rows = 0, 0, 0.0, 0.0, []
    ckpt_path = ckpt_dir / CHECKPOINT
    state = None
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        same_run = (state["seed"], state["settings"], state.get("objective_settings")) == (
            args.seed, settings, objective_settings
        )  # fmt: skip
        if not same_run:
            # Snakemake reruns a job whose params changed: the old checkpoint belongs to another
            # run. Keep it aside (never delete paid-for work) and start over.
            stale = ckpt_path.with_suffix(".stale.pt")
            accelerator.wait_for_everyone()  # every process has read it before it moves
            if accelerator.is_main_process:
                os.replace(ckpt_path, stale)
            log.warning("%s was made with other settings: moved to %s, starting over",
                        ckpt_path, stale)  # fmt: skip
            state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        objective.load_state_dict(state["objective"])
        restore_rng(state["rng"][rank])
        step, tokens, flops, wall, rows = (
            state[k] for k in ("step", "tokens", "flops", "wall", "rows")
        )
        log.info("resumed from %s at step %d", ckpt_path, step)
    model, optimizer = accelerator.prepare(model, optimizer)

    # --- train -------------------------------------------------------------------------------
    log.info(
        "objective %s: %d train / %d valid examples, %d steps x %d micro-batches x %d x %d "
        "processes, "
        "precision %s, %.1fM parameters",
        args.objective, len(train_examples), len(valid_examples), settings["steps"],
        settings["grad_accum"], settings["batch_size"], world, precision, n_params / 1e6,
    )  # fmt: skip
    model.train()
    progress = tqdm(total=settings["steps"], initial=step, desc=args.objective, mininterval=5)
    while step < settings["steps"]:
        started = time.perf_counter()
        step_logs = objective.on_step_start(step, accelerator.unwrap_model(model))
        # Every process draws the same global batch order and takes its own slice of it.
        window = []
        for _ in range(settings["grad_accum"]):
            indices = sampler.next_batch(settings["batch_size"] * world)
            mine = indices[rank * settings["batch_size"] : (rank + 1) * settings["batch_size"]]
            window.append(collate([train_examples[i] for i in mine], pad_id))
        local_targets = sum(int(b["target_mask"].sum()) for b in window)
        window_targets = accelerator.reduce(
            torch.tensor(local_targets, device=accelerator.device), "sum"
        ).item()
        # DDP averages gradients over processes, so each process divides by (global targets /
        # processes): the sum of per-token losses over everything, over the global target count.
        normaliser = window_targets / world
        sums: dict[str, float] = {}
        local_tokens, local_flops = 0.0, 0.0
        for i, batch in enumerate(window):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            last = i == len(window) - 1
            context = accelerator.no_sync(model) if not last and world > 1 else nullcontext()
            with context, accelerator.autocast():
                terms = objective.loss(model, batch, normaliser)
                accelerator.backward(terms["loss"])
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            local_tokens += float(batch["attention_mask"].sum())
            local_flops += objective.flops(batch, n_params)
        if settings["max_grad_norm"] > 0:
            accelerator.clip_grad_norm_(params, settings["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        seen = accelerator.reduce(
            torch.tensor(
                [local_tokens, local_flops], dtype=torch.float64, device=accelerator.device
            ),
            "sum",
        )
        tokens, flops = tokens + int(seen[0]), flops + float(seen[1])
        optimizer.zero_grad(set_to_none=True)
        step += 1
        wall += time.perf_counter() - started
        progress.update(1)

        if step % settings["log_every"] == 0 or step == settings["steps"]:
            # Terms are already normalised by the window's tokens: their sum is the window mean
            # on this process; average over processes.
            reduced = {
                k: accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean").item()
                for k, v in sums.items()
            }
            row = {"step": step, "tokens": tokens, "flops": flops, "wall_s": round(wall, 3)}
            row["lr"] = scheduler.get_last_lr()[0]
            row.update(reduced)
            row.update(step_logs)
            if step % settings["eval_every"] == 0 or step == settings["steps"]:
                row["valid_ce"] = evaluate(
                    model, valid_examples, settings["batch_size"], pad_id, accelerator,
                    max_batches=settings["eval_batches"],
                )["all"]  # fmt: skip
            rows.append(row)
            progress.set_postfix(loss=f"{reduced['loss']:.4f}")
            if accelerator.is_main_process:
                write_log(ckpt_dir / "train_log.csv", rows)
        if step % settings["checkpoint_every"] == 0 or step == settings["steps"]:
            rng = gather_object([capture_rng()])
            weights = accelerator.get_state_dict(model)  # every rank: FSDP gathers shards
            if accelerator.is_main_process:
                state = {
                    "model": weights,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "sampler": sampler.state_dict(),
                    "objective": objective.state_dict(),
                    "rng": rng,
                    "step": step, "tokens": tokens, "flops": flops, "wall": wall, "rows": rows,
                    "settings": settings, "seed": args.seed, "objective_name": args.objective,
                    "objective_settings": objective_settings,
                }  # fmt: skip
                with atomic_path(ckpt_path) as tmp:
                    torch.save(state, tmp)
            accelerator.wait_for_everyone()
        if step == KILL_AFTER_STEP:  # fault injection for the resume tests: a real SIGKILL
            os.kill(os.getpid(), signal.SIGKILL)
    progress.close()

    # --- export: the model, its log and held-out metrics, atomically ---------------------------
    metrics = evaluate(model, valid_examples, settings["batch_size"], pad_id, accelerator)
    weights = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        summary = {
            "objective": args.objective,
            "steps": step,
            "tokens": tokens,
            "flops": flops,
            "wall_s": wall,
            "valid_ce": metrics["all"],
            "valid_ppl": math.exp(metrics["all"]),
            "valid_ce_by_domain": {k: v for k, v in metrics.items() if k != "all"},
        }
        with atomic_dir(args.out) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=weights)
            tokenizer.save_pretrained(tmp)
            write_log(tmp / "train_log.csv", rows)
            (tmp / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("done: valid CE %.4f -> %s", metrics["all"], args.out)


if __name__ == "__main__":
    main_guard(main)

"""The one training loop: SFT, KD, DAE, DDK and teacher feedback all run through `main()` here.

Each objective is a small module in `distill.objectives` that computes the loss terms of a
micro-batch (and, for DDK, chooses the batches); this loop owns everything else: data, the
optimizer and schedule, gradient accumulation, mixed precision, checkpoints, logs and export.

    python -m distill.train --objective sft --student results/models/student_init/seed0 \
        --train results/data/instructions/train.jsonl \
        --valid results/data/instructions/valid.jsonl \
        --settings '{"steps": 30, "batch_size": 8, "lr": 1e-4}' --seed 0 \
        --ckpt-dir results/checkpoints/student_sft/seed0 --out results/models/student_sft/seed0

Several processes: on GPUs, one per GPU, `accelerate launch --num_processes N --config_file
workflow/accelerate/<d>.yaml -m distill.train --distributed <d> ...`; on a CPU machine
`torchrun --standalone --nproc_per_node N -m distill.train --distributed <d> ...` gives N gloo
processes (accelerate launch starts only one there). distill.distributed builds the Accelerator
of `--distributed` in both cases (FSDP falls back to DDP on CPUs, with a warning in the log).

Gradient accumulation: the loss of every micro-batch is divided by the number of target tokens
in the WHOLE accumulation window over ALL processes, so each step's gradient is the gradient of
the token-mean loss of the window, whatever the micro-batch sizes are.

Schedule: linear warmup over `warmup_steps`, then cosine decay from `lr` to `min_lr`. With
`epochs` set, the steps are computed at start from the training rows (logged) and replace `steps`.

A rerun after a kill (a SLURM retry after a time limit, say) resumes from
`<ckpt-dir>/checkpoint.pt` (model, optimizer state in full even when FSDP shards it, schedule,
RNG states, data position, log rows), saved every `checkpoint_every` steps, and ends where an
uninterrupted run ends. Once the model is saved the checkpoint is deleted unless
`keep_checkpoints` is true. The log says when a checkpoint is saved, resumed and deleted.
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    get_cosine_with_min_lr_schedule_with_warmup,
)

from distill import losses
from distill.batching import collate, encode_examples
from distill.config import SCHEMA
from distill.distributed import (
    average_gradients,
    broadcast_parameters,
    clip_gradients,
    full_optimizer_state,
    load_full_optimizer_state,
    make_accelerator,
)
from distill.io import (
    InputError,
    atomic_dir,
    atomic_path,
    main_guard,
    pad_id,
    read_examples,
    setup_logging,
)
from distill.models.resolve import check_model_dir
from distill.objectives import build_objective, needs_attentions

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.csv"
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


@dataclass
class Progress:
    """Where a run stands (saved in every checkpoint): steps, tokens and FLOPs over all
    processes, training wall seconds, and the rows of train_log.csv so far."""

    step: int = 0
    tokens: int = 0
    flops: float = 0.0
    wall: float = 0.0
    rows: list[dict] = field(default_factory=list)


@dataclass
class Run:
    """Everything the loop works with, built once by `setup`."""

    args: argparse.Namespace
    settings: dict  # the train keys, `steps` already resolved from `epochs`
    objective_settings: dict
    seed: int
    accelerator: Accelerator
    tokenizer: object
    pad: int
    train_examples: list
    valid_examples: list
    model: torch.nn.Module
    objective: object
    sampler: object
    optimizer: torch.optim.Optimizer  # the student's parameters (sharded with it under FSDP)
    # The objective's own parameters (a hidden-state projection) in an optimizer of their own:
    # accelerate's FSDP refuses parameters outside the model in the model's optimizer, and the
    # full optimizer state is keyed by the model's parameter names. AdamW updates each parameter
    # on its own, so two AdamW with the same settings are one.
    extra_optimizer: torch.optim.Optimizer | None
    schedulers: list
    n_params: int
    ckpt_dir: Path

    @property
    def ckpt_path(self) -> Path:
        return self.ckpt_dir / CHECKPOINT


# --- settings -------------------------------------------------------------------------------------
def schema_defaults(section: dict) -> dict:
    return {k: spec["default"] for k, spec in section["properties"].items()}


def train_settings(overrides: dict) -> dict:
    """The `train` defaults from the schema, updated with `overrides` (validated keys only)."""
    train = yaml.safe_load(SCHEMA.read_text())["$defs"]["train"]
    unknown = set(overrides) - set(train["properties"])
    if unknown:
        raise InputError(
            f"--settings: unknown training keys {sorted(unknown)}; "
            f"known: {sorted(train['properties'])}"
        )
    settings = {**schema_defaults(train), **overrides}
    if settings["min_lr"] > settings["lr"]:
        raise InputError(
            f"--settings: train.min_lr {settings['min_lr']} is above train.lr {settings['lr']}; "
            "the cosine decays from lr down to min_lr. Fix: set min_lr ≤ lr (0 decays to 0)."
        )
    return settings


def steps_of_epochs(epochs: float, rows: int, batch_size: int, grad_accum: int, world: int) -> int:
    """Optimizer steps that pass `epochs` times over `rows` training rows:
    ceil(epochs × rows / (batch_size × grad_accum × processes)), the rows of one step."""
    return max(1, math.ceil(epochs * rows / (batch_size * grad_accum * world)))


def resolve_steps(settings: dict, rows: int, world: int, log) -> dict:
    """`settings` with `steps` computed from `epochs` when that is set (the arithmetic logged)."""
    if settings["epochs"] is None:
        return settings
    per_step = settings["batch_size"] * settings["grad_accum"] * world
    steps = steps_of_epochs(settings["epochs"], rows, settings["batch_size"],
                            settings["grad_accum"], world)  # fmt: skip
    log.info(
        "epochs %g: steps = ceil(%g epochs x %d rows / (%d batch x %d accumulation x %d "
        "processes = %d rows per step)) = %d (replaces steps %d)",
        settings["epochs"], settings["epochs"], rows, settings["batch_size"],
        settings["grad_accum"], world, per_step, steps, settings["steps"],
    )  # fmt: skip
    return {**settings, "steps": steps}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", required=True, help="sft | kd | dae | ddk | feedback")
    parser.add_argument("--student", required=True, help="initial student model directory")
    parser.add_argument("--train", required=True, help="training jsonl")
    parser.add_argument("--valid", required=True, help="held-out jsonl")
    parser.add_argument("--settings", default="{}", help="JSON of training keys (see schema)")
    parser.add_argument("--objective-settings", default="{}", help="JSON for the objective")
    parser.add_argument("--seed", type=int, help="the run's seed (default: train.seed)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], help="default: the schema's")
    parser.add_argument(
        "--distributed", choices=["ddp", "fsdp", "deepspeed"],
        help="how several processes share the work (workflow/accelerate/<name>.yaml); "
        "default: the schema's launch.distributed",
    )  # fmt: skip
    parser.add_argument("--ckpt-dir", required=True, help="resumable checkpoints (kept on failure)")
    parser.add_argument("--out", required=True, help="the trained model directory")
    args = parser.parse_args(argv)
    # Defaults live in the schema only (a module run directly takes them from there).
    schema = yaml.safe_load(SCHEMA.read_text())
    if args.precision is None:
        args.precision = schema_defaults(schema)["precision"]
    if args.distributed is None:
        args.distributed = schema_defaults(schema["$defs"]["launch"])["distributed"]
    return args


# --- setup ----------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_student(path: str, objective_settings: dict) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=torch.float32,
        # Attention probabilities exist only with eager attention (sdpa returns none).
        attn_implementation="eager" if needs_attentions(objective_settings) else "sdpa",
    )
    model.config.use_cache = False
    return model


def make_optimizers(model, extra_params: list, settings: dict):
    """AdamW for the student, another for `extra_params` (or None), and their schedules."""

    def adamw(params):
        return torch.optim.AdamW(params, lr=settings["lr"], weight_decay=settings["weight_decay"])

    optimizer = adamw([p for p in model.parameters() if p.requires_grad])
    extra_optimizer = adamw(extra_params) if extra_params else None
    schedulers = [
        get_cosine_with_min_lr_schedule_with_warmup(
            o, settings["warmup_steps"], settings["steps"], min_lr=settings["min_lr"]
        )
        for o in (optimizer, extra_optimizer)
        if o is not None
    ]
    return optimizer, extra_optimizer, schedulers


def setup(args: argparse.Namespace, log) -> Run:
    """Processes, seeds, data, the student, the objective and the optimizers."""
    settings = train_settings(json.loads(args.settings))
    seed = settings["seed"] if args.seed is None else args.seed
    accelerator = make_accelerator(args.distributed, args.precision, log)
    seed_everything(seed + accelerator.process_index)
    check_model_dir(args.student)
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    train_rows, valid_rows = read_examples(args.train), read_examples(args.valid)
    train_examples = encode_examples(tokenizer, train_rows, settings["max_len"])
    valid_examples = encode_examples(tokenizer, valid_rows, settings["max_len"])
    if not train_examples:
        raise InputError(f"{args.train}: no example has a target token within max_len.")
    settings = resolve_steps(settings, len(train_examples), accelerator.num_processes, log)
    objective_settings = json.loads(args.objective_settings)
    model = load_student(args.student, objective_settings)
    objective = build_objective(
        args.objective, objective_settings, student=model, train_rows=train_rows,
        train_examples=train_examples, valid_examples=valid_examples, tokenizer=tokenizer,
        accelerator=accelerator, seed=seed, train_path=args.train, max_len=settings["max_len"],
    )  # fmt: skip
    optimizer, extra_optimizer, schedulers = make_optimizers(
        model, list(objective.parameters()), settings
    )
    ckpt_dir = Path(args.ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    return Run(
        args=args, settings=settings, objective_settings=objective_settings, seed=seed,
        accelerator=accelerator, tokenizer=tokenizer, pad=pad_id(tokenizer),
        train_examples=train_examples, valid_examples=valid_examples, model=model,
        objective=objective, sampler=objective.sampler or EpochSampler(len(train_examples), seed),
        optimizer=optimizer, extra_optimizer=extra_optimizer, schedulers=schedulers,
        n_params=sum(p.numel() for p in model.parameters()), ckpt_dir=ckpt_dir,
    )  # fmt: skip


# --- load or resume -------------------------------------------------------------------------------
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


def read_checkpoint(run: Run, log) -> dict | None:
    """The checkpoint of this very run, or None (none yet, or one of other settings, set aside).

    The run is the same when its seed, train settings (with `steps` resolved) and objective
    settings are; `train.seed` is part of the settings and is the same on every retry.
    """
    if not run.ckpt_path.exists():
        return None
    # mmap: the processes share one copy of the file's pages instead of one copy each.
    state = torch.load(run.ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    identity = (state["seed"], state["settings"], state.get("objective_settings"))
    if identity == (run.seed, run.settings, run.objective_settings):
        return state
    # Snakemake reruns a job whose params changed: the old checkpoint belongs to another run.
    # Keep it aside (never delete paid-for work) and start over.
    stale = run.ckpt_path.with_suffix(".stale.pt")
    run.accelerator.wait_for_everyone()  # every process has read it before it moves
    if run.accelerator.is_main_process:
        os.replace(run.ckpt_path, stale)
    log.warning("%s was made with other settings: moved to %s, starting over",
                run.ckpt_path, stale)  # fmt: skip
    return None


def restore_before_prepare(run: Run, state: dict | None, log) -> Progress:
    """Weights, data position, objective and RNG into the bare model (before `prepare` wraps
    or shards it); the optimizer state follows in `restore_after_prepare`."""
    if state is None:
        return Progress()
    run.model.load_state_dict(state["model"])
    run.sampler.load_state_dict(state["sampler"])
    run.objective.load_state_dict(state["objective"])
    restore_rng(state["rng"][run.accelerator.process_index])
    progress = Progress(*(state[k] for k in ("step", "tokens", "flops", "wall", "rows")))
    log.info("resumed from %s at step %d of %d", run.ckpt_path, progress.step,
             run.settings["steps"])  # fmt: skip
    return progress


def restore_after_prepare(run: Run, state: dict | None) -> None:
    """Optimizer states (each process keeps its shard under FSDP) and schedules."""
    if state is None:
        return
    load_full_optimizer_state(run.model, run.optimizer, state["optimizer"])
    if run.extra_optimizer is not None:
        run.extra_optimizer.load_state_dict(state["extra_optimizer"])
    for scheduler, saved in zip(run.schedulers, state["schedulers"], strict=True):
        scheduler.load_state_dict(saved)


# --- one optimizer step ---------------------------------------------------------------------------
def next_window(run: Run) -> list[dict]:
    """This process's micro-batches of the next accumulation window.

    Every process draws the same global batch order and takes its own slice of it.
    """
    size, rank = run.settings["batch_size"], run.accelerator.process_index
    window = []
    for _ in range(run.settings["grad_accum"]):
        indices = run.sampler.next_batch(size * run.accelerator.num_processes)
        mine = indices[rank * size : (rank + 1) * size]
        window.append(collate([run.train_examples[i] for i in mine], run.pad))
    return window


def optimizer_step(run: Run, window: list[dict]) -> tuple[dict, torch.Tensor]:
    """Forward/backward over the window, synchronise, clip and step. Returns the loss terms
    summed over the window on this process and (tokens, FLOPs) summed over all processes."""
    acc, model = run.accelerator, run.model
    local_targets = sum(int(b["target_mask"].sum()) for b in window)
    window_targets = acc.reduce(torch.tensor(local_targets, device=acc.device), "sum").item()
    # DDP averages gradients over processes, so each process divides by (global targets /
    # processes): the sum of per-token losses over everything, over the global target count.
    normaliser = window_targets / acc.num_processes
    sums: dict[str, float] = {}
    seen = torch.zeros(2, dtype=torch.float64, device=acc.device)  # tokens, FLOPs
    for i, batch in enumerate(window):
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        last = i == len(window) - 1
        sync = nullcontext() if last or acc.num_processes == 1 else acc.no_sync(model)
        with sync, acc.autocast():
            terms = run.objective.loss(model, batch, normaliser)
            acc.backward(terms["loss"])
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        seen[0] += float(batch["attention_mask"].sum())
        seen[1] += run.objective.flops(batch, run.n_params)
    extra = list(run.objective.parameters())
    average_gradients(extra, acc)  # outside DDP/FSDP: averaged here, as DDP does for the model
    if run.settings["max_grad_norm"] > 0:
        clip_gradients(acc, model, extra, run.settings["max_grad_norm"])
    for optimizer in (run.optimizer, run.extra_optimizer):
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for scheduler in run.schedulers:
        scheduler.step()
    return sums, acc.reduce(seen, "sum")


# --- log row, checkpoint, export ------------------------------------------------------------------
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
def evaluate(model, examples, batch_size, pad, accelerator, max_batches=None) -> dict:
    """Held-out token-mean cross-entropy, overall and per domain (first `max_batches` batches)."""
    model.eval()
    limit = len(examples) if max_batches is None else min(len(examples), batch_size * max_batches)
    totals: dict[str, list[float]] = {}
    for start in range(0, limit, batch_size):
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(accelerator.device) for k, v in collate(chunk, pad).items()}
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


def log_row(run: Run, progress: Progress, sums: dict, step_logs: dict) -> dict:
    """Append this step's row (loss terms averaged over processes) and rewrite the live log."""
    acc, settings, step = run.accelerator, run.settings, progress.step
    # Terms are already normalised by the window's tokens: their sum is the window mean on this
    # process; average over processes.
    reduced = {k: acc.reduce(torch.tensor(v, device=acc.device), "mean").item()
               for k, v in sums.items()}  # fmt: skip
    row = {"step": step, "tokens": progress.tokens, "flops": progress.flops,
           "wall_s": round(progress.wall, 3), "lr": run.schedulers[0].get_last_lr()[0],
           **reduced, **step_logs}  # fmt: skip
    if step % settings["eval_every"] == 0 or step == settings["steps"]:
        row["valid_ce"] = evaluate(
            run.model, run.valid_examples, settings["batch_size"], run.pad, acc,
            max_batches=settings["eval_batches"],
        )["all"]  # fmt: skip
    progress.rows.append(row)
    if acc.is_main_process:
        write_log(run.ckpt_dir / LOG, progress.rows)
    return row


def checkpoint_due(step: int, settings: dict) -> bool:
    """Every `checkpoint_every` steps; the last step only when the checkpoint is kept (else it
    would be deleted a moment later, once the model is saved)."""
    if step == settings["steps"]:
        return settings["keep_checkpoints"]
    return step % settings["checkpoint_every"] == 0


def save_checkpoint(run: Run, progress: Progress, log) -> None:
    """Everything a rerun needs to continue exactly (see the module docstring). Every process
    takes part (FSDP gathers the weights and optimizer state); the main process writes."""
    acc = run.accelerator
    rng = gather_object([capture_rng()])
    weights = acc.get_state_dict(run.model)
    optimizer = full_optimizer_state(run.model, run.optimizer)
    if acc.is_main_process:
        extra = run.extra_optimizer.state_dict() if run.extra_optimizer is not None else None
        state = {
            "model": weights, "optimizer": optimizer, "extra_optimizer": extra,
            "schedulers": [s.state_dict() for s in run.schedulers],
            "sampler": run.sampler.state_dict(), "objective": run.objective.state_dict(),
            "rng": rng, "step": progress.step, "tokens": progress.tokens,
            "flops": progress.flops, "wall": progress.wall, "rows": progress.rows,
            "settings": run.settings, "seed": run.seed, "objective_name": run.args.objective,
            "objective_settings": run.objective_settings,
        }  # fmt: skip
        with atomic_path(run.ckpt_path) as tmp:
            torch.save(state, tmp)
        log.info("step %d: checkpoint saved to %s", progress.step, run.ckpt_path)
    acc.wait_for_everyone()


def export(run: Run, progress: Progress, log) -> None:
    """The model, its log and held-out metrics, atomically."""
    acc = run.accelerator
    metrics = evaluate(run.model, run.valid_examples, run.settings["batch_size"], run.pad, acc)
    weights = acc.get_state_dict(run.model)
    if acc.is_main_process:
        summary = {
            "objective": run.args.objective,
            "steps": progress.step,
            "tokens": progress.tokens,
            "flops": progress.flops,
            "wall_s": progress.wall,
            "valid_ce": metrics["all"],
            "valid_ppl": math.exp(metrics["all"]),
            "valid_ce_by_domain": {k: v for k, v in metrics.items() if k != "all"},
        }
        with atomic_dir(run.args.out) as tmp:
            acc.unwrap_model(run.model).save_pretrained(tmp, state_dict=weights)
            run.tokenizer.save_pretrained(tmp)
            write_log(tmp / LOG, progress.rows)
            (tmp / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("done: valid CE %.4f -> %s", metrics["all"], run.args.out)
    acc.wait_for_everyone()


def remove_checkpoint(run: Run, log) -> None:
    """Delete the resume checkpoint and the live log (the model directory has the log); the
    folder goes too when nothing else is in it (a checkpoint of other settings stays)."""
    if not run.accelerator.is_main_process:
        return
    run.ckpt_path.unlink(missing_ok=True)
    (run.ckpt_dir / LOG).unlink(missing_ok=True)
    if not any(run.ckpt_dir.iterdir()):
        run.ckpt_dir.rmdir()
    log.info("model saved: deleted the resume checkpoint %s (train.keep_checkpoints keeps it)",
             run.ckpt_path)  # fmt: skip


# --- the loop -------------------------------------------------------------------------------------
def log_plan(run: Run, log) -> None:
    s, acc = run.settings, run.accelerator
    log.info(
        "objective %s: %d train / %d valid examples, %d steps x %d micro-batches x %d x %d "
        "processes, lr %g -> %g, precision %s, %.1fM parameters",
        run.args.objective, len(run.train_examples), len(run.valid_examples), s["steps"],
        s["grad_accum"], s["batch_size"], acc.num_processes, s["lr"], s["min_lr"],
        acc.mixed_precision, run.n_params / 1e6,
    )  # fmt: skip
    log.info(
        "checkpoints every %d steps to %s (a rerun, e.g. a SLURM retry after a time limit, "
        "resumes from the last one)%s",
        s["checkpoint_every"], run.ckpt_path,
        "" if s["checkpoint_every"] < s["steps"] else ": none before the end of this run",
    )  # fmt: skip


def train(run: Run, progress: Progress, log) -> None:
    """Optimizer steps until `steps`: next window, one step, log row, checkpoint."""
    log_plan(run, log)
    run.model.train()
    steps = run.settings["steps"]
    bar = tqdm(total=steps, initial=progress.step, desc=run.args.objective, mininterval=5)
    while progress.step < steps:
        started = time.perf_counter()
        step_logs = run.objective.on_step_start(
            progress.step, run.accelerator.unwrap_model(run.model)
        )
        sums, seen = optimizer_step(run, next_window(run))
        progress.step += 1
        progress.tokens += int(seen[0])
        progress.flops += float(seen[1])
        progress.wall += time.perf_counter() - started
        bar.update(1)
        if progress.step % run.settings["log_every"] == 0 or progress.step == steps:
            row = log_row(run, progress, sums, step_logs)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        if checkpoint_due(progress.step, run.settings):
            save_checkpoint(run, progress, log)
        if progress.step == KILL_AFTER_STEP:  # fault injection for the resume tests: a real SIGKILL
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()


def main() -> None:
    log = setup_logging()
    run = setup(parse_args(), log)
    state = read_checkpoint(run, log)
    progress = restore_before_prepare(run, state, log)
    run.model, run.optimizer = run.accelerator.prepare(run.model, run.optimizer)
    broadcast_parameters(list(run.objective.parameters()), run.accelerator)
    restore_after_prepare(run, state)
    del state  # the checkpoint's tensors are in the model and optimizer now
    train(run, progress, log)
    export(run, progress, log)
    if not run.settings["keep_checkpoints"]:
        remove_checkpoint(run, log)


if __name__ == "__main__":
    main_guard(main)

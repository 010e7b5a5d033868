"""Several training processes: the Accelerator of a `--distributed` setting, and the state and
gradients that the training loop must treat the same way under DDP and FSDP.

How the processes start (distill.train's docstring has the commands): `accelerate launch
--config_file workflow/accelerate/<distributed>.yaml` on GPUs sets up the distributed plugin
itself; `torchrun` (the CPU machine, or a cluster without accelerate launch) does not, so
`make_accelerator` sets up the same plugin from the same file.

FSDP on a CPU machine: accelerate (1.15) runs FSDP on accelerators only. On CPU processes its
AcceleratorState is MULTI_CPU and `prepare` wraps the model in DDP whatever plugin it is given,
and the FSDP1 plugin of workflow/accelerate/fsdp.yaml (`fsdp_sync_module_states: true`) stops
at construction with "There are currently no available devices found, must be one of 'XPU',
'CUDA', 'MLU', 'NPU', 'MUSA', or 'HPU'". torch's own FSDP1/FSDP2 do run on gloo (the tests use
them to check the sharded optimizer state below), so the fallback is accelerate's, not torch's:
`--distributed fsdp` on CPUs trains as DDP and says so in the log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from distill.config import SCHEMA

ACCELERATE_CONFIGS = SCHEMA.parents[1] / "accelerate"

FSDP_ON_CPU = (
    "--distributed fsdp on a CPU machine: accelerate runs FSDP on GPUs only (on CPU processes it "
    "wraps the model in DDP, and the FSDP1 plugin of workflow/accelerate/fsdp.yaml stops with "
    "'There are currently no available devices found'). Training runs as DDP over the %d gloo "
    "processes: same data order, loss normalisation, checkpoints and results; only the memory "
    "layout differs (every process holds the whole model and optimizer state)."
)


def pick_precision(requested: str, device_type: str) -> str:
    """'bf16' when asked for and the device supports it, else 'no' (fp32)."""
    if requested != "bf16":
        return "no"
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16"  # CPU autocast supports bf16 (docs/environment.md: 1.85x faster here)


def fsdp_environment(config_file: Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file <config_file>` gives an FSDP process.

    accelerate launch turns each `fsdp_config` key `fsdp_<name>` into the variable
    `FSDP_<NAME>` and sets ACCELERATE_USE_FSDP; the Accelerator builds its FSDP plugin from them,
    and transformers' `from_pretrained` reads them for low-memory loading on ranks > 0. Setting
    the same variables gives a torchrun process the same plugin as an accelerate-launched one.
    """
    config = yaml.safe_load(Path(config_file).read_text())
    env = {"ACCELERATE_USE_FSDP": "true"}
    for key, value in config.get("fsdp_config", {}).items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[key.upper()] = text
    return env


def make_accelerator(distributed: str, precision: str, log: logging.Logger) -> Accelerator:
    """The Accelerator of `--distributed` (ddp | fsdp | deepspeed) and `--precision` (bf16 | fp32).

    Started by `accelerate launch`, the launcher has set the plugin up. Started by torchrun with
    several processes, the plugin comes from workflow/accelerate/<distributed>.yaml: FSDP on GPUs
    (DDP with a warning on CPUs, see the module docstring), DDP for `ddp`.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    on_gpu = torch.cuda.is_available()
    launched = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if world > 1 and distributed == "fsdp" and not launched:
        if on_gpu:
            os.environ.update(fsdp_environment(ACCELERATE_CONFIGS / "fsdp.yaml"))
        elif int(os.environ.get("RANK", "0")) == 0:
            log.warning(FSDP_ON_CPU, world)
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if world > 1 and distributed == "deepspeed" and not deepspeed:
        log.warning(
            "--distributed deepspeed without `accelerate launch --config_file "
            "workflow/accelerate/deepspeed.yaml`: DeepSpeed is set up by that launcher only; "
            "training runs as DDP."
        )
    return Accelerator(
        cpu=not on_gpu, mixed_precision=pick_precision(precision, "cuda" if on_gpu else "cpu")
    )


def unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's AcceleratedOptimizer (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimizer state of `model` (wrapped or not). A collective: call on every rank.

    Full (unsharded) and keyed by parameter names: the same dict whether the model was trained
    alone, under DDP, FSDP1 or FSDP2, so a checkpoint moves between them. On GPUs the state is
    gathered to the CPU of rank 0 only (the others get {}): only rank 0 writes it, and no GPU
    holds it whole. On CPUs every rank gets it, gathered without `cpu_offload`: with it, FSDP1
    on gloo (torch 2.13) returns a wrong `exp_avg` (seen in tests/test_distributed.py).
    """
    on_gpu = next(model.parameters()).device.type != "cpu"
    options = StateDictOptions(full_state_dict=True, cpu_offload=on_gpu)
    return get_optimizer_state_dict(model, unwrap_optimizer(optimizer), options=options)


def load_full_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load `full_optimizer_state`'s dict into a (possibly sharded) model's optimizer; every rank
    passes the whole dict and keeps its own shard. A collective: call on every rank."""
    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, unwrap_optimizer(optimizer), state, options=options)


def broadcast_parameters(params: list[torch.nn.Parameter], accelerator: Accelerator) -> None:
    """Give every process rank 0's values of `params`, in place (as DDP does for the model when
    it wraps it): parameters outside the model, initialised under each rank's own seed."""
    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        for p in params:
            torch.distributed.broadcast(p.data, src=0)


def average_gradients(params: list[torch.nn.Parameter], accelerator: Accelerator) -> None:
    """Mean of each parameter's gradient over the processes, in place.

    For parameters outside the model that DDP/FSDP wraps (an objective's hidden-state
    projection): without it every process would step them on its own slice of the batch and
    their copies would drift apart. The mean matches what DDP does to the model's gradients.
    """
    if accelerator.num_processes == 1:
        return
    for p in params:
        if p.grad is None:  # a process whose batch did not reach it contributes zeros
            p.grad = torch.zeros_like(p)
        p.grad.copy_(accelerator.reduce(p.grad, "mean"))


def clip_gradients(accelerator, model, extra: list[torch.nn.Parameter], max_norm: float) -> float:
    """Scale the gradients of the model and of `extra` together to a global norm ≤ `max_norm`;
    return the norm before clipping.

    The model's norm comes from accelerate (under FSDP it spans every rank's shard); `extra`
    (replicated, already averaged) adds its own. One clipping coefficient for both, as
    `torch.nn.utils.clip_grad_norm_` over all parameters would give.
    """
    model_norm = accelerator.clip_grad_norm_(model.parameters(), float("inf"))  # measures only
    if model_norm is None:  # DeepSpeed clips inside its engine (gradient_clipping in its config)
        return float("nan")
    if hasattr(model_norm, "full_tensor"):  # FSDP2: a DTensor over the ranks' shards
        model_norm = model_norm.full_tensor()
    grads = [p.grad for p in extra if p.grad is not None]
    extra_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else 0
    total = float(torch.sqrt(torch.as_tensor(model_norm) ** 2 + torch.as_tensor(extra_norm) ** 2))
    coefficient = max_norm / (total + 1e-6)
    if coefficient < 1:
        for p in [*model.parameters(), *extra]:
            if p.grad is not None:
                p.grad.mul_(coefficient)
    return total

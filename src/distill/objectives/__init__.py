"""Training objectives: each computes the loss terms of one micro-batch for `distill.train`.

An objective is a small class with
  - `loss(model, batch, normaliser) -> dict[str, Tensor]`: "loss" (what is back-propagated)
    and every term by name, each already divided by `normaliser` (the target tokens of the
    accumulation window, see distill.train);
  - `flops(batch, n_params) -> float`: the training FLOPs of the micro-batch (6·N per token for
    the student's forward+backward, plus whatever the objective adds: teacher forwards, sampling);
  - `on_step_start(step, student) -> dict`: a hook run before each step (DDK re-weights there);
    returns values to log;
  - `sampler`: None (the loop's seeded epochs) or an object with `next_batch(n)`/`state_dict()`;
  - `parameters()`, `state_dict()`, `load_state_dict()`: extra trainable/saved state. The loop
    trains `parameters()` with an AdamW of their own, starts them from rank 0's values and
    averages their gradients over processes (they are outside DDP/FSDP): an objective
    does no synchronisation of its own.
The constructor gets `(settings, **context)`; context: student, train_rows, train_examples,
valid_examples, tokenizer, accelerator, seed, train_path, max_len.
Adding an objective means adding a module here and a line in OBJECTIVES; nothing else changes.
"""

from __future__ import annotations

import importlib

from distill.io import InputError

OBJECTIVES = {
    "sft": "distill.objectives.sft:SFT",
    "feedback": "distill.objectives.feedback:Feedback",
    "kd": "distill.objectives.kd:KD",
    "dae": "distill.objectives.dae:DAE",
    "ddk": "distill.objectives.ddk:DDK",
}


class Objective:
    """Defaults shared by the objectives."""

    sampler = None

    def __init__(self, settings: dict, **context):
        self.settings = settings
        self.context = context

    def flops(self, batch, n_params: int) -> float:
        # Kaplan et al.: forward + backward of an N-parameter model costs about 6·N per token.
        return 6.0 * n_params * float(batch["attention_mask"].sum())

    def on_step_start(self, step: int, student) -> dict:
        return {}

    def parameters(self):
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def needs_attentions(settings: dict) -> bool:
    """Whether the student must run eager attention (attention-map distillation is on)."""
    return float(settings.get("w_attn", 0.0)) > 0


def build_objective(name: str, settings: dict, **context) -> Objective:
    if name not in OBJECTIVES:
        raise InputError(f"--objective {name}: unknown; known objectives: {', '.join(OBJECTIVES)}")
    module, _, cls = OBJECTIVES[name].partition(":")
    return getattr(importlib.import_module(module), cls)(settings, **context)

"""Teachers behind one interface: per-token log-probabilities of a batch, nothing more.

Every objective that learns from a teacher (KD, DAE, DDK, the λ' feedback) asks a `Teacher` for
its distribution over the next token at each row of a batch (row j predicts token j+1, see
distill.batching). A teacher returns full logits (B,T,V), a `TopKTeacher` (top-k log-probs +
indices + leftover mass) or a `SampledTeacher` (tokens drawn from the teacher + its entropy), so
a teacher behind an API that only returns top-k log-probs fits the same interface as a local
model or either kind of on-disk cache.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch

from distill.losses import SampledTeacher, TopKTeacher


class Teacher(Protocol):
    name: str

    def distribution(self, batch: dict) -> torch.Tensor | TopKTeacher | SampledTeacher:
        """The teacher's next-token distribution for every row of `batch` (B,T,·)."""
        ...


def spread_over_gpus(device) -> bool:
    """Whether a model is spread over this job's GPUs (config `model_gpus` > 1): a CUDA job of one
    process that sees several GPUs. A process of a multi-process training job keeps its model on
    its own GPU (WORLD_SIZE > 1)."""
    return (
        torch.device(device).type == "cuda"
        and torch.cuda.device_count() > 1
        and int(os.environ.get("WORLD_SIZE", "1")) == 1
    )


def load_causal_lm(model_dir: str, device, **kwargs):
    """AutoModelForCausalLM on `device`, or spread layer by layer over the job's GPUs
    (accelerate's device_map="auto") for a model that does not fit one card, e.g. Mixtral-8x7B
    in bf16 (about 93 GB) on 2 x 80 GB. NOT TESTED HERE: the development machines have no GPU."""
    from transformers import AutoModelForCausalLM

    if spread_over_gpus(device):
        return AutoModelForCausalLM.from_pretrained(model_dir, device_map="auto", **kwargs)
    return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).to(device)


class LocalTeacher:
    """A transformers model run in-process, frozen, in the training precision.

    `flops_per_token` = 2·N (one forward pass) is what the loop adds to the compute axis.
    """

    def __init__(self, model_dir: str, device, dtype=torch.float32, attentions: bool = False):

        from distill.models.resolve import check_model_dir

        check_model_dir(model_dir)
        self.name = str(model_dir)
        self.device = torch.device(device)
        self.model = load_causal_lm(
            model_dir, self.device, dtype=dtype,
            attn_implementation="eager" if attentions else "sdpa",
        )  # fmt: skip
        self.model.eval().requires_grad_(False)
        self.flops_per_token = 2.0 * sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def forward(self, batch: dict, attentions: bool = False, hidden: bool = False):
        """The model's full output (logits, and attentions/hidden states when asked)."""
        out = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_attentions=attentions,
            output_hidden_states=hidden,
        )
        out.logits = out.logits.to(self.device)  # spread over GPUs: back to the batch's device
        return out

    def distribution(self, batch: dict) -> torch.Tensor:
        return self.forward(batch).logits

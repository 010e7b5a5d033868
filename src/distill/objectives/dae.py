"""DAE, KD-DAE's stage 2 (arXiv 2406.19112): each sample distilled from one of two teachers.

Starting from the KD student, a sample whose `domain` is one of the target domains is distilled
from the domain expert, every other sample from the general teacher (KD-DAE's code routes by an
`is_domain` flag per sample the same way). Logit distillation only, as in KD-DAE's DAE stage;
the loss family is the KD objective's (`divergence`, `temperature`, `lam`, ...).

Both teachers come from their caches (`teacher_source: cache`) or run online. The student runs
once per micro-batch; the loss is the sum over the two groups of samples, each divided by the
same window normaliser, so it is the token mean over the whole window.

Settings: the `dae:` block of the config schema, the rest of the loss family from the `kd:`
block's defaults (distill.objectives.kd.complete_settings), plus expert (model dir),
expert_cache (dir) and domains (list of routed domains).

    python -m distill.train --objective dae --student results/models/student_kd \
        --objective-settings '{"teacher": "results/models/teacher", "expert": \
        "results/models/expert", "teacher_source": "cache", "cache": ..., "expert_cache": ...,
        "domains": ["arithmetic", "algebra"]}' ...   (the other arguments: distill.train)
"""

from __future__ import annotations

import torch

from distill.fused_kd import LinearHead
from distill.io import InputError
from distill.objectives.kd import KD
from distill.teachers import LocalTeacher


def route_to_expert(domains: list[str], expert_domains: set[str]) -> torch.Tensor:
    """(B,) bool: which samples the domain expert teaches (the rest: the general teacher)."""
    return torch.tensor([d in expert_domains for d in domains], dtype=torch.bool)


class DAE(KD):
    schema_blocks = ("dae", "kd")  # the loss family's other keys: the kd block's defaults
    extra_settings = ("expert", "expert_cache", "domains")

    def __init__(self, settings: dict, **context):
        if settings.get("w_attn", 0) or settings.get("w_hid", 0):
            raise InputError("dae: KD-DAE's DAE stage distils logits only; set w_attn/w_hid to 0.")
        if not settings.get("domains"):
            raise InputError("dae.domains: name at least one domain the expert teaches.")
        super().__init__(settings, **context)
        self.domains = set(settings["domains"])
        self.row_domains = [row["domain"] for row in context["train_rows"]]
        device = context["accelerator"].device
        if self.settings["teacher_source"] == "cache":
            self.expert_cache = self._open_cache(settings["expert_cache"])
            self.expert = None
        else:
            self.expert = LocalTeacher(settings["expert"], device)
            self.expert_cache = None

    def expert_logits(self, batch):
        if self.expert_cache is not None:
            return self.expert_cache.batch(batch["index"].cpu(), batch["target_mask"].cpu()).to(
                batch["input_ids"].device
            )
        return self.expert.forward(batch).logits

    def general_logits(self, batch):
        online = self.teacher.forward(batch) if self.teacher is not None else None
        return self.teacher_logits(batch, online)

    def loss(self, model, batch, normaliser):
        _, _, student = self.student_forward(model, batch)
        domains = [self.row_domains[i] for i in batch["index"].tolist()]
        to_expert = route_to_expert(domains, self.domains).to(batch["input_ids"].device)
        terms = {}
        for name, rows in (("pred_expert", to_expert), ("pred_general", ~to_expert)):
            if not rows.any():
                # Keeps the graph: DDP needs every rank to backward through the same parameters.
                terms[name] = _zero_like(student)
                continue
            part = {k: v[rows.to(v.device)] for k, v in batch.items()}
            teacher = (
                self.expert_logits(part) if name == "pred_expert" else self.general_logits(part)
            )
            terms[name] = self.prediction_loss(
                _select(student, rows), teacher, part["target_mask"], normaliser
            )
        total = self.settings["lam"] * (terms["pred_expert"] + terms["pred_general"])
        if self.settings["lam"] < 1:
            terms["ce"] = self.ce_loss(student, batch["labels"], batch["target_mask"], normaliser)
            total = total + (1 - self.settings["lam"]) * terms["ce"]
        terms["expert_share"] = to_expert.float().mean()
        return {"loss": total, **terms}

    def flops(self, batch, n_params: int) -> float:
        tokens = float(batch["attention_mask"].sum())
        online = self.teacher is not None or self.expert is not None
        # Online, each sample runs through exactly one teacher; both have the same architecture
        # in KD-DAE's setting, so 2·N_teacher per token is the estimate.
        teacher = (self.teacher or self.expert).flops_per_token * tokens if online else 0.0
        return 6.0 * n_params * tokens + teacher


def _select(student, rows: torch.Tensor):
    """The batch rows `rows` (B,) bool of the student side (logits or a LinearHead)."""
    return student.select(rows) if isinstance(student, LinearHead) else student[rows]


def _zero_like(student) -> torch.Tensor:
    """A 0 connected to the student side's graph (hidden states and projection, or logits)."""
    if isinstance(student, LinearHead):
        return student.hidden.sum() * 0.0 + student.weight.sum() * 0.0
    return student.sum() * 0.0

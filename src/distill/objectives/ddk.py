"""DDK (arXiv 2407.16154): distillation whose domain mixture follows the student's lag.

Every `interval` steps (the paper's K) the student's and the teacher's perplexities are measured
per domain on held-out rows; the domain weights are updated from the ratios ℓ_S/ℓ_T (Eq. 1, and
Eq. 2's factor smooth updating, in distill.ddk) and the next K steps draw their batches by them.
The loss is CE + γ·D(p_T, p_S) at temperature T on the target tokens (distill.batching).

KL direction: the default `forward_kl`, KL(p_T‖p_S). The paper writes its distillation term as
KL(softmax(z_s/T), softmax(z_t/T)) — in the usual notation that is KL(p_S‖p_T) — while its text
describes standard word-level distillation, which is the forward KL of Hinton et al. and of the
"KD" baseline it compares against. We follow the text: it is what the baselines optimise, so the
comparison isolates the re-weighting, and forward KL is the direction a top-k teacher cache
approximates well (the teacher's top-k tokens carry its mass; reverse KL weighs the student's
mass, which may sit outside the teacher's top-k). `divergence: reverse_kl` gives the other reading.

Modes (`distill.ddk.MODES`, config `ddk.modes`): `ddk` (Eq. 1, then Eq. 2), `no_smoothing` (Eq. 1
at each interval), `equal` (uniform over domains, never updated), `natural` (no re-weighting: the
data's own mixture in seeded epochs — plain "uniform KD" with the same loss).

The paper's settings (docs/published.md, DDK): α 0.5, K 1000, γ 0.2, T 1, 500 held-out rows per
domain; the schema's `ddk` defaults are these, and settings missing from `--objective-settings`
are filled from them (distill.config), never from a second table here. `mode` and `teacher` have
no default. The student may be any model directory (`ddk.student`: a fresh slice of the teacher,
a `models.extra` model or a trained workflow model such as `sft`): nothing here assumes a fresh
init. Rows may be chat conversations (loss on the assistant turns) or plain text (loss on all
tokens): the perplexities, like the loss, follow the batching module's target_mask.

    python -m distill.train --objective ddk --objective-settings '{"teacher": ..., "cache": ...,
        "teacher_source": "cache", "mode": "ddk", "interval": 10, "alpha": 0.5, "gamma": 0.2}' ...
"""

from __future__ import annotations

import math

import numpy as np
import torch

from distill import ddk, losses
from distill.batching import collate
from distill.io import InputError
from distill.objectives.kd import KD

# Objective settings that are keys of the schema's `ddk` block (defaults filled from there).
SCHEMA_KEYS = ("interval", "alpha", "gamma", "valid_per_domain", "divergence", "temperature",
               "teacher_source")  # fmt: skip


def with_schema_defaults(settings: dict) -> dict:
    """`settings` with the missing SCHEMA_KEYS filled from the schema's `ddk` defaults."""
    from distill.config import validate_config

    defaults = validate_config({})["ddk"]
    return {**{k: defaults[k] for k in SCHEMA_KEYS}, **settings}


@torch.no_grad()
def domain_perplexity(model, examples, pad_id, device, batch_size=8, autocast=None) -> dict:
    """Token-level perplexity exp(mean CE) on each example's target tokens (response tokens of
    chat rows, every token of text rows: distill.batching's target_mask), per domain.
    -> {domain: ppl}; an example without a target token counts for nothing."""
    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        for b, example in enumerate(chunk):
            mask = batch["target_mask"][b : b + 1]
            n = int(mask.sum())
            if n == 0:
                continue
            ce = float(losses.cross_entropy(logits[b : b + 1], batch["labels"][b : b + 1], mask))
            total = sums.setdefault(example.domain, [0.0, 0])
            total[0] += ce * n
            total[1] += n
    model.train(was_training)
    return {d: math.exp(s / n) for d, (s, n) in sorted(sums.items())}


class DDK(KD):
    extra_settings = ("mode", "interval", "alpha", "gamma", "valid_per_domain")

    def __init__(self, settings: dict, **context):
        settings = with_schema_defaults(settings)
        if settings.get("mode") not in ddk.MODES:
            raise InputError(
                f"--objective-settings: ddk `mode` is {settings.get('mode')!r}; choose one of "
                f"{', '.join(ddk.MODES)} (config ddk.modes)."
            )
        super().__init__(settings, **context)
        s = self.settings
        by_domain: dict[str, list[int]] = {}
        for position, example in enumerate(context["train_examples"]):
            by_domain.setdefault(example.domain, []).append(position)
        self.domains = sorted(by_domain)
        # Held-out rows per domain for the perplexities (the paper: 500 per domain).
        self.valid = []
        for domain in self.domains:
            rows = [e for e in context["valid_examples"] if e.domain == domain]
            if not rows:
                raise InputError(
                    f"ddk: domain `{domain}` has training rows but no held-out rows; every "
                    "domain needs some to measure its perplexity. Fix: enlarge the valid split."
                )
            self.valid += rows[: s["valid_per_domain"]]
        tokenizer = context["tokenizer"]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if s["mode"] != "natural":
            self.sampler = ddk.DomainSampler(by_domain, seed=context["seed"])
        self.teacher_ppl = None  # measured once: the teacher is frozen
        self.weights = ddk.uniform_domain_weights(len(self.domains))
        self.measure_teacher = self.teacher  # the teacher online, for its perplexity only
        if self.measure_teacher is None:
            from distill.teachers import LocalTeacher

            self.measure_teacher = LocalTeacher(s["teacher"], context["accelerator"].device)

    def on_step_start(self, step: int, student) -> dict:
        s = self.settings
        if s["mode"] in ("natural", "equal") and step > 0:
            return {}
        if step % s["interval"] != 0:
            return {}
        accelerator = self.context["accelerator"]
        if self.teacher_ppl is None:
            self.teacher_ppl = domain_perplexity(
                self.measure_teacher.model, self.valid, self.pad_id, accelerator.device,
                autocast=accelerator.autocast,
            )  # fmt: skip
        student_ppl = domain_perplexity(
            student, self.valid, self.pad_id, accelerator.device, autocast=accelerator.autocast
        )
        ppl_s = np.array([student_ppl[d] for d in self.domains])
        ppl_t = np.array([self.teacher_ppl[d] for d in self.domains])
        self.weights = ddk.interval_weights(
            s["mode"], self.weights, ppl_s, ppl_t, s["alpha"], first=step == 0
        )
        if self.sampler is not None:
            self.sampler.set_weights(self.weights)
        logs = {}
        for i, d in enumerate(self.domains):
            logs[f"weight/{d}"] = float(self.weights[i])
            logs[f"ratio/{d}"] = float(ppl_s[i] / ppl_t[i])
            logs[f"ppl_student/{d}"] = float(ppl_s[i])
            logs[f"ppl_teacher/{d}"] = float(ppl_t[i])
        return logs

    def loss(self, model, batch, normaliser):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        teacher_out = self.teacher.forward(batch) if self.teacher is not None else None
        mask = batch["target_mask"]
        kl = self.prediction_loss(
            out.logits, self.teacher_logits(batch, teacher_out), mask, normaliser
        )
        ce = losses.cross_entropy(out.logits, batch["labels"], mask, num_tokens=normaliser)
        return {"loss": ce + self.settings["gamma"] * kl, "ce": ce, "kl": kl}

    def state_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "teacher_ppl": self.teacher_ppl}

    def load_state_dict(self, state: dict) -> None:
        self.weights = np.array(state["weights"])
        self.teacher_ppl = state["teacher_ppl"]
        # The sampler (its weights included) is restored by the loop from its own state.

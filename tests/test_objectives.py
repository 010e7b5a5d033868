"""KD, DAE and DDK objectives on small real models: routing, a step that lowers the divergence,
and DDK's resume."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from conftest import run_module
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill import losses
from distill.batching import collate, encode_examples
from distill.io import InputError, read_examples
from distill.objectives import build_objective
from distill.objectives.dae import route_to_expert


def context_for(student_dir, data):
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    rows = read_examples(data[0])
    valid_rows = read_examples(data[1])
    return {
        "student": AutoModelForCausalLM.from_pretrained(student_dir),
        "train_rows": rows,
        "train_examples": encode_examples(tokenizer, rows, 48),
        "valid_examples": encode_examples(tokenizer, valid_rows, 48),
        "tokenizer": tokenizer,
        "accelerator": Accelerator(cpu=True),
        "seed": 0,
        "train_path": str(data[0]),
        "max_len": 48,
    }


def test_dae_routes_each_sample_to_its_teacher(tiny_student_dir, other_tiny_dir, small_dataset):
    assert route_to_expert(["add", "mul", "add"], {"add"}).tolist() == [True, False, True]
    ctx = context_for(tiny_student_dir, small_dataset)
    settings = {"teacher": str(tiny_student_dir), "expert": str(other_tiny_dir),
                "teacher_source": "online", "domains": ["add"], "scale_by_t2": False}  # fmt: skip
    dae = build_objective("dae", settings, **ctx)
    model = ctx["student"]
    batch = collate(ctx["train_examples"][:6], ctx["tokenizer"].pad_token_id)
    domains = [ctx["train_rows"][i]["domain"] for i in batch["index"].tolist()]
    to_expert = torch.tensor([d == "add" for d in domains])
    assert to_expert.any() and (~to_expert).any()
    terms = dae.loss(model, batch, normaliser=float(batch["target_mask"].sum()))

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expert = AutoModelForCausalLM.from_pretrained(other_tiny_dir)
        expert_logits = expert(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    n = float(batch["target_mask"].sum())
    expected_expert = losses.forward_kl(logits[to_expert], expert_logits[to_expert],
                                        batch["target_mask"][to_expert], num_tokens=n)  # fmt: skip
    # The student is its own general teacher here: the general part is exactly 0.
    assert float(terms["pred_general"].detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["pred_expert"].detach()) == pytest.approx(float(expected_expert), rel=1e-4)
    assert float(terms["pred_expert"]) > 0


def test_one_kd_step_lowers_the_divergence(tiny_student_dir, other_tiny_dir, small_dataset):
    ctx = context_for(tiny_student_dir, small_dataset)
    settings = {"teacher": str(other_tiny_dir), "teacher_source": "online", "w_attn": 0.5,
                "layer_map": "uniform"}  # fmt: skip
    ctx["student"] = AutoModelForCausalLM.from_pretrained(
        tiny_student_dir, attn_implementation="eager"
    )
    kd = build_objective("kd", settings, **ctx)
    model = ctx["student"]
    batch = collate(ctx["train_examples"][:8], ctx["tokenizer"].pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = kd.loss(model, batch, None)
    before["loss"].backward()
    optimizer.step()
    after = kd.loss(model, batch, None)
    assert float(after["pred"]) < float(before["pred"])
    assert float(before["attn"]) > 0


def ddk_args(student, teacher, data, out, ckpt):
    settings = {"steps": 6, "batch_size": 4, "checkpoint_every": 2, "eval_every": 3,
                "warmup_steps": 1, "max_len": 48, "lr": 3e-3}  # fmt: skip
    objective = {"teacher": str(teacher), "teacher_source": "online", "mode": "ddk",
                 "interval": 2, "valid_per_domain": 4}  # fmt: skip
    return ["--objective", "ddk", "--student", student, "--train", data[0], "--valid", data[1],
            "--settings", json.dumps(settings), "--objective-settings", json.dumps(objective),
            "--seed", "1", "--ckpt-dir", ckpt, "--out", out]  # fmt: skip


def test_ddk_resume_restores_weights_and_sampler(
    tmp_path, tiny_student_dir, other_tiny_dir, small_dataset
):
    straight = tmp_path / "straight"
    run_module("distill.train", *ddk_args(tiny_student_dir, other_tiny_dir, small_dataset,
                                          straight, tmp_path / "c1"))  # fmt: skip
    resumed = tmp_path / "resumed"
    args = ddk_args(tiny_student_dir, other_tiny_dir, small_dataset, resumed, tmp_path / "c2")
    killed = run_module("distill.train", *args, env={"DISTILL_KILL_AFTER_STEP": "3"}, check=False)
    assert killed.returncode == -9
    run_module("distill.train", *args)
    log_a = (straight / "train_log.csv").read_text()
    log_b = (resumed / "train_log.csv").read_text()
    header = log_a.splitlines()[0].split(",")
    assert "weight/add" in header and "ratio/mul" in header
    rows_a = [line.split(",") for line in log_a.splitlines()[1:]]
    rows_b = [line.split(",") for line in log_b.splitlines()[1:]]
    assert len(rows_a) == len(rows_b) == 6
    for a, b in zip(rows_a, rows_b, strict=True):
        for column, x, y in zip(header, a, b, strict=True):
            if column in ("wall_s",) or not x:
                continue
            assert float(x) == pytest.approx(float(y), rel=1e-4, abs=1e-6), column
    weights = [
        float(r[header.index("weight/add")]) for r in rows_a if r[header.index("weight/add")]
    ]
    assert len(weights) == 3  # re-weighted at steps 0, 2 and 4


def kd_objective(ctx, **settings):
    base = {"teacher": str(ctx["teacher"]), "teacher_source": "online"}
    return build_objective(
        "kd", {**base, **settings}, **{k: v for k, v in ctx.items() if k != "teacher"}
    )


def test_fused_loss_equals_the_logits_path(tiny_student_dir, other_tiny_dir, small_dataset):
    """Training through the fused hidden-state loss gives the plain path's terms and gradients."""
    ctx = {**context_for(tiny_student_dir, small_dataset), "teacher": other_tiny_dir}
    model = ctx["student"]
    batch = collate(ctx["train_examples"][:6], ctx["tokenizer"].pad_token_id)
    results = []
    for fused in (True, False):
        kd = kd_objective(ctx, fused_loss=fused, lam=0.6, divergence="jsd", chunk_size=16)
        assert kd.fused is fused
        model.zero_grad()
        terms = kd.loss(model, batch, 50.0)
        terms["loss"].backward()
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
        results.append(({k: float(v) for k, v in terms.items()}, grads))
    (fused_terms, fused_grads), (plain_terms, plain_grads) = results
    assert fused_terms.keys() == plain_terms.keys() == {"loss", "pred", "ce"}
    for key in plain_terms:
        assert fused_terms[key] == pytest.approx(plain_terms[key], rel=1e-5), key
    torch.testing.assert_close(fused_grads, plain_grads, rtol=1e-4, atol=1e-6)


def test_settings_come_from_the_schema(tiny_student_dir, other_tiny_dir, small_dataset):
    from distill.config import schema_defaults

    ctx = {**context_for(tiny_student_dir, small_dataset), "teacher": other_tiny_dir}
    kd = kd_objective(ctx)
    for key, value in schema_defaults("kd").items():
        if not isinstance(value, dict) and key != "teacher_source":
            assert kd.settings[key] == value, key
    with pytest.raises(InputError, match=r"unknown keys \['lamda'\]"):
        kd_objective(ctx, lamda=0.5)
    from distill.objectives.kd import complete_settings

    dae = complete_settings({"domains": ["add"]}, "dae", "kd")
    assert dae["alpha"] == schema_defaults("kd")["alpha"] and "expert" not in dae
    assert dae["divergence"] == schema_defaults("dae")["divergence"]


def test_sampled_cache_trains_forward_kl_and_refuses_reverse_kl(
    tiny_student_dir, other_tiny_dir, small_dataset, tmp_path
):
    from distill.teacher_cache import build_cache

    cache = tmp_path / "cache"
    build_cache(other_tiny_dir, small_dataset[0], cache, kind="sampled", k=1, samples=20, seed=0,
                temperature=1.0, max_len=48, batch_size=8, shard_examples=8,
                precision="fp32")  # fmt: skip
    ctx = {**context_for(tiny_student_dir, small_dataset), "teacher": other_tiny_dir}
    kd = kd_objective(ctx, teacher_source="cache", cache=str(cache))
    batch = collate(ctx["train_examples"][:6], ctx["tokenizer"].pad_token_id)
    with torch.no_grad():
        teacher = AutoModelForCausalLM.from_pretrained(other_tiny_dir)(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
        logits = ctx["student"](
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    full = losses.forward_kl(logits, teacher, batch["target_mask"], scale_by_t2=True)
    estimate = kd.loss(ctx["student"], batch, None)["pred"]
    assert float(estimate) == pytest.approx(float(full), rel=0.2)  # 20 draws, ~60 tokens
    with pytest.raises(
        InputError, match=r"sampled teacher cache.*`reverse_kl`.*teacher_source: online"
    ):
        kd_objective(ctx, teacher_source="cache", cache=str(cache), divergence="reverse_kl")

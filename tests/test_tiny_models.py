"""Tiny models of the papers' architectures (model source `tiny:...`) and hub access checks."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distill.batching import encode_chat
from distill.io import InputError
from distill.models import resolve
from distill.models.resolve import check_hub_access, load_source, save_model
from distill.models.student import model_from_sizes, slice_teacher, tokenizer_fingerprint
from distill.models.tiny import FAMILIES, build_tokenizer, parse_tiny

CONVERSATION = [
    {"role": "user", "content": "Solve 2*x + 3 = 7 for x."},
    {"role": "assistant", "content": "x = 2"},
    {"role": "user", "content": "And 3*x = 12?"},
    {"role": "assistant", "content": "x = 4"},
]
# What each family's template writes around an assistant turn, as the real models' templates do.
END_OF_TURN = {"mistral": "</s>", "mixtral": "</s>", "qwen2": "<|im_end|>\n", "llama": "<|eot_id|>"}
CLASSES = {"mistral": "MistralForCausalLM", "mixtral": "MixtralForCausalLM",
           "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Each family resolved and saved as the workflow saves a model (about 1 s in all)."""
    out = {}
    for family in FAMILIES:
        model, tokenizer = load_source(f"tiny:{family}")
        out[family] = tmp_path_factory.mktemp("tiny") / family
        save_model(model, tokenizer, out[family])
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_tiny_model_loads_without_our_code_and_chats(tiny_dirs, family):
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[family])
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[family])
    assert type(model).__name__ == CLASSES[family]
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.num_key_value_heads == 2 and model.config.vocab_size == len(tokenizer)
    ids, spans, _ = encode_chat(tokenizer, CONVERSATION, 256)
    assert [tokenizer.decode(ids[s:e]) for s, e in spans] == [
        "x = 2" + END_OF_TURN[family],
        "x = 4" + END_OF_TURN[family],
    ]
    text = "数学 and code: def f(x): return x ** 2"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer)) and torch.isfinite(logits).all()


def test_tokenizers_are_byte_identical_across_processes_and_shared_by_mistral_and_mixtral(
    tiny_dirs, tmp_path
):
    # A fresh interpreter (Rust's hash maps are seeded per process) trains the same files.
    script = (
        "import sys; from distill.models.tiny import build_tokenizer; "
        "[build_tokenizer(f).save_pretrained(f'{sys.argv[1]}/{f}') for f in sys.argv[2:]]"
    )
    families = ["mistral", "qwen2", "llama"]
    subprocess.run([sys.executable, "-c", script, tmp_path, *families], check=True)
    for family in families:
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            here = hashlib.sha256((tiny_dirs[family] / name).read_bytes()).hexdigest()
            there = hashlib.sha256((tmp_path / family / name).read_bytes()).hexdigest()
            assert here == there, (family, name)
    prints = {
        f: tokenizer_fingerprint(AutoTokenizer.from_pretrained(tiny_dirs[f])) for f in FAMILIES
    }
    assert prints["mistral"] == prints["mixtral"]
    # Built in this process (a `tiny:` student source) == saved and loaded (a teacher directory).
    assert prints == {f: tokenizer_fingerprint(build_tokenizer(f)) for f in FAMILIES}
    assert len({prints["mistral"], prints["qwen2"], prints["llama"]}) == 3


def test_mixtral_is_a_mixture_of_experts(tiny_dirs):
    config = AutoModelForCausalLM.from_pretrained(tiny_dirs["mixtral"]).config
    assert config.num_local_experts == 4 and config.num_experts_per_tok == 2


def test_mistral_gives_attention_maps_with_eager_attention(tiny_dirs):
    """KD-DAE's attention KL reads output_attentions, which only eager attention returns."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["mistral"], attn_implementation="eager")
    out = model(torch.tensor([[1, 40, 41, 42, 43]]), output_attentions=True)
    assert len(out.attentions) == 2
    assert out.attentions[0].shape == (1, 4, 5, 5)
    rows = out.attentions[1][0].sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
    assert out.attentions[0][0, :, 0, 1:].abs().max() == 0  # causal


def test_sizes_and_seed_override():
    family, seed, overrides = parse_tiny("qwen2@3,hidden_size=96,num_hidden_layers=3")
    assert (family, seed, overrides) == ("qwen2", 3, {"hidden_size": 96, "num_hidden_layers": 3})
    big, _ = load_source("tiny:qwen2@3,hidden_size=96,num_hidden_layers=3")
    assert big.config.hidden_size == 96 and big.config.num_hidden_layers == 3
    assert big.config.head_dim == 24 and len(big.config.layer_types) == 3
    a, _ = load_source("tiny:llama@1")
    b, _ = load_source("tiny:llama@1")
    c, _ = load_source("tiny:llama@2")
    weight = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(a.state_dict()[weight], b.state_dict()[weight])
    assert not torch.equal(a.state_dict()[weight], c.state_dict()[weight])


@pytest.mark.parametrize(
    "source, words",
    [
        ("tiny:gpt2", "unknown family `gpt2`"),
        ("tiny:llama@x", "seed `x`"),
        ("tiny:llama,hidden_sise=96", "no field(s) ['hidden_sise']"),
        ("tiny:llama,hidden_size", "not field=value"),
    ],
)
def test_bad_tiny_sources_stop_with_the_fix(source, words):
    with pytest.raises(InputError, match="tiny:") as caught:
        load_source(source)
    assert words in str(caught.value)


@pytest.mark.parametrize("family", ["mistral", "mixtral", "qwen2", "llama"])
def test_students_build_from_tiny_teachers(tiny_dirs, family):
    teacher, _ = load_source(str(tiny_dirs[family]))
    sliced = slice_teacher(teacher, [1])
    assert sliced.config.num_hidden_layers == 1
    assert torch.equal(
        sliced.state_dict()["model.layers.0.self_attn.q_proj.weight"],
        teacher.state_dict()["model.layers.1.self_attn.q_proj.weight"],
    )
    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 1, "intermediate_size": 64}  # fmt: skip
    fresh = model_from_sizes(teacher, sizes, seed=0)
    assert fresh.config.head_dim == 16 and fresh.config.vocab_size == teacher.config.vocab_size
    logits = fresh(torch.tensor([[1, 50, 60]])).logits
    assert logits.shape == (1, 3, teacher.config.vocab_size)


def _hub_error(cls):
    error = cls.__new__(cls)  # huggingface_hub's errors want an HTTP response; none is needed
    Exception.__init__(error, "refused")
    return error


def test_gated_hub_model_without_token_stops_with_key_and_fix(monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    monkeypatch.setattr(resolve, "hub_cache_dir", lambda: "/shared/hf/hub")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)

    def gated(self, repo_id, token=None):
        raise _hub_error(GatedRepoError)

    monkeypatch.setattr(HfApi, "auth_check", gated)
    with pytest.raises(InputError) as caught:
        check_hub_access("hf:meta-llama/Llama-3.1-8B-Instruct", "sweep.teacher")
    message = str(caught.value)
    page = "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct"
    for words in ("sweep.teacher", "gated", "no token", "huggingface-cli login", "HF_TOKEN", page,
                  "/shared/hf/hub"):  # fmt: skip
        assert words in message

    def missing(self, repo_id, token=None):
        raise _hub_error(RepositoryNotFoundError)

    monkeypatch.setattr(HfApi, "auth_check", missing)
    with pytest.raises(InputError, match="models.teacher = `hf:org/typo`"):
        check_hub_access("hf:org/typo", "models.teacher")

    monkeypatch.setattr(HfApi, "auth_check", lambda self, repo_id, token=None: None)
    assert check_hub_access("hf:Qwen/Qwen1.5-1.8B", "ddk.student") == "ok"
    assert check_hub_access("tiny:qwen2", "ddk.student") == "not hub"


def test_downloads_go_under_hf_home(tmp_path):
    code = "from distill.models.resolve import hub_cache_dir; print(hub_cache_dir())"
    env = {"HF_HOME": str(tmp_path / "shared"), "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(tmp_path / "shared" / "hub")


def test_build_tokenizer_has_family_special_tokens():
    assert build_tokenizer("qwen2").eos_token == "<|im_end|>"
    llama = build_tokenizer("llama")
    assert llama("hi")["input_ids"][0] == llama.convert_tokens_to_ids("<|begin_of_text|>")

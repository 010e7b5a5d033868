"""Tiny random models of the papers' architectures, built offline (model source `tiny:...`).

The paper smoke (configs/paper-smoke.yaml) runs the paper's DAG on a CPU with models of the same
architectures as the papers' (Mistral and Mixtral for KD-DAE, Qwen1.5 = transformers' Qwen2 for
DDK, Llama-3 for the λ' sweep), a few hundred kilobytes each. A source

    tiny:<family>[@<seed>][,<config field>=<value>...]

e.g. `tiny:mistral`, `tiny:mixtral@1`, `tiny:qwen2@0,hidden_size=96,num_hidden_layers=3`, gives
a randomly initialised model (torch.manual_seed(seed), default seed 0) of `family` in
{mistral, mixtral, qwen2, llama} with SIZES unless overridden (values are JSON: numbers, true,
null, ...; head_dim follows hidden_size / num_attention_heads unless given).

Its tokenizer is a byte-level BPE of TOKENIZER_VOCAB tokens trained by the `tokenizers` library
on a fixed text built here (so every text, Chinese and code included, encodes without unknown
tokens), with the family's special tokens and chat template: Mistral's [INST] template (Mistral
and Mixtral share one tokenizer, as the real ones do), ChatML for Qwen, Llama-3's header tokens.
Training is deterministic, so a family gives a byte-identical tokenizer every time, in every
process (the project compares teacher and student tokenizers by fingerprint). The result loads
with AutoModelForCausalLM/AutoTokenizer and no code of ours once saved.
"""

from __future__ import annotations

import itertools
import json
import random

from distill.io import InputError

FAMILIES = ("mistral", "mixtral", "qwen2", "llama")
SIZES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
MOE_SIZES = {"num_local_experts": 4, "num_experts_per_tok": 2}  # Mixtral: 8 experts, top 2
TOKENIZER_VOCAB = 1024

# Mistral-7B-Instruct-v0.2's template (user/assistant alternating; no system turn).
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)
# Qwen1.5-Chat's ChatML template (a default system turn when the conversation has none).
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Llama-3-Instruct's template.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
# Per tokenizer kind: special tokens (ids 0.. in this order), roles, whether BOS is prepended to
# plain text (as the real tokenizers do), and the chat template.
TOKENIZERS = {
    "mistral": {
        "special": ["<unk>", "<s>", "</s>"],
        "roles": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"},
        "add_bos": True,
        "template": MISTRAL_TEMPLATE,
    },
    "qwen2": {
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        # unk as transformers' Qwen2Tokenizer sets it on loading, so built == reloaded
        "roles": {
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
        },
        "add_bos": False,
        "template": CHATML_TEMPLATE,
    },
    "llama": {
        "special": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],  # fmt: skip
        "roles": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "add_bos": True,
        "template": LLAMA3_TEMPLATE,
    },
}
TOKENIZER_KIND = {"mistral": "mistral", "mixtral": "mistral", "qwen2": "qwen2", "llama": "llama"}

SOURCE_FORMAT = "tiny:<family>[@<seed>][,<config field>=<value>...] with family in " + ", ".join(
    FAMILIES
)


def parse_tiny(spec: str) -> tuple[str, int, dict]:
    """`qwen2@1,hidden_size=96` -> ("qwen2", 1, {"hidden_size": 96})."""
    head, *pairs = spec.split(",")
    family, _, seed = head.partition("@")
    if family not in FAMILIES:
        raise InputError(f"model source tiny:{spec}: unknown family `{family}`. {SOURCE_FORMAT}.")
    try:
        seed_value = int(seed) if seed else 0
    except ValueError:
        raise InputError(f"model source tiny:{spec}: seed `{seed}` is not an integer.") from None
    overrides = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise InputError(f"model source tiny:{spec}: `{pair}` is not field=value.")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return family, seed_value, overrides


def training_text() -> list[str]:
    """The fixed text the tokenizer is trained on: English sentences, arithmetic, code, Chinese."""
    from distill.data.instructions import TEMPLATES, TOPICS

    lines = [t.format(topic=topic) for ts in TEMPLATES.values() for t in ts for topic in TOPICS]
    rng = random.Random(0)  # fixed: the text, hence the tokenizer, never changes
    for _ in range(400):
        a, b, c = rng.randint(-99, 99), rng.randint(1, 99), rng.randint(-999, 999)
        lines.append(f"Solve {b}*x + {a} = {c} for x. What is {a} - {b}? Let f(x) = {b}*x**2.")
    words = ["def", "return", "for", "in", "if", "else", "class", "import", "print", "self"]
    for w1, w2 in itertools.product(words, repeat=2):
        lines.append(f"{w1} {w2}(x, y):\n    {w2} = [i * 2 for i in range(10)]  # {w1}\n")
    chinese = (
        "的一是不了在人有我他这个们中来上大为和国地到以说时要就出会"
        "可也你对生能而子那得于着下自之年过发后作里"
    )
    lines += [chinese[i:] + chinese[:i] + "。" for i in range(len(chinese))]
    return lines


def build_tokenizer(family: str):
    """The family's tokenizer (a transformers fast tokenizer), trained deterministically."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    kind = TOKENIZERS[TOKENIZER_KIND[family]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if family == "qwen2":
        # AutoTokenizer loads a qwen2 directory as transformers' Qwen2Tokenizer, which sets Qwen's
        # own normalizer and pre-tokenizer whatever tokenizer.json says: train with those, so the
        # file and the loaded tokenizer agree.
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=kind["special"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    if kind["add_bos"]:
        bos = kind["roles"]["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        chat_template=kind["template"],
        model_max_length=SIZES["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
        **kind["roles"],
    )


def build_config(family: str, tokenizer, overrides: dict):
    """The family's transformers config with SIZES, the tokenizer's vocabulary and `overrides`."""
    from transformers import LlamaConfig, MistralConfig, MixtralConfig, Qwen2Config

    classes = {"mistral": MistralConfig, "mixtral": MixtralConfig, "qwen2": Qwen2Config,
               "llama": LlamaConfig}  # fmt: skip
    fields = {**SIZES, **(MOE_SIZES if family == "mixtral" else {}), **overrides}
    if family in ("mistral", "mixtral"):
        fields.setdefault("sliding_window", None)
    if "head_dim" not in overrides:
        fields["head_dim"] = fields["hidden_size"] // fields["num_attention_heads"]
    probe = classes[family]()
    unknown = sorted(k for k in overrides if not hasattr(probe, k))
    if unknown:
        raise InputError(
            f"model source tiny:{family}: `{type(probe).__name__}` has no field(s) {unknown}. "
            "Fix: use config fields such as hidden_size, num_hidden_layers, num_attention_heads, "
            "num_key_value_heads, intermediate_size."
        )
    ids = {
        f"{role}_id": tokenizer.convert_tokens_to_ids(getattr(tokenizer, role))
        for role in ("bos_token", "eos_token", "pad_token")
        if getattr(tokenizer, role) is not None
    }
    return classes[family](vocab_size=len(tokenizer), **ids, **fields)


def build_tiny(spec: str, dtype=None):
    """(model, tokenizer) for the source `tiny:<spec>`, randomly initialised from its seed."""
    import torch
    from transformers import AutoModelForCausalLM

    family, seed, overrides = parse_tiny(spec)
    tokenizer = build_tokenizer(family)
    config = build_config(family, tokenizer, overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    return model, tokenizer

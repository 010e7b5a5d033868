"""Batched chat generation with transformers (teacher answers, MT-Bench and AlpacaEval outputs)."""

from __future__ import annotations

import torch


def pick_dtype(precision: str = "bf16") -> torch.dtype:
    """bf16 on a GPU that supports it and on the CPU (faster there: docs/environment.md), else
    fp32."""
    if precision != "bf16":
        return torch.float32
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16


def load_for_generation(model_dir: str, precision: str = "bf16"):
    """(model, tokenizer) ready for batched generation: eval mode, left padding."""
    from transformers import AutoTokenizer

    from distill.teachers import load_causal_lm

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # generation appends on the right: pad on the left
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_causal_lm(model_dir, device, dtype=pick_dtype(precision))
    model.eval()
    return model, tokenizer


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The chat template applied to `messages` with the generation prompt, as text.

    Templates without a system role (Mistral-Instruct's, Mixtral's) refuse a system message;
    then it goes in front of the first user message, as FastChat does for those models.
    """
    if messages and messages[0]["role"] == "system" and not _has_system_role(tokenizer):
        system, first, *rest = messages
        messages = [{**first, "content": f"{system['content']}\n\n{first['content']}"}, *rest]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _has_system_role(tokenizer) -> bool:
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    try:
        tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
    except Exception:  # jinja2's TemplateError from the template's raise_exception
        return False
    return True


@torch.no_grad()
def generate(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int = 8,
    seed: int = 0,
) -> list[str]:
    """The assistant's next message for each conversation (greedy when temperature == 0).

    Conversations are sorted by prompt length into batches (less padding) and returned in the
    order given. Sampling is seeded per batch, so a rerun gives the same text.
    """
    prompts = [chat_prompt(tokenizer, c) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        enc = tokenizer(
            [prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(model.device)
        torch.manual_seed(seed + start)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            pad_token_id=tokenizer.pad_token_id,
            **{k: v for k, v in sampling.items() if k != "do_sample"},
        )
        new = out[:, enc["input_ids"].shape[1] :]
        for i, tokens in zip(chunk, new, strict=True):
            outputs[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return outputs

"""The fused hidden-state KD loss equals the logits path in value and gradients."""

from __future__ import annotations

import pytest
import torch

from distill import losses
from distill.fused_kd import LinearHead, fused_cross_entropy, fused_divergence

B, T, D, V = 2, 7, 5, 11
CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"beta": 0.3}),
    ("skew_forward_kl", {"alpha": 0.1}),
    ("skew_reverse_kl", {"alpha": 0.2}),
    ("tvd", {}),
]


def inputs(seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g, dtype=dtype)
    weight = torch.randn(V, D, generator=g, dtype=dtype)
    teacher = torch.randn(B, T, V, generator=g, dtype=dtype) * 2
    mask = torch.rand(B, T, generator=g) < 0.7
    mask[0, 0] = True
    return hidden, weight, teacher, mask


def grads(fn, hidden, weight):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    out = fn(h, w)
    gh, gw = torch.autograd.grad(out * 1.7, (h, w))  # a non-unit upstream gradient
    return out.detach(), gh, gw


def teachers(teacher_logits, mask):
    top = losses.topk_teacher(teacher_logits, 4, temperature=1.5)
    rows = losses.sample_rows(teacher_logits[mask], 20, 1.5, torch.Generator().manual_seed(0))
    per_example, start = [], 0
    for b in range(B):
        n = int(mask[b].sum())
        lo, hi = int(rows.offsets[start]), int(rows.offsets[start + n])
        per_example.append(
            losses.SampledRows(
                rows.ids[lo:hi], rows.counts[lo:hi], rows.offsets[start : start + n + 1] - lo,
                rows.entropy[start : start + n], rows.samples,
            )
        )  # fmt: skip
        start += n
    return {
        "full": teacher_logits,
        "topk": top,
        "sampled": losses.sampled_teacher(per_example, mask),
    }


# A sampled teacher supports forward KL only (the refusal: tests/test_losses.py).
FUSED_CASES = [(k, kw, t) for k, kw in CASES for t in ("full", "topk")]
FUSED_CASES.append(("forward_kl", {}, "sampled"))


@pytest.mark.parametrize(
    ("kind", "kw", "teacher_kind"), FUSED_CASES, ids=[f"{c[0]}-{c[2]}" for c in FUSED_CASES]
)
def test_fused_equals_logits_path(kind, kw, teacher_kind):
    hidden, weight, teacher_logits, mask = inputs(1)
    teacher = teachers(teacher_logits, mask)[teacher_kind]
    settings = {"temperature": 1.5, "scale_by_t2": True, "num_tokens": 9, **kw}
    plain = grads(
        lambda h, w: losses.divergence(kind, h @ w.T, teacher, mask, chunk_size=3, **settings),
        hidden, weight,
    )  # fmt: skip
    fused = grads(
        lambda h, w: fused_divergence(kind, LinearHead(h, w), teacher, mask, chunk_size=2,
                                      **settings),
        hidden, weight,
    )  # fmt: skip
    for a, b in zip(plain, fused, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_cross_entropy_and_bf16_autocast():
    hidden, weight, _, mask = inputs(2)
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(3))
    plain = grads(lambda h, w: losses.cross_entropy(h @ w.T, labels, mask), hidden, weight)
    fused = grads(
        lambda h, w: fused_cross_entropy(LinearHead(h, w), labels, mask, chunk_size=3),
        hidden, weight,
    )  # fmt: skip
    for a, b in zip(plain, fused, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # Under bf16 autocast the matmul runs in bf16 like nn.Linear's; the loss stays fp32.
    h32, w32, t32 = hidden.float(), weight.float(), inputs(2)[2].float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = grads(lambda h, w: fused_divergence("forward_kl", LinearHead(h, w), t32, mask),
                    h32, w32)  # fmt: skip
        want = grads(lambda h, w: losses.forward_kl(torch.nn.functional.linear(h, w), t32, mask),
                     h32, w32)  # fmt: skip
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_fused_empty_mask_and_no_grad():
    hidden, weight, teacher, mask = inputs(4)
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    zero = fused_divergence("forward_kl", LinearHead(h, w), teacher, torch.zeros_like(mask))
    zero.backward()
    assert float(zero.detach()) == 0.0 and float(h.grad.abs().sum()) == 0.0
    with torch.no_grad():
        value = fused_divergence("tvd", LinearHead(hidden, weight), teacher, mask)
    torch.testing.assert_close(value, losses.tvd(hidden @ weight.T, teacher, mask))

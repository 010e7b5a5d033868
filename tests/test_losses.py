"""Tests for distill.losses against independent float64 implementations written from the formulas.

The reference functions below share no code with the module: softmax, KL and the mixtures are
spelled out directly in float64 torch (so that autograd also gives reference gradients).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill import losses
from distill.losses import (
    TopKTeacher,
    attention_kl,
    cross_entropy,
    divergence,
    forward_kl,
    hidden_state_loss,
    jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    topk_teacher,
    tvd,
    uniform_layer_map,
)

B, T, V = 3, 6, 13

# (kind, extra kwargs) covering the endpoints and interior of beta / alpha.
CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 0.1}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.9}),
    ("jsd", {"beta": 1.0}),
    ("skew_forward_kl", {"alpha": 0.0}),
    ("skew_forward_kl", {"alpha": 0.1}),
    ("skew_forward_kl", {"alpha": 0.7}),
    ("skew_reverse_kl", {"alpha": 0.0}),
    ("skew_reverse_kl", {"alpha": 0.1}),
    ("skew_reverse_kl", {"alpha": 0.7}),
    ("tvd", {}),
]
CASE_IDS = [f"{k}-{'-'.join(f'{a}{v}' for a, v in kw.items())}" for k, kw in CASES]


# ----------------------------------------------------------------------------------------------
# Independent references (float64, per row)
# ----------------------------------------------------------------------------------------------


def ref_softmax(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    z = x.double() / temperature
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def ref_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_i p_i log(p_i / q_i), with 0 log 0 = 0."""
    safe_p = torch.where(p > 0, p, torch.ones_like(p))
    return torch.where(p > 0, p * torch.log(safe_p / q), torch.zeros_like(p)).sum(-1)


def ref_divergence(kind: str, ps: torch.Tensor, pt: torch.Tensor, **kw) -> torch.Tensor:
    """Per-row divergence between student probs ps and teacher probs pt (…, K)."""
    if kind == "forward_kl":
        return ref_kl(pt, ps)
    if kind == "reverse_kl":
        return ref_kl(ps, pt)
    if kind == "jsd":
        b = kw["beta"]
        if b == 0:
            return ref_kl(pt, ps)
        if b == 1:
            return ref_kl(ps, pt)
        m = b * pt + (1 - b) * ps
        return b * ref_kl(pt, m) + (1 - b) * ref_kl(ps, m)
    if kind == "skew_forward_kl":
        a = kw["alpha"]
        return ref_kl(pt, a * pt + (1 - a) * ps)
    if kind == "skew_reverse_kl":
        a = kw["alpha"]
        return ref_kl(ps, a * ps + (1 - a) * pt)
    if kind == "tvd":
        return 0.5 * (pt - ps).abs().sum(-1)
    raise AssertionError(kind)


def ref_loss(kind, s_logits, t_logits, mask, temperature=1.0, **kw) -> torch.Tensor:
    ps = ref_softmax(s_logits, temperature)
    pt = ref_softmax(t_logits, temperature)
    d = ref_divergence(kind, ps, pt, **kw)
    m = mask.double()
    return (d * m).sum() / m.sum()


def ref_topk_buckets(s_logits, t_logits, k, s_temp, t_temp):
    """Student and teacher probs on k + 1 buckets (teacher's top-k tokens + rest)."""
    ps = ref_softmax(s_logits, s_temp)
    pt = ref_softmax(t_logits, t_temp)
    idx = pt.argsort(dim=-1, descending=True)[..., :k]
    ps_top, pt_top = ps.gather(-1, idx), pt.gather(-1, idx)
    ps_b = torch.cat([ps_top, (1 - ps_top.sum(-1, keepdim=True))], -1)
    pt_b = torch.cat([pt_top, (1 - pt_top.sum(-1, keepdim=True))], -1)
    return ps_b, pt_b


# ----------------------------------------------------------------------------------------------
# Fixtures / helpers
# ----------------------------------------------------------------------------------------------


def make_inputs(seed: int, dtype=torch.float64, b=B, t=T, v=V, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, t, v, generator=g) * scale).to(dtype)
    te = (torch.randn(b, t, v, generator=g) * scale).to(dtype)
    mask = torch.rand(b, t, generator=g) < 0.6
    mask[0, 0] = True  # never empty
    return s, te, mask


def loss_and_grad(fn, s, *args, **kw):
    s = s.detach().clone().requires_grad_(True)
    out = fn(s, *args, **kw)
    (grad,) = torch.autograd.grad(out, s)
    return out.detach(), grad


def close(a, b, tol=1e-10):
    return torch.allclose(
        torch.as_tensor(a).double(), torch.as_tensor(b).double(), atol=tol, rtol=tol
    )


# ----------------------------------------------------------------------------------------------
# Token-level divergences
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_matches_reference_value_and_gradient(kind, kw, temperature):
    s, te, mask = make_inputs(0)
    got, got_grad = loss_and_grad(
        lambda x: divergence(kind, x, te, mask, temperature=temperature, chunk_size=4, **kw), s
    )
    want, want_grad = loss_and_grad(
        lambda x: ref_loss(kind, x, te, mask, temperature=temperature, **kw), s
    )
    assert close(got, want), (got, want)
    assert close(got_grad, want_grad)
    assert got.dtype == torch.float64


@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_scale_by_t2(kind, kw):
    s, te, mask = make_inputs(1)
    plain = divergence(kind, s, te, mask, temperature=3.0, **kw)
    scaled = divergence(kind, s, te, mask, temperature=3.0, scale_by_t2=True, **kw)
    assert close(scaled, 9.0 * plain)
    # temperature actually changes the value
    assert not close(plain, divergence(kind, s, te, mask, **kw), tol=1e-6)


def test_jsd_and_skew_endpoints():
    s, te, mask = make_inputs(2)
    fkl, rkl = forward_kl(s, te, mask), reverse_kl(s, te, mask)
    assert torch.equal(jsd(s, te, mask, beta=0.0), fkl)
    assert torch.equal(jsd(s, te, mask, beta=1.0), rkl)
    assert close(skew_forward_kl(s, te, mask, alpha=0.0), fkl)
    assert close(skew_reverse_kl(s, te, mask, alpha=0.0), rkl)
    assert abs(skew_forward_kl(s, te, mask, alpha=1.0).item()) < 1e-12
    assert abs(skew_reverse_kl(s, te, mask, alpha=1.0).item()) < 1e-12
    # The endpoints are the limits of the rescaled JSD (TRL/GKD convention): JSD_b / b -> FKL,
    # JSD_b / (1 - b) -> RKL; the unscaled JSD itself tends to 0.
    eps = 1e-5
    assert math.isclose(jsd(s, te, mask, beta=eps).item() / eps, fkl.item(), rel_tol=1e-3)
    assert math.isclose(jsd(s, te, mask, beta=1 - eps).item() / eps, rkl.item(), rel_tol=1e-3)
    # beta = 0.5 is the ordinary (symmetric) Jensen-Shannon divergence
    assert close(jsd(s, te, mask, beta=0.5), jsd(te, s, mask, beta=0.5))


@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_masked_rows_do_not_matter(kind, kw):
    s, te, mask = make_inputs(3)
    s2, te2 = s.clone(), te.clone()
    noise_s, noise_t, _ = make_inputs(33)
    s2[~mask] = noise_s[~mask] * 5
    te2[~mask] = noise_t[~mask] * 5
    a, grad = loss_and_grad(lambda x: divergence(kind, x, te, mask, **kw), s)
    b, _ = loss_and_grad(lambda x: divergence(kind, x, te2, mask, **kw), s2)
    assert close(a, b)
    assert torch.all(grad[~mask] == 0)
    # 0/1 integer masks behave like bool masks
    assert close(a, divergence(kind, s, te, mask.long(), **kw))


@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_num_tokens_microbatches_add_up(kind, kw):
    s, te, mask = make_inputs(4, b=4)
    n = int(mask.sum())
    whole = divergence(kind, s, te, mask, **kw)
    parts = [
        divergence(kind, s[sl], te[sl], mask[sl], num_tokens=n, **kw)
        for sl in (slice(0, 1), slice(1, 4))
    ]
    assert close(parts[0] + parts[1], whole)
    # a tensor normaliser (e.g. after all_reduce) works the same
    t_parts = [
        divergence(kind, s[sl], te[sl], mask[sl], num_tokens=torch.tensor(n), **kw)
        for sl in (slice(0, 1), slice(1, 4))
    ]
    assert close(t_parts[0] + t_parts[1], whole)
    # None normalises by this call's mask
    assert close(divergence(kind, s, te, mask, num_tokens=2 * n, **kw), whole / 2)


@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_zero_at_equality_positive_otherwise(kind, kw):
    s, te, mask = make_inputs(5)
    assert abs(divergence(kind, te, te, mask, **kw).item()) < 1e-12
    assert abs(divergence(kind, te, topk_teacher(te, 4), mask, **kw).item()) < 1e-12
    if kw.get("alpha") != 1.0:  # alpha = 1 mixes the whole "other" side away: identically 0
        assert divergence(kind, s, te, mask, **kw).item() > 1e-4
        assert divergence(kind, s, topk_teacher(te, 4), mask, **kw).item() > 1e-4


# ----------------------------------------------------------------------------------------------
# Top-k teachers
# ----------------------------------------------------------------------------------------------


def test_topk_teacher_builder():
    _, te, _ = make_inputs(6)
    k, temp = 5, 1.7
    tk = topk_teacher(te, k, temperature=temp, chunk_size=4)
    pt = ref_softmax(te, temp)
    want_p, want_idx = pt.sort(dim=-1, descending=True)
    assert tk.logprobs.shape == (B, T, k) and tk.indices.dtype == torch.int64
    assert torch.equal(tk.indices, want_idx[..., :k])
    assert close(tk.logprobs, want_p[..., :k].log())
    assert close(tk.leftover, 1 - want_p[..., :k].sum(-1))
    assert tk.k == k
    full = topk_teacher(te, V)
    assert torch.all(full.leftover == 0)
    # float32 input -> float32 cache
    assert topk_teacher(te.float(), k).logprobs.dtype == torch.float32
    with pytest.raises(ValueError, match="k must be"):
        topk_teacher(te, V + 1)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_topk_with_k_equal_v_equals_full(kind, kw, temperature):
    s, te, mask = make_inputs(7)
    # The cache holds teacher log-probs at its own temperature; only the student is divided.
    tk = topk_teacher(te, V, temperature=temperature)
    a, ga = loss_and_grad(
        lambda x: divergence(kind, x, tk, mask, temperature=temperature, chunk_size=5, **kw), s
    )
    b, gb = loss_and_grad(lambda x: divergence(kind, x, te, mask, temperature=temperature, **kw), s)
    assert close(a, b), (a, b)
    assert close(ga, gb)
    assert torch.isfinite(ga).all()


@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_topk_small_k_matches_bucket_reference(kind, kw):
    s, te, mask = make_inputs(8)
    k, s_temp, t_temp = 4, 1.5, 0.8
    tk = topk_teacher(te, k, temperature=t_temp)

    def ref(x):
        ps_b, pt_b = ref_topk_buckets(x, te, k, s_temp, t_temp)
        d = ref_divergence(kind, ps_b, pt_b, **kw)
        return (d * mask.double()).sum() / mask.sum()

    got, got_grad = loss_and_grad(
        lambda x: divergence(kind, x, tk, mask, temperature=s_temp, chunk_size=3, **kw), s
    )
    want, want_grad = loss_and_grad(ref, s)
    assert close(got, want), (got, want)
    assert close(got_grad, want_grad)


@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_topk_small_k_near_but_below_full(kind, kw):
    if kw.get("alpha") == 1.0:
        pytest.skip("identically zero")
    g = torch.Generator().manual_seed(9)
    v, k = 40, 8
    # Peaked teacher: the top-k tokens hold ~99.9% of the mass, the student is a noisy copy.
    te = torch.randn(2, 5, v, generator=g, dtype=torch.float64)
    te[..., :k] += 9.0
    s = te + 0.5 * torch.randn(2, 5, v, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.bool)
    full = divergence(kind, s, te, mask, **kw).item()
    approx = divergence(kind, s, topk_teacher(te, k), mask, **kw).item()
    assert approx != pytest.approx(full, rel=1e-9, abs=1e-12)  # not equal...
    assert approx == pytest.approx(full, rel=0.05)  # ...but near
    # merging tokens into one bucket can only lower an f-divergence (data processing)
    assert approx <= full + 1e-12


def test_topk_renormalises_low_precision_cache_and_handles_zero_leftover():
    s, te, mask = make_inputs(10)
    tk = topk_teacher(te, V)
    # bf16-rounded cache: buckets no longer sum to 1 exactly; divergence stays >= 0 and finite
    rounded = TopKTeacher(tk.logprobs.bfloat16(), tk.indices, tk.leftover.bfloat16())
    for kind in losses.DIVERGENCES:
        v, g = loss_and_grad(lambda x, kind=kind: divergence(kind, x, rounded, mask), s)
        assert v.item() > 0 and torch.isfinite(g).all()
        assert divergence(kind, te, rounded, mask).abs().item() < 1e-2


def test_topk_teacher_validation():
    with pytest.raises(ValueError, match="same shape"):
        TopKTeacher(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4, dtype=torch.long), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="leftover"):
        TopKTeacher(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(2))


# ----------------------------------------------------------------------------------------------
# Chunking, dtypes, edge cases
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("teacher_kind", ["full", "topk"])
@pytest.mark.parametrize(("kind", "kw"), CASES, ids=CASE_IDS)
def test_chunked_equals_unchunked(kind, kw, teacher_kind):
    s, te, mask = make_inputs(11, b=2, t=7)
    teacher = te if teacher_kind == "full" else topk_teacher(te, 5)
    ref, ref_grad = loss_and_grad(
        lambda x: divergence(kind, x, teacher, mask, chunk_size=None, **kw), s
    )
    for chunk in (1, 3, 1000):
        got, grad = loss_and_grad(
            lambda x, c=chunk: divergence(kind, x, teacher, mask, chunk_size=c, **kw), s
        )
        assert close(got, ref, tol=1e-12)
        assert close(grad, ref_grad, tol=1e-12)


@pytest.mark.parametrize(("kind", "kw"), CASES[::3], ids=CASE_IDS[::3])
def test_chunked_equals_unchunked_float32(kind, kw):
    s, te, mask = make_inputs(12, dtype=torch.float32, b=2, t=7)
    ref, ref_grad = loss_and_grad(lambda x: divergence(kind, x, te, mask, chunk_size=None, **kw), s)
    got, grad = loss_and_grad(lambda x: divergence(kind, x, te, mask, chunk_size=2, **kw), s)
    assert got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(grad, ref_grad, atol=1e-5, rtol=1e-5)
    # and float32 is close to the float64 reference
    want = ref_loss(kind, s, te, mask, **kw)
    assert abs(got.item() - want.item()) < 1e-5


def test_bfloat16_logits_give_float32_loss_with_finite_grads():
    s, te, mask = make_inputs(13, dtype=torch.bfloat16)
    for kind in losses.DIVERGENCES:
        v, g = loss_and_grad(lambda x, kind=kind: divergence(kind, x, te, mask), s)
        assert v.dtype == torch.float32
        assert g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all()


def test_teacher_with_minus_inf_logits_is_finite():
    # Padded vocabularies put -inf (probability 0) in some teacher logits.
    s, te, mask = make_inputs(14)
    te = te.clone()
    te[..., -3:] = float("-inf")
    for kind, kw in CASES:
        v, g = loss_and_grad(lambda x, kind=kind, kw=kw: divergence(kind, x, te, mask, **kw), s)
        assert torch.isfinite(v) and torch.isfinite(g).all(), kind
        want = ref_loss(kind, s, te, mask, **kw)
        if torch.isfinite(want):
            assert close(v, want), (kind, v, want)
        else:  # student mass where the teacher has none: a true infinity, reported as huge
            assert v.item() > 100, kind


def test_no_grad_and_empty_mask():
    s, te, mask = make_inputs(15)
    with torch.no_grad():
        assert close(forward_kl(s, te, mask), ref_loss("forward_kl", s, te, mask))
    empty = torch.zeros_like(mask)
    for kind in losses.DIVERGENCES:
        v, g = loss_and_grad(lambda x, kind=kind: divergence(kind, x, te, empty), s)
        assert v.item() == 0 and torch.all(g == 0)
    v, g = loss_and_grad(lambda x: cross_entropy(x, torch.zeros(B, T, dtype=torch.long), empty), s)
    assert v.item() == 0


def test_mask_none_means_all_rows():
    s, te, _ = make_inputs(16)
    ones = torch.ones(B, T, dtype=torch.bool)
    assert close(tvd(s, te, None), tvd(s, te, ones))


def test_dispatcher_and_validation():
    s, te, mask = make_inputs(17)
    for kind, kw in CASES:
        assert torch.equal(
            divergence(kind, s, te, mask, **kw), losses.DIVERGENCES[kind](s, te, mask, **kw)
        )
    with pytest.raises(ValueError, match="forward_kl.*jsd.*reverse_kl.*skew_forward_kl.*tvd"):
        divergence("kl", s, te, mask)
    with pytest.raises(ValueError, match="beta"):
        jsd(s, te, mask, beta=1.5)
    with pytest.raises(ValueError, match="alpha"):
        skew_forward_kl(s, te, mask, alpha=-0.1)
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(s, te, mask, temperature=0.0)
    with pytest.raises(ValueError, match="shape"):
        forward_kl(s, te[..., :-1], mask)
    with pytest.raises(ValueError, match="mask"):
        forward_kl(s, te, mask[:, :-1])
    with pytest.raises(TypeError):
        divergence("forward_kl", s, te, mask, beta=0.5)


# ----------------------------------------------------------------------------------------------
# Cross-entropy
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cross_entropy_matches_torch(dtype):
    s, _, mask = make_inputs(18, dtype=dtype, b=4, t=7)
    g = torch.Generator().manual_seed(18)
    labels = torch.randint(0, V, (4, 7), generator=g)
    labels_ignored = labels.masked_fill(~mask, -100)
    tol = 1e-10 if dtype == torch.float64 else 1e-5

    want, want_grad = loss_and_grad(
        lambda x: F.cross_entropy(x.reshape(-1, V), labels_ignored.reshape(-1), ignore_index=-100),
        s,
    )
    for chunk in (None, 1, 4):
        got, grad = loss_and_grad(
            lambda x, c=chunk: cross_entropy(x, labels_ignored, mask, chunk_size=c), s
        )
        assert torch.allclose(got.to(dtype), want, atol=tol, rtol=tol)
        assert torch.allclose(grad, want_grad, atol=tol, rtol=tol)
    n = int(mask.sum())
    halves = [
        cross_entropy(s[sl], labels[sl], mask[sl], num_tokens=n)
        for sl in (slice(0, 2), slice(2, 4))
    ]
    assert torch.allclose((halves[0] + halves[1]).to(dtype), want, atol=tol, rtol=tol)


# ----------------------------------------------------------------------------------------------
# Attention-map KL
# ----------------------------------------------------------------------------------------------


def make_attention(seed: int, b=2, h=2, t=5, layers=2, pad_first=True):
    """Per-layer causal attention probabilities (B, H, T, T); the first key of batch 1 padded."""
    g = torch.Generator().manual_seed(seed)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    allowed = causal.expand(b, h, t, t).clone()
    if pad_first:
        allowed[1, :, :, 0] = False
        allowed[1, :, 0, 0] = True  # keep row 0 valid
    out = []
    for _ in range(layers):
        scores = torch.randn(b, h, t, t, generator=g, dtype=torch.float64) * 2
        out.append(torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1))
    return out


def ref_attention_kl(s_attn, t_attn, qmask, layer_map):
    total, count = 0.0, 0
    for ls, lt in layer_map:
        s, t = s_attn[ls], t_attn[lt]
        hs, ht = s.shape[1], t.shape[1]
        r = ht // hs
        for b in range(s.shape[0]):
            for h in range(hs):
                tg = t[b, h * r : (h + 1) * r].mean(0)
                for i in range(s.shape[2]):
                    if not qmask[b, i]:
                        continue
                    kl = 0.0
                    for j in range(i + 1):
                        p, q = tg[i, j].item(), s[b, h, i, j].item()
                        if p > 0:
                            kl += p * math.log(p / q)
                    total += kl
                    count += 1
    return total / count


def test_attention_kl_zero_for_identical_and_matches_reference():
    s_attn = make_attention(20)
    t_attn = make_attention(21)
    qmask = torch.tensor([[1, 1, 0, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)
    lm = [(0, 0), (1, 1)]
    assert abs(attention_kl(s_attn, s_attn, qmask, layer_map=lm).item()) < 1e-12
    got = attention_kl(s_attn, t_attn, qmask, layer_map=lm, chunk_size=2)
    assert got.item() > 1e-3
    assert got.item() == pytest.approx(ref_attention_kl(s_attn, t_attn, qmask, lm), rel=1e-10)
    # chunking does not change the value; num_rows normalises like num_tokens
    assert close(attention_kl(s_attn, t_attn, qmask, layer_map=lm, chunk_size=None), got)
    n = int(qmask.sum())
    assert close(attention_kl(s_attn, t_attn, qmask, layer_map=lm, num_rows=2 * n), got / 2)


def test_attention_kl_gradient_and_mask():
    s_attn = [a.clone().requires_grad_(True) for a in make_attention(22)]
    t_attn = make_attention(23)
    qmask = torch.tensor([[1, 0, 1, 0, 1], [1, 1, 0, 0, 1]], dtype=torch.bool)
    loss = attention_kl(s_attn, t_attn, qmask, layer_map=[(0, 1), (1, 1)], chunk_size=3)
    loss.backward()
    for a in s_attn:
        assert torch.isfinite(a.grad).all()
        assert torch.all(a.grad.transpose(1, 2)[~qmask] == 0)  # masked query rows get no grad


def test_attention_kl_head_grouping():
    s_attn = make_attention(24, h=2)
    t_attn = make_attention(25, h=6)
    qmask = torch.ones(2, 5, dtype=torch.bool)
    got = attention_kl(s_attn, t_attn, qmask, layer_map=[(0, 0), (1, 1)])
    # teacher heads 0-2 -> student head 0, heads 3-5 -> student head 1
    grouped = [a.reshape(2, 2, 3, 5, 5).mean(2) for a in t_attn]
    assert close(got, attention_kl(s_attn, grouped, qmask, layer_map=[(0, 0), (1, 1)]))
    assert got.item() == pytest.approx(
        ref_attention_kl(s_attn, t_attn, qmask, [(0, 0), (1, 1)]), rel=1e-10
    )
    # a grouped teacher equal to the student gives 0
    same = [a.repeat_interleave(3, dim=1) for a in s_attn]
    assert abs(attention_kl(s_attn, same, qmask, layer_map=[(0, 0)]).item()) < 1e-12
    with pytest.raises(ValueError, match="multiple"):
        attention_kl(s_attn, make_attention(26, h=3), qmask, layer_map=[(0, 0)])
    with pytest.raises(ValueError, match="multiple"):
        attention_kl(make_attention(27, h=4), s_attn, qmask, layer_map=[(0, 0)])
    with pytest.raises(ValueError, match="out of range"):
        attention_kl(s_attn, t_attn, qmask, layer_map=[(0, 5)])


def test_uniform_layer_map():
    assert uniform_layer_map(4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert uniform_layer_map(3, 12) == [(0, 3), (1, 7), (2, 11)]
    assert uniform_layer_map(2, 4) == [(0, 1), (1, 3)]
    assert uniform_layer_map(4, 6) == [(0, 1), (1, 2), (2, 4), (3, 5)]  # 1.5 -> 2, 4.5 -> 5
    for ns in range(1, 9):
        for nt in range(1, 13):
            m = uniform_layer_map(ns, nt)
            assert [a for a, _ in m] == list(range(ns))
            assert m[-1] == (ns - 1, nt - 1)
            teachers = [b for _, b in m]
            assert teachers == sorted(teachers) and 0 <= teachers[0]
            if ns <= nt:
                assert len(set(teachers)) == ns  # no teacher layer used twice
    with pytest.raises(ValueError):
        uniform_layer_map(0, 3)


# ----------------------------------------------------------------------------------------------
# Hidden states
# ----------------------------------------------------------------------------------------------


def test_hidden_state_loss():
    g = torch.Generator().manual_seed(30)
    sh = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    th = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0]], dtype=torch.bool)
    proj = nn.Linear(3, 5, dtype=torch.float64)

    got = hidden_state_loss(sh, th, mask, proj, kind="mse")
    want = ((proj(sh) - th) ** 2).mean(-1)[mask].mean()
    assert close(got, want)
    got_cos = hidden_state_loss(sh, th, mask, proj, kind="cosine")
    ps, tt = proj(sh)[mask], th[mask]
    want_cos = (1 - (ps * tt).sum(-1) / (ps.norm(dim=-1) * tt.norm(dim=-1))).mean()
    assert close(got_cos, want_cos)

    # identical (resp. parallel) states give 0; gradients reach the projection
    assert abs(hidden_state_loss(th, th, mask, None).item()) < 1e-15
    assert abs(hidden_state_loss(2 * th, th, mask, nn.Identity(), kind="cosine").item()) < 1e-12
    got.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    # masked rows do not matter; num_tokens normalises
    th2 = th.clone()
    th2[~mask] = 100.0
    assert close(hidden_state_loss(sh, th2, mask, proj), got)
    assert close(hidden_state_loss(sh, th, mask, proj, num_tokens=10), got * int(mask.sum()) / 10)
    with pytest.raises(ValueError, match="kind"):
        hidden_state_loss(sh, th, mask, proj, kind="l1")
    with pytest.raises(ValueError, match="projection"):
        hidden_state_loss(sh, th, mask, None)


# ----------------------------------------------------------------------------------------------
# Sampled teacher (Random-Sampling KD): an unbiased forward-KL estimate
# ----------------------------------------------------------------------------------------------


def sampled_from(t_logits, mask, samples, temperature, seed):
    """A SampledTeacher of the masked rows of t_logits (B, T, V), all drawn with one generator."""
    g = torch.Generator().manual_seed(seed)
    per_example = [losses.sample_rows(t_logits[b][mask[b]], samples, temperature, g)
                   for b in range(t_logits.shape[0])]  # fmt: skip
    return losses.sampled_teacher(per_example, mask), per_example


def test_sample_rows_layout_entropy_and_seed():
    _, te, _ = make_inputs(30)
    rows = te[0]  # (T, V)
    drawn = losses.sample_rows(rows, 50, 2.0, torch.Generator().manual_seed(1))
    again = losses.sample_rows(rows, 50, 2.0, torch.Generator().manual_seed(1))
    assert torch.equal(drawn.ids, again.ids) and torch.equal(drawn.counts, again.counts)
    for r in range(T):
        lo, hi = int(drawn.offsets[r]), int(drawn.offsets[r + 1])
        ids = drawn.ids[lo:hi]
        assert (ids[1:] > ids[:-1]).all()  # distinct, ascending
        assert int(drawn.counts[lo:hi].sum()) == 50
    p = ref_softmax(rows, 2.0)  # the temperature is applied before sampling
    assert close(drawn.entropy, -(p * p.log()).sum(-1))


def test_sampled_estimate_is_exact_when_the_weights_are_the_teacher():
    """With q = p_T exactly (all ids, weights p_T) the estimate is the forward KL itself."""
    s, te, mask = make_inputs(31)
    p = ref_softmax(te, 1.5)
    teacher = losses.SampledTeacher(torch.arange(V).expand(B, T, V), p, -(p * p.log()).sum(-1))
    got, grad = loss_and_grad(losses.forward_kl, s, teacher, mask, temperature=1.5)
    want, want_grad = loss_and_grad(
        lambda x: ref_loss("forward_kl", x, te, mask, temperature=1.5), s
    )
    assert close(got, want) and close(grad, want_grad)


@pytest.mark.slow
def test_sampled_estimate_is_unbiased():
    """Mean over 600 seeds of the sampled forward KL (and its gradient) -> the full values.

    Tolerance: 4 standard errors of the mean (from the spread over seeds), so a bias larger than
    about 4 % of the KL here fails (an estimator that dropped the entropy or the temperature
    would be off by whole nats).
    """
    s, te, mask = make_inputs(32, v=9)
    full, full_grad = loss_and_grad(losses.forward_kl, s, te, mask, temperature=1.3)
    values, grads = [], []
    for seed in range(600):
        teacher, _ = sampled_from(te, mask, 6, 1.3, seed)
        value, grad = loss_and_grad(losses.forward_kl, s, teacher, mask, temperature=1.3)
        values.append(value)
        grads.append(grad)
    values, grads = torch.stack(values), torch.stack(grads)
    se = values.std() / math.sqrt(len(values))
    assert abs(values.mean() - full) < 4 * se, (float(values.mean()), float(full), float(se))
    assert float(se) < 0.01 * float(full)  # the test has the power to see a 4 % bias
    grad_se = grads.std(0) / math.sqrt(len(grads))
    assert ((grads.mean(0) - full_grad).abs() <= 4 * grad_se + 1e-12).float().mean() > 0.98


def test_sampled_teacher_refuses_divergences_that_need_the_whole_distribution():
    s, te, mask = make_inputs(33)
    teacher, _ = sampled_from(te, mask, 10, 1.0, 0)
    for kind, kw in CASES:
        if kind == "forward_kl" or (kind == "jsd" and kw["beta"] == 0.0):
            continue
        with pytest.raises(ValueError, match=r"teacher_source: online.*kd.cache.kind: topk"):
            divergence(kind, s, teacher, mask, **kw)


def test_sampled_teacher_padding_and_table():
    _, te, mask = make_inputs(34)
    teacher, per_example = sampled_from(te, mask, 7, 1.0, 0)
    assert teacher.indices.shape[-1] == max(
        int((r.offsets[1:] - r.offsets[:-1]).max()) for r in per_example if r.ids.numel()
    )
    torch.testing.assert_close(teacher.weights.sum(-1)[mask], torch.ones(int(mask.sum())))
    assert (teacher.weights[~mask] == 0).all()
    # One table: every public divergence is a row of it, with its parameter and default.
    assert set(losses.DIVERGENCES) == set(losses.DIVERGENCE_TABLE)
    assert [k for k, d in losses.DIVERGENCE_TABLE.items() if d.from_samples] == ["forward_kl"]
    assert losses.DIVERGENCE_TABLE["jsd"].param == "beta"
    assert jsd.__name__ == "jsd" and "Jensen-Shannon" in jsd.__doc__ and "num_tokens" in jsd.__doc__

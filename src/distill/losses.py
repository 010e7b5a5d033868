"""Loss functions for knowledge distillation: pure functions of logits, masks and hidden states.

Everything here is a plain function of tensors (no model, no optimiser, no global state), so each
loss can be unit-tested against a formula and reused by every training objective.

Papers behind the losses
------------------------
* Forward KL, the classic soft-label distillation loss (Hinton et al., 2015,
  https://arxiv.org/abs/1503.02531): ``KL(p_T || p_S)``; "mode covering".
* Reverse KL ``KL(p_S || p_T)``, "mode seeking": MiniLLM (Gu et al., 2023,
  https://arxiv.org/abs/2306.08543).
* Generalised Jensen-Shannon divergence interpolating between the two: GKD, "On-Policy
  Distillation of Language Models" (Agarwal et al., 2023, https://arxiv.org/abs/2306.13649),
  as implemented by TRL's ``GKDTrainer.generalized_jsd_loss``.
* Skew KL divergences ``KL(p_T || a p_T + (1-a) p_S)`` and ``KL(p_S || a p_S + (1-a) p_T)``:
  DistiLLM (Ko et al., 2024, https://arxiv.org/abs/2402.03898).
* Total variation distance: used as a bounded divergence for KD, e.g. in "f-Divergence
  Minimization for Sequence-Level Knowledge Distillation" (Wen et al., 2023,
  https://arxiv.org/abs/2307.15190).
* Attention-map and hidden-state distillation: KD-DAE (arXiv 2406.19112,
  https://arxiv.org/abs/2406.19112); MiniLM (https://arxiv.org/abs/2002.10957) and TinyBERT
  (https://arxiv.org/abs/1909.10351) introduced the attention-KL and projected-hidden-state terms.
* DDK, "Distilling Domain Knowledge for Efficient Large Language Models" (Liu et al., 2024,
  https://arxiv.org/abs/2407.16154) re-weights the data by domain; it uses the token-level
  divergences defined here unchanged.

Conventions used by every function
----------------------------------
* ``B`` batch, ``T`` sequence length, ``V`` vocabulary size, ``k`` number of cached teacher
  tokens, ``N`` number of selected (masked-in) rows.
* Row ``j`` of a logits tensor ``(B, T, V)`` predicts token ``j + 1``. ``mask`` ``(B, T)``
  (bool or 0/1) marks the rows whose *next* token is a training target (a response token).
  Losses only ever see logits and masks; the caller does the shifting.
* Every token-level loss returns ``sum over masked rows of the per-token value / num_tokens``.
  ``num_tokens`` is the number of target tokens in the whole gradient-accumulation window
  summed over all processes (the caller computes it, e.g. with an all-reduce); with that
  normaliser the gradients of micro-batches simply add up to the gradient of the full batch.
  ``num_tokens=None`` means ``mask.sum()`` of this call (a plain mean).
* All divergences are *true* divergences: 0 when the student equals the teacher (never the
  soft cross-entropy, whose minimum is the teacher's entropy).
* Divergences live in ONE table, `DIVERGENCE_TABLE` (per-row function, its beta/alpha
  parameter, whether a sampled teacher supports it); the public functions (`forward_kl`, `jsd`,
  ...) are generated from it and share one argument list.
* Sparse teachers and their bias. A `TopKTeacher` (top-k cache) is compared on k + 1 buckets:
  merging the tail into one bucket can only lower a divergence, so every top-k estimate is
  biased low (on the embedded default, held-out forward KL of the initial student: -5 % at
  k = 32, -10 % at k = 13; see the cache manifest's `quality`), and its gradient ignores the
  tail's shape. A `SampledTeacher` (sampled cache, Random-Sampling KD) gives an unbiased
  estimate of the forward KL and its gradient (tests/test_losses.py checks the mean over seeds
  against the full KL); divergences that are not linear in ``p_T`` (reverse KL, JSD, skew KLs,
  TVD) have no unbiased estimate from a sample and are refused (`SAMPLED_REFUSAL`).
* Memory: the full ``(B*T, V)`` fp32 probability tensors of a large vocabulary do not fit next to
  a model, so the masked rows are selected first (in the model's dtype) and processed
  ``chunk_size`` rows at a time, upcasting only one chunk to fp32. Each chunk runs under
  ``torch.utils.checkpoint`` (non-reentrant) so the backward pass keeps only the chunk inputs and
  recomputes one chunk's intermediates at a time. Chunking changes no value or gradient (beyond
  float rounding).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "DEFAULT_ATTENTION_CHUNK_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "DIVERGENCES",
    "DIVERGENCE_TABLE",
    "SampledRows",
    "SampledTeacher",
    "TopKTeacher",
    "attention_kl",
    "cross_entropy",
    "divergence",
    "forward_kl",
    "hidden_state_loss",
    "jsd",
    "reverse_kl",
    "sample_rows",
    "sampled_teacher",
    "skew_forward_kl",
    "skew_reverse_kl",
    "topk_teacher",
    "tvd",
    "uniform_layer_map",
]

#: Rows of logits per chunk. One fp32 chunk of a 150k vocabulary is 1024 * 150k * 4 B = 0.6 GB;
#: a divergence holds a few such tensors at its peak.
DEFAULT_CHUNK_SIZE = 1024

#: Query rows per chunk in `attention_kl`; one chunk holds rows * heads * T probabilities.
DEFAULT_ATTENTION_CHUNK_SIZE = 256

# Finite stand-in for log(0). Zero probabilities occur (a top-k cache with nothing left over, the
# student's "rest" bucket when k = V, -inf logits in a padded vocabulary); with a true -inf the
# terms 0 * log 0 and their gradients become NaN. exp(-1e4) is exactly 0 in every float format,
# so the floor changes no representable probability.
_LOG_ZERO = -1.0e4

# --------------------------------------------------------------------------------------------
# Teacher distributions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TopKTeacher:
    """A teacher distribution stored as its top-k tokens plus the mass left over.

    This is what the teacher cache holds: storing all ``V`` log-probs per token is far too large.

    Attributes:
        logprobs: ``(B, T, k)`` float, the teacher's log-probabilities of its top-k tokens, already
            at the temperature the cache was made with (losses do not rescale them).
        indices: ``(B, T, k)`` int64, the vocabulary ids of those tokens (distinct per row).
        leftover: ``(B, T)`` float, the probability mass outside the top-k,
            ``1 - sum(exp(logprobs))`` clamped to ``>= 0``.

    Losses compare a student with a `TopKTeacher` over ``k + 1`` buckets: the ``k`` cached tokens
    and one "rest" bucket holding everything else. Merging tokens can only lower a divergence
    (data-processing inequality), and with ``k = V`` the value equals the full-distribution one.
    """

    logprobs: Tensor
    indices: Tensor
    leftover: Tensor

    def __post_init__(self) -> None:
        if self.logprobs.shape != self.indices.shape or self.logprobs.dim() < 1:
            raise ValueError(
                f"TopKTeacher: logprobs {tuple(self.logprobs.shape)} and indices "
                f"{tuple(self.indices.shape)} must have the same shape (B, T, k)"
            )
        if self.leftover.shape != self.logprobs.shape[:-1]:
            raise ValueError(
                f"TopKTeacher: leftover {tuple(self.leftover.shape)} must have shape "
                f"{tuple(self.logprobs.shape[:-1])} (the logprobs shape without k)"
            )
        if self.indices.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"TopKTeacher: indices must be int64, got {self.indices.dtype}")

    @property
    def k(self) -> int:
        """Number of cached tokens per row."""
        return self.logprobs.shape[-1]

    def to(self, device: torch.device | str) -> TopKTeacher:
        """The same teacher with every tensor on `device`."""
        return TopKTeacher(
            self.logprobs.to(device), self.indices.to(device), self.leftover.to(device)
        )


def topk_teacher(
    logits: Tensor, k: int, temperature: float = 1.0, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> TopKTeacher:
    """Build a `TopKTeacher` from full teacher logits (used by the teacher-cache writer).

    Args:
        logits: ``(B, T, V)`` teacher logits.
        k: number of tokens to keep per row, ``1 <= k <= V``.
        temperature: the logits are divided by it before the softmax; the cached log-probs are
            at this temperature from then on.
        chunk_size: rows processed at once (bounds the fp32 ``(rows, V)`` working set).

    Returns:
        `TopKTeacher` with ``logprobs`` ``(B, T, k)`` (float32, float64 for float64 input; sorted
        descending), ``indices`` ``(B, T, k)`` int64 and ``leftover`` ``(B, T)``.

    The leftover is computed as the logsumexp of the tokens *outside* the top-k rather than as
    ``1 - sum(exp(logprobs))``: the same number mathematically, but without the cancellation that
    makes the subtraction inaccurate when the leftover is small, and exactly 0 when ``k = V``.
    The result is a fixed target, so it is computed without autograd.
    """
    if logits.dim() != 3:
        raise ValueError(f"topk_teacher: logits must be (B, T, V), got {tuple(logits.shape)}")
    B, T, V = logits.shape
    if not 1 <= k <= V:
        raise ValueError(f"topk_teacher: k must be in [1, V={V}], got {k}")
    _check_temperature(temperature)
    dtype = _compute_dtype(logits.dtype)
    flat = logits.reshape(B * T, V)
    chunk_size = _check_chunk_size(chunk_size) or max(B * T, 1)
    lps, idxs, lefts = [], [], []
    with torch.no_grad():
        for start in range(0, B * T, chunk_size):
            lp = torch.log_softmax(flat[start : start + chunk_size].to(dtype) / temperature, -1)
            top_lp, top_idx = lp.topk(k, dim=-1)
            rest = lp.scatter(-1, top_idx, float("-inf"))  # -inf everywhere when k = V
            lefts.append(torch.logsumexp(rest, -1).exp().clamp(0.0, 1.0))
            lps.append(top_lp)
            idxs.append(top_idx)
    if B * T == 0:
        empty = logits.new_empty((B, T, k), dtype=dtype)
        return TopKTeacher(
            empty, torch.empty((B, T, k), dtype=torch.int64, device=logits.device), empty[..., 0]
        )
    return TopKTeacher(
        torch.cat(lps).reshape(B, T, k),
        torch.cat(idxs).reshape(B, T, k),
        torch.cat(lefts).reshape(B, T),
    )


@dataclass(frozen=True, eq=False)
class SampledTeacher:
    """A teacher distribution stored as N tokens sampled from it, with the teacher's entropy.

    Random-Sampling KD (arXiv 2503.16870): per row, N tokens are drawn from ``p_T`` (at the
    cache's temperature) with replacement; the distinct ids and their counts ``c`` are kept.
    The empirical distribution ``q = c / N`` is an unbiased estimate of ``p_T``, so

        KL(p_T || p_S) = -H(p_T) - E_{p_T}[log p_S]  is estimated by  -H(p_T) - sum_j q_j log p_S(j)

    without bias in value and in gradient (``p_S - q`` estimates ``p_S - p_T``). Only
    divergences that are linear in ``p_T`` given the student can be estimated this way: forward
    KL (and the soft cross-entropy, which differs from it by the constant ``H(p_T)``).

    Attributes:
        indices: ``(B, T, m)`` int64 distinct sampled ids per row; padding slots hold id 0.
        weights: ``(B, T, m)`` float, ``count / N`` per id; 0 in padding slots (rows sum to 1).
        entropy: ``(B, T)`` float, ``H(p_T)`` in nats at the cache's temperature.
    """

    indices: Tensor
    weights: Tensor
    entropy: Tensor

    def __post_init__(self) -> None:
        if self.indices.shape != self.weights.shape or self.indices.dim() < 1:
            raise ValueError(
                f"SampledTeacher: indices {tuple(self.indices.shape)} and weights "
                f"{tuple(self.weights.shape)} must have the same shape (B, T, m)"
            )
        if self.entropy.shape != self.indices.shape[:-1]:
            raise ValueError(
                f"SampledTeacher: entropy {tuple(self.entropy.shape)} must have shape "
                f"{tuple(self.indices.shape[:-1])}"
            )

    @property
    def k(self) -> int:
        """Slots per row (the most distinct ids of any row in this batch)."""
        return self.indices.shape[-1]

    def to(self, device: torch.device | str) -> SampledTeacher:
        return SampledTeacher(
            self.indices.to(device), self.weights.to(device), self.entropy.to(device)
        )


@dataclass(frozen=True)
class SampledRows:
    """Sampled teacher rows in the ragged layout of the cache (no padding).

    Row ``r`` owns ``ids[offsets[r]:offsets[r + 1]]`` (ascending, distinct) and their counts.
    ``ids`` ``(M,)`` int64, ``counts`` ``(M,)`` int64, ``offsets`` ``(n + 1,)`` int64,
    ``entropy`` ``(n,)`` float32/64, ``samples`` the N every row was drawn with.
    """

    ids: Tensor
    counts: Tensor
    offsets: Tensor
    entropy: Tensor
    samples: int


def sample_rows(
    logits: Tensor, samples: int, temperature: float, generator: torch.Generator
) -> SampledRows:
    """Draw `samples` tokens with replacement from each row of ``softmax(logits / temperature)``.

    Args:
        logits: ``(n, V)`` teacher logits of the rows to store.
        samples: N >= 1 draws per row.
        temperature: applied before sampling, so the cache holds the tempered distribution.
        generator: a CPU generator; the draws happen on the CPU so that one seed gives the same
            cache on every device (torch's CUDA and CPU samplers differ).

    Returns:
        `SampledRows` of the n rows; entropy in float64 for float64 logits, else float32.
    """
    if logits.dim() != 2:
        raise ValueError(f"sample_rows: logits must be (n, V), got {tuple(logits.shape)}")
    if samples < 1:
        raise ValueError(f"sample_rows: samples must be >= 1, got {samples}")
    _check_temperature(temperature)
    n, vocab = logits.shape
    with torch.no_grad():
        log_p = torch.log_softmax(logits.to(_compute_dtype(logits.dtype)).cpu() / temperature, -1)
        entropy = -(log_p.exp() * log_p.clamp_min(_LOG_ZERO)).sum(-1)
        if n == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return SampledRows(empty, empty, torch.zeros(1, dtype=torch.int64), entropy, samples)
        drawn = torch.multinomial(log_p.exp(), samples, replacement=True, generator=generator)
        # One key per (row, id): unique() sorts by row, then id, and counts the repeats.
        row = torch.arange(n).unsqueeze(-1)
        keys, counts = torch.unique((row * vocab + drawn).reshape(-1), return_counts=True)
        per_row = torch.bincount(keys // vocab, minlength=n)
    offsets = torch.cat([per_row.new_zeros(1), per_row.cumsum(0)])
    return SampledRows(keys % vocab, counts, offsets, entropy, samples)


def sampled_teacher(rows_per_example: Sequence[SampledRows], target_mask: Tensor) -> SampledTeacher:
    """Scatter each example's ragged sampled rows to its target positions: a (B, T, m) teacher.

    Args:
        rows_per_example: for each of the B examples the `SampledRows` of its target rows, with
            n_b = target_mask[b].sum() rows.
        target_mask: ``(B, T)`` bool.

    Returns:
        `SampledTeacher` on the CPU with m = the most distinct ids of any row; non-target rows
        and padding slots hold weight 0 (every loss masks the non-target rows out).
    """
    target_mask = target_mask.bool().cpu()
    B, T = target_mask.shape
    lengths = [r.offsets[1:] - r.offsets[:-1] for r in rows_per_example]
    m = max([int(x.max()) for x in lengths if x.numel()] + [1])
    indices = torch.zeros((B, T, m), dtype=torch.int64)
    weights = torch.zeros((B, T, m), dtype=torch.float32)
    entropy = torch.zeros((B, T), dtype=torch.float32)
    for b, rows in enumerate(rows_per_example):
        positions = target_mask[b].nonzero().squeeze(-1)
        row_of_slot = torch.repeat_interleave(torch.arange(len(positions)), lengths[b])
        slot = torch.arange(rows.ids.numel()) - rows.offsets[row_of_slot]
        indices[b, positions[row_of_slot], slot] = rows.ids.long()
        weights[b, positions[row_of_slot], slot] = rows.counts.float() / rows.samples
        entropy[b, positions] = rows.entropy.float()
    return SampledTeacher(indices, weights, entropy)


# --------------------------------------------------------------------------------------------
# Per-token divergences on log-probabilities
#
# Each takes the student's and the teacher's log-probabilities over the same buckets, shape
# (n, K) (K = V for a full teacher, K = k + 1 for a top-k teacher), and returns the per-row
# divergence (n,). Log-probabilities are floored at _LOG_ZERO, so exp() of a "zero" is exactly 0
# and every p * (log p - log q) term with p = 0 vanishes.
# --------------------------------------------------------------------------------------------


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row: sum_i p_i (log p_i - log q_i)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _log_mixture(w: float, log_p: Tensor, log_q: Tensor) -> Tensor:
    """log(w p + (1 - w) q), computed in log space (no underflow for tiny probabilities)."""
    if w == 0.0:
        return log_q
    if w == 1.0:
        return log_p
    return torch.logaddexp(log_p + math.log(w), log_q + math.log1p(-w))


def _forward_kl_rows(s: Tensor, t: Tensor) -> Tensor:
    return _kl_rows(t, s)


def _reverse_kl_rows(s: Tensor, t: Tensor) -> Tensor:
    return _kl_rows(s, t)


def _jsd_rows(s: Tensor, t: Tensor, *, beta: float) -> Tensor:
    # Endpoints follow TRL: beta = 0 is forward KL, beta = 1 is reverse KL (see `jsd`).
    if beta == 0.0:
        return _kl_rows(t, s)
    if beta == 1.0:
        return _kl_rows(s, t)
    m = _log_mixture(beta, t, s)  # M = beta * p_T + (1 - beta) * p_S
    return beta * _kl_rows(t, m) + (1.0 - beta) * _kl_rows(s, m)


def _skew_forward_kl_rows(s: Tensor, t: Tensor, *, alpha: float) -> Tensor:
    return _kl_rows(t, _log_mixture(alpha, t, s))  # KL(p_T || a p_T + (1 - a) p_S)


def _skew_reverse_kl_rows(s: Tensor, t: Tensor, *, alpha: float) -> Tensor:
    return _kl_rows(s, _log_mixture(alpha, s, t))  # KL(p_S || a p_S + (1 - a) p_T)


def _tvd_rows(s: Tensor, t: Tensor) -> Tensor:
    return 0.5 * (t.exp() - s.exp()).abs().sum(-1)


# --------------------------------------------------------------------------------------------
# Shared machinery: validation, row selection, chunking, normalisation
# --------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (tests, reference runs); anything narrower is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_chunk_size(chunk_size: int | None) -> int | None:
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None (one chunk), got {chunk_size}")
    return chunk_size


def _check_mask(mask: Tensor | None, shape: torch.Size, what: str) -> Tensor | None:
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(shape)} ({what})")
    return mask.bool()


def _select_rows(x: Tensor, mask: Tensor | None) -> Tensor:
    """Rows of `x` ``(B, T, ...)`` where `mask` ``(B, T)`` is true -> ``(N, ...)``.

    Selecting before any upcast keeps the copy in the model's dtype; unmasked rows (prompt,
    padding) never enter the fp32 computation.
    """
    if mask is None:
        return x.reshape(-1, *x.shape[2:])
    return x[mask]


def _normalise(total: Tensor, count: int, num_tokens: int | float | Tensor | None) -> Tensor:
    """total / num_tokens (or / count when num_tokens is None)."""
    if num_tokens is None:
        return total / count
    if isinstance(num_tokens, Tensor):
        return total / num_tokens.to(device=total.device, dtype=total.dtype)
    if not num_tokens > 0:
        raise ValueError(f"num_tokens must be > 0, got {num_tokens}")
    return total / num_tokens


def _zero_like_graph(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A 0 that is still connected to `x`'s graph, so backward() works on an empty selection.

    (Summing an empty slice avoids 0 * x, which would be NaN if x held an inf.)
    """
    return x.reshape(-1)[:0].sum().to(dtype)


def _chunked_sum(fn: Callable[..., Tensor], tensors: Sequence[Tensor], chunk_size: int | None):
    """sum over chunks of fn(*chunk), each chunk ``chunk_size`` rows of every tensor in `tensors`.

    Under autograd each chunk runs inside a non-reentrant checkpoint: the forward keeps only the
    chunk inputs (views of the already-selected rows), and backward recomputes the chunk's fp32
    intermediates one chunk at a time. Without autograd the checkpoint would only cost time.
    """
    n = tensors[0].shape[0]
    step = n if chunk_size is None else chunk_size
    use_ckpt = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    total = None
    for start in range(0, n, step):
        chunk = [t[start : start + step] for t in tensors]
        if use_ckpt:
            part = checkpoint(fn, *chunk, use_reentrant=False, preserve_rng_state=False)
        else:
            part = fn(*chunk)
        total = part if total is None else total + part
    return total


def _full_chunk(rows_fn, temperature: float, dtype: torch.dtype, s: Tensor, t: Tensor) -> Tensor:
    """Sum of rows_fn over one chunk against a full teacher: s, t ``(n, V)`` logits."""
    s = s.to(dtype)
    t = t.to(dtype)
    if temperature != 1.0:
        s = s / temperature
        t = t / temperature
    log_s = torch.log_softmax(s, -1).clamp_min(_LOG_ZERO)
    log_t = torch.log_softmax(t, -1).clamp_min(_LOG_ZERO)
    return rows_fn(log_s, log_t).sum()


def _topk_chunk(
    rows_fn,
    temperature: float,
    dtype: torch.dtype,
    s: Tensor,
    t_logprobs: Tensor,
    t_indices: Tensor,
    t_leftover: Tensor,
) -> Tensor:
    """Sum of rows_fn over one chunk against a top-k teacher, on k + 1 buckets.

    s ``(n, V)`` student logits; t_logprobs, t_indices ``(n, k)``; t_leftover ``(n,)``.
    """
    s = s.to(dtype)
    if temperature != 1.0:
        s = s / temperature  # only the student: the cache already holds tempered teacher log-probs
    s_lse = torch.logsumexp(s, -1, keepdim=True)
    s_top = s.gather(-1, t_indices.long()) - s_lse  # (n, k)
    # Student "rest" mass as a logsumexp over the tokens outside the top-k: unlike
    # log1p(-sum(p_top)) it does not cancel catastrophically when the rest is tiny, and it is
    # exactly "zero" when k = V. The fill is finite (not -inf) so that a row with every token
    # in the top-k gets a finite logsumexp and finite (zero) gradients.
    in_top = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, t_indices.long(), True)
    s_rest = torch.logsumexp(s.masked_fill(in_top, torch.finfo(dtype).min), -1, keepdim=True)
    log_s = torch.cat([s_top, s_rest - s_lse], -1).clamp_min(_LOG_ZERO)

    t_top = t_logprobs.to(dtype)
    t_rest = torch.log(t_leftover.to(dtype).clamp_min(0.0)).unsqueeze(-1)  # log 0 = -inf here...
    log_t = torch.cat([t_top, t_rest], -1).clamp_min(_LOG_ZERO)  # ...and floored here
    # Renormalise the k + 1 teacher buckets: a cache stored in bf16/fp16 no longer sums to exactly
    # 1, and a divergence is only >= 0 (and 0 at equality) between normalised distributions.
    log_t = (log_t - torch.logsumexp(log_t, -1, keepdim=True)).clamp_min(_LOG_ZERO)
    return rows_fn(log_s, log_t).sum()


def _sampled_chunk(
    temperature: float,
    dtype: torch.dtype,
    s: Tensor,
    t_indices: Tensor,
    t_weights: Tensor,
    t_entropy: Tensor,
) -> Tensor:
    """Sum over one chunk of the sampled forward-KL estimate ``-H - sum_j q_j log p_S(j)``.

    s ``(n, V)`` student logits; t_indices, t_weights ``(n, m)``; t_entropy ``(n,)``.
    """
    s = s.to(dtype)
    if temperature != 1.0:
        s = s / temperature  # the cache was sampled from the tempered teacher
    log_s = s.gather(-1, t_indices.long()) - torch.logsumexp(s, -1, keepdim=True)
    cross = -(t_weights.to(dtype) * log_s.clamp_min(_LOG_ZERO)).sum(-1)
    return (cross - t_entropy.to(dtype)).sum()


def teacher_rows(
    teacher: Tensor | TopKTeacher | SampledTeacher,
    mask: Tensor | None,
    student_shape: torch.Size,
    name: str,
    rows_fn: Callable[[Tensor, Tensor], Tensor],
    temperature: float,
    dtype: torch.dtype,
) -> tuple[Callable[..., Tensor], list[Tensor]]:
    """The chunk function of divergence `name` against `teacher`, and the teacher's masked rows.

    ``chunk_fn(student_rows (n, V), *teacher_rows) -> scalar sum`` over the n rows; the teacher
    rows are the masked rows of each teacher tensor, in the order `chunk_fn` takes them. Shared by
    the logits path here and the fused hidden-state path (distill.fused_kd).
    """
    rows = functools.partial(_select_rows, mask=mask)
    if isinstance(teacher, TopKTeacher):
        if teacher.logprobs.shape[:2] != student_shape[:2]:
            raise ValueError(
                f"TopKTeacher rows {tuple(teacher.logprobs.shape[:2])} do not match "
                f"student rows {tuple(student_shape[:2])}"
            )
        if teacher.k > student_shape[-1]:
            raise ValueError(f"TopKTeacher has k={teacher.k} > V={student_shape[-1]}")
        tensors = [rows(teacher.logprobs), rows(teacher.indices), rows(teacher.leftover)]
        return functools.partial(_topk_chunk, rows_fn, temperature, dtype), tensors
    if isinstance(teacher, SampledTeacher):
        if not DIVERGENCE_TABLE[name].from_samples:
            raise ValueError(SAMPLED_REFUSAL.format(name=name))
        if teacher.indices.shape[:2] != student_shape[:2]:
            raise ValueError(
                f"SampledTeacher rows {tuple(teacher.indices.shape[:2])} do not match "
                f"student rows {tuple(student_shape[:2])}"
            )
        tensors = [rows(teacher.indices), rows(teacher.weights), rows(teacher.entropy)]
        return functools.partial(_sampled_chunk, temperature, dtype), tensors
    if isinstance(teacher, Tensor):
        if teacher.shape != student_shape:
            raise ValueError(
                f"teacher logits {tuple(teacher.shape)} must have the student's shape "
                f"{tuple(student_shape)} (same tokenizer and vocabulary size)"
            )
        return functools.partial(_full_chunk, rows_fn, temperature, dtype), [rows(teacher)]
    raise TypeError(
        f"teacher must be logits, a TopKTeacher or a SampledTeacher, got {type(teacher)}"
    )


def _token_divergence(
    name: str,
    rows_fn: Callable[[Tensor, Tensor], Tensor],
    student_logits: Tensor,
    teacher: Tensor | TopKTeacher | SampledTeacher,
    mask: Tensor | None,
    *,
    temperature: float,
    scale_by_t2: bool,
    num_tokens: int | float | Tensor | None,
    chunk_size: int | None,
) -> Tensor:
    """Select masked rows, sum the chunk function chunk by chunk, normalise, optionally T^2."""
    if student_logits.dim() != 3:
        raise ValueError(
            f"student_logits must be (B, T, V), got shape {tuple(student_logits.shape)}"
        )
    _check_temperature(temperature)
    _check_chunk_size(chunk_size)
    mask = _check_mask(mask, student_logits.shape[:2], "student_logits (B, T)")
    dtype = _compute_dtype(student_logits.dtype)
    fn, tensors = teacher_rows(
        teacher, mask, student_logits.shape, name, rows_fn, temperature, dtype
    )
    s_rows = _select_rows(student_logits, mask)
    n = s_rows.shape[0]
    if n == 0:
        return _zero_like_graph(student_logits, dtype)
    total = _chunked_sum(fn, [s_rows, *tensors], chunk_size)
    return finish_token_loss(total, n, num_tokens, temperature, scale_by_t2)


def finish_token_loss(
    total: Tensor, n: int, num_tokens, temperature: float, scale_by_t2: bool
) -> Tensor:
    """total / num_tokens, times T^2 when `scale_by_t2` (shared with distill.fused_kd)."""
    loss = _normalise(total, n, num_tokens)
    if scale_by_t2:
        # Gradients of a tempered softmax shrink like 1/T^2; Hinton et al. rescale to compensate.
        loss = loss * temperature**2
    return loss


# --------------------------------------------------------------------------------------------
# The table of token-level divergences
# --------------------------------------------------------------------------------------------

_COMMON_ARGS = """
    Args:
        student_logits: ``(B, T, V)`` student logits (any float dtype; chunks are upcast to
            fp32, float64 stays float64).
        teacher: ``(B, T, V)`` teacher logits, a `TopKTeacher` (compared on k + 1 buckets) or a
            `SampledTeacher` (forward KL only: an unbiased estimate, see `SampledTeacher`).
        mask: ``(B, T)`` bool/0-1, true for rows whose next token is a target; None = all rows.
        temperature: divides the student logits and full teacher logits before the softmax. A
            `TopKTeacher` / `SampledTeacher` is already at the temperature its cache was made
            with, so only the student is divided.
        scale_by_t2: multiply the result by ``temperature ** 2``.
        num_tokens: normaliser, the number of target tokens in the whole gradient-accumulation
            window over all processes (int or tensor); None = ``mask.sum()`` of this call.
        chunk_size: masked rows per checkpointed chunk; None = all rows in one chunk.

    Returns:
        Scalar tensor (fp32, or fp64 for fp64 logits):
        ``sum over masked rows of the per-token divergence / num_tokens``.
"""

SAMPLED_REFUSAL = (
    "divergence `{name}` needs the teacher's whole distribution, and a sampled cache holds only "
    "an unbiased sample of it: an estimate of `{name}` from the sample would be biased (it is "
    "not linear in the teacher's probabilities), so it is refused rather than silently wrong. "
    "Fix: use `divergence: forward_kl` with the sampled cache, or keep `{name}` and set "
    "`teacher_source: online` (the teacher runs at every step) or `kd.cache.kind: topk` (top-k "
    "buckets, biased low but bounded; see docs of distill.losses)."
)


@dataclass(frozen=True)
class Divergence:
    """One row of the divergence table.

    rows: ``(log_s (n, K), log_t (n, K), **param) -> (n,)`` per-row divergence on K buckets.
    param: the name of its one extra parameter (``beta``/``alpha``) or None; default: its value
    when not given. from_samples: estimable without bias from a `SampledTeacher`.
    """

    rows: Callable[..., Tensor]
    summary: str
    param: str | None = None
    default: float | None = None
    from_samples: bool = False

    def bind(self, name: str, given: dict) -> Callable[[Tensor, Tensor], Tensor]:
        """rows with its parameter fixed; TypeError/ValueError for a wrong keyword or value."""
        unknown = set(given) - {self.param}
        if unknown:
            raise TypeError(f"{name}() got unexpected keyword argument(s) {sorted(unknown)}")
        if self.param is None:
            return self.rows
        value = float(given.get(self.param, self.default))
        _check_unit(self.param, value)
        return functools.partial(self.rows, **{self.param: value})


DIVERGENCE_TABLE: dict[str, Divergence] = {
    "forward_kl": Divergence(
        _forward_kl_rows,
        """Forward KL ``KL(p_T || p_S) = sum_v p_T(v) (log p_T(v) - log p_S(v))`` per token.

    Mode covering: the student is pushed to put mass wherever the teacher does. The only
    divergence a `SampledTeacher` supports (linear in ``p_T``, so the sample estimates it
    without bias).""",
        from_samples=True,
    ),
    "reverse_kl": Divergence(
        _reverse_kl_rows,
        """Reverse KL ``KL(p_S || p_T) = sum_v p_S(v) (log p_S(v) - log p_T(v))`` per token.

    Mode seeking (MiniLLM, GKD): the student is punished for mass where the teacher has little,
    which suits a small student that cannot cover every teacher mode.""",
    ),
    "jsd": Divergence(
        _jsd_rows,
        """Generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2023, Eq. 1), TRL's way.

    For ``0 < beta < 1``, with the mixture ``M = beta * p_T + (1 - beta) * p_S``::

        JSD_beta = beta * KL(p_T || M) + (1 - beta) * KL(p_S || M)

    (``beta = 0.5`` is the ordinary Jensen-Shannon divergence.) At the endpoints this formula
    tends to 0, so, exactly like TRL's ``GKDTrainer.generalized_jsd_loss``, ``beta = 0`` is
    forward KL and ``beta = 1`` reverse KL (the limits of ``JSD_beta / beta`` resp.
    ``JSD_beta / (1 - beta)``): the loss is discontinuous at the endpoints, and for beta close to
    0 or 1 its value and gradient are about ``beta`` resp. ``1 - beta`` times the KL.

    Extra arg:
        beta: interpolation weight in ``[0, 1]`` (default 0.5).""",
        param="beta",
        default=0.5,
    ),
    "skew_forward_kl": Divergence(
        _skew_forward_kl_rows,
        """Skew forward KL (DistiLLM): ``KL(p_T || alpha * p_T + (1 - alpha) * p_S)`` per token.

    Mixing some teacher into the student side keeps the log bounded where the student has almost
    no mass, which stabilises training. ``alpha = 0`` is `forward_kl`; ``alpha = 1`` gives 0.

    Extra arg:
        alpha: skew weight in ``[0, 1]`` (DistiLLM uses 0.1, the default).""",
        param="alpha",
        default=0.1,
    ),
    "skew_reverse_kl": Divergence(
        _skew_reverse_kl_rows,
        """Skew reverse KL (DistiLLM): ``KL(p_S || alpha * p_S + (1 - alpha) * p_T)`` per token.

    ``alpha = 0`` is `reverse_kl`; ``alpha = 1`` gives 0.

    Extra arg:
        alpha: skew weight in ``[0, 1]`` (DistiLLM uses 0.1, the default).""",
        param="alpha",
        default=0.1,
    ),
    "tvd": Divergence(
        _tvd_rows,
        """Total variation distance ``0.5 * sum_v |p_T(v) - p_S(v)|`` per token (in [0, 1]).""",
    ),
}


def _public_divergence(name: str) -> Callable[..., Tensor]:
    """The public function of table row `name` (same arguments for every divergence)."""
    spec = DIVERGENCE_TABLE[name]

    def loss(
        student_logits: Tensor,
        teacher: Tensor | TopKTeacher | SampledTeacher,
        mask: Tensor | None,
        *,
        temperature: float = 1.0,
        scale_by_t2: bool = False,
        num_tokens: int | float | Tensor | None = None,
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
        **param: float,
    ) -> Tensor:
        return _token_divergence(
            name, spec.bind(name, param), student_logits, teacher, mask,
            temperature=temperature, scale_by_t2=scale_by_t2, num_tokens=num_tokens,
            chunk_size=chunk_size,
        )  # fmt: skip

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = spec.summary + "\n" + _COMMON_ARGS
    return loss


forward_kl = _public_divergence("forward_kl")
reverse_kl = _public_divergence("reverse_kl")
jsd = _public_divergence("jsd")
skew_forward_kl = _public_divergence("skew_forward_kl")
skew_reverse_kl = _public_divergence("skew_reverse_kl")
tvd = _public_divergence("tvd")

#: Name -> divergence function; the names are the values accepted by `divergence`.
DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "skew_forward_kl": skew_forward_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "tvd": tvd,
}


def divergence(
    kind: str,
    student_logits: Tensor,
    teacher: Tensor | TopKTeacher | SampledTeacher,
    mask: Tensor | None,
    **kw,
) -> Tensor:
    """Call the divergence named `kind` (a key of `DIVERGENCES`) with the keyword args `kw`.

    Example: ``divergence("jsd", logits, teacher, mask, beta=0.5, num_tokens=n)``.
    ``beta`` is only accepted by ``"jsd"``, ``alpha`` only by the skew divergences.
    """
    return DIVERGENCES[check_divergence_name(kind)](student_logits, teacher, mask, **kw)


def check_divergence_name(kind: str) -> str:
    if kind not in DIVERGENCE_TABLE:
        raise ValueError(
            f"unknown divergence {kind!r}; valid kinds: {', '.join(sorted(DIVERGENCE_TABLE))}"
        )
    return kind


# --------------------------------------------------------------------------------------------
# Supervised (SFT) term
# --------------------------------------------------------------------------------------------


def _ce_chunk(dtype: torch.dtype, s: Tensor, labels: Tensor) -> Tensor:
    """Sum of -log softmax(s)[label] over one chunk: s ``(n, V)``, labels ``(n,)``."""
    s = s.to(dtype)
    picked = s.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return (torch.logsumexp(s, -1) - picked).sum()


def cross_entropy(
    student_logits: Tensor,
    labels: Tensor,
    mask: Tensor | None,
    num_tokens: int | float | Tensor | None = None,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Next-token cross-entropy (the SFT term), normalised and chunked like the divergences.

    Args:
        student_logits: ``(B, T, V)`` logits; row j predicts token j + 1.
        labels: ``(B, T)`` int, ``labels[b, j]`` = token j + 1 (already shifted); values in rows
            outside `mask` are ignored (e.g. -100).
        mask: ``(B, T)`` bool/0-1 rows that are targets; None = all rows.
        num_tokens: normaliser (see module docstring); None = ``mask.sum()``.
        chunk_size: masked rows per checkpointed chunk; None = one chunk.

    Returns:
        Scalar: ``sum over masked rows of -log p_S(label) / num_tokens`` (equals
        ``F.cross_entropy(logits[mask], labels[mask])`` when num_tokens is None).
    """
    if student_logits.dim() != 3:
        raise ValueError(
            f"student_logits must be (B, T, V), got shape {tuple(student_logits.shape)}"
        )
    if labels.shape != student_logits.shape[:2]:
        raise ValueError(
            f"labels {tuple(labels.shape)} must be (B, T) = {tuple(student_logits.shape[:2])}"
        )
    _check_chunk_size(chunk_size)
    mask = _check_mask(mask, student_logits.shape[:2], "student_logits (B, T)")
    dtype = _compute_dtype(student_logits.dtype)
    s_rows = _select_rows(student_logits, mask)
    n = s_rows.shape[0]
    if n == 0:
        return _zero_like_graph(student_logits, dtype)
    total = _chunked_sum(
        functools.partial(_ce_chunk, dtype), [s_rows, _select_rows(labels, mask)], chunk_size
    )
    return _normalise(total, n, num_tokens)


# --------------------------------------------------------------------------------------------
# Attention-map distillation (KD-DAE)
# --------------------------------------------------------------------------------------------


def uniform_layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Pair every student layer with a teacher layer, spread uniformly over the teacher's depth.

    Rule: student layer ``i`` (0-based) <-> teacher layer ``round((i + 1) * n_teacher /
    n_student) - 1``, with halves rounded up and the result clamped to ``>= 0``. Hence the last
    student layer maps to the last teacher layer, the mapping is one-to-one when the depths are
    equal, and e.g. ``uniform_layer_map(3, 12) == [(0, 3), (1, 7), (2, 11)]``.

    Returns:
        ``[(student_layer, teacher_layer), ...]``, one pair per student layer.
    """
    if n_student < 1 or n_teacher < 1:
        raise ValueError(
            f"layer counts must be >= 1, got n_student={n_student}, n_teacher={n_teacher}"
        )
    # round-half-up of (i + 1) * n_teacher / n_student in exact integer arithmetic
    return [
        (i, max((2 * (i + 1) * n_teacher + n_student) // (2 * n_student) - 1, 0))
        for i in range(n_student)
    ]


def _group_heads(t: Tensor, h_student: int) -> Tensor:
    """Average teacher heads ``(n, H_T, T)`` over consecutive groups -> ``(n, H_S, T)``."""
    h_teacher = t.shape[1]
    if h_teacher == h_student:
        return t
    # A mean of probability distributions is a probability distribution, so the grouped
    # teacher rows are still valid attention rows.
    return t.reshape(t.shape[0], h_student, h_teacher // h_student, t.shape[2]).mean(2)


def _attention_chunk(dtype: torch.dtype, eps: float, s: Tensor, t: Tensor) -> Tensor:
    """Sum over rows and heads of KL(A_T || A_S): s ``(n, H_S, T)``, t ``(n, H_T, T)``."""
    s = s.to(dtype)
    t = _group_heads(t.to(dtype), s.shape[1])
    # t * log t with t = 0 is 0: keys that are masked (future or padding) are exactly 0 in both
    # maps and contribute nothing. eps only keeps log() finite for such zeros.
    return (t * (t.clamp_min(eps).log() - s.clamp_min(eps).log())).sum()


def _attention_pair(student_attn, teacher_attn, pair: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The checked maps of a layer pair: student ``(B, H_S, T, T)``, teacher ``(B, H_T, T, T)``."""
    ls, lt = pair
    if not (0 <= ls < len(student_attn)) or not (0 <= lt < len(teacher_attn)):
        raise ValueError(
            f"attention_kl: layer pair ({ls}, {lt}) out of range for {len(student_attn)} "
            f"student and {len(teacher_attn)} teacher layers"
        )
    s, t = student_attn[ls], teacher_attn[lt]
    if s.dim() != 4 or t.dim() != 4:
        raise ValueError(
            f"attention maps must be (B, H, T, T); got student {tuple(s.shape)}, "
            f"teacher {tuple(t.shape)} for layer pair ({ls}, {lt})"
        )
    if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
        raise ValueError(
            f"attention maps differ in batch or sequence length: student {tuple(s.shape)}, "
            f"teacher {tuple(t.shape)} for layer pair ({ls}, {lt})"
        )
    if t.shape[1] % s.shape[1] != 0:
        raise ValueError(
            f"attention_kl: teacher heads ({t.shape[1]}) must be a multiple of student heads "
            f"({s.shape[1]}) to average teacher heads in groups (layer pair ({ls}, {lt}))"
        )
    return s, t


def _attention_layer_sum(
    s: Tensor, t: Tensor, query_mask: Tensor | None, chunk_size: int | None, eps: float
) -> tuple[Tensor, int]:
    """(sum over selected query rows and heads of KL(A_T || A_S), number of selected rows)."""
    mask = _check_mask(query_mask, s.shape[:1] + s.shape[2:3], "attention (B, T)")
    dtype = _compute_dtype(s.dtype)
    # (B, H, T_q, T_k) -> (B, T_q, H, T_k) so that the (B, T) query mask selects rows.
    s_rows = _select_rows(s.transpose(1, 2), mask)
    t_rows = _select_rows(t.transpose(1, 2), mask)
    n = s_rows.shape[0]
    if n == 0:
        return _zero_like_graph(s, dtype), 0
    fn = functools.partial(_attention_chunk, dtype, eps)
    return _chunked_sum(fn, [s_rows, t_rows], chunk_size), n


def attention_kl(
    student_attn: Sequence[Tensor],
    teacher_attn: Sequence[Tensor],
    query_mask: Tensor | None,
    *,
    layer_map: Sequence[tuple[int, int]],
    num_rows: int | float | Tensor | None = None,
    chunk_size: int | None = DEFAULT_ATTENTION_CHUNK_SIZE,
    eps: float = 1e-12,
) -> Tensor:
    """KD-DAE attention-map distillation: KL between teacher and student attention rows.

    For each ``(student_layer, teacher_layer)`` pair in `layer_map`, each (student) head ``h`` and
    each query row ``i`` with ``query_mask[b, i]`` true::

        KL(A_T[b,h,i,:] || A_S[b,h,i,:]) = sum_j A_T[b,h,i,j] (log A_T[b,h,i,j] - log A_S[b,h,i,j])

    summed over keys ``j``; keys outside the causal window ``0..i`` (and padding) have
    probability exactly 0 in both maps and contribute nothing. Probabilities are clamped at
    `eps` inside the logs only. The result is the sum over layers, heads and rows divided by
    ``num_rows * H_S * len(layer_map)``, i.e. a mean over rows x heads x layers.

    Head rule: if the teacher has more heads, ``H_T`` must be a multiple of ``H_S``, and the
    teacher's probabilities are averaged over consecutive groups of ``H_T / H_S`` heads (teacher
    heads ``g*r .. g*r + r - 1`` form student head ``g``); otherwise a ValueError is raised.

    Args:
        student_attn: per-layer student attention probabilities, each ``(B, H_S, T, T)``
            (``outputs.attentions`` of a transformers model run with ``output_attentions=True``
            and eager attention).
        teacher_attn: per-layer teacher attention probabilities, each ``(B, H_T, T, T)``.
        query_mask: ``(B, T)`` bool/0-1 query rows to distil; None = all rows.
        layer_map: ``[(student_layer, teacher_layer), ...]``, e.g. from `uniform_layer_map`.
        num_rows: normaliser for the row count (number of query rows over the whole
            accumulation window and all processes); None = ``query_mask.sum()``.
        chunk_size: query rows per checkpointed chunk (per layer); None = one chunk.
        eps: floor for probabilities inside log().

    Returns:
        Scalar tensor (fp32, or fp64 for fp64 maps).
    """
    if not layer_map:
        raise ValueError("attention_kl: layer_map is empty")
    _check_chunk_size(chunk_size)
    pairs = [_attention_pair(student_attn, teacher_attn, pair) for pair in layer_map]
    if len({s.shape[1] for s, _ in pairs}) > 1:
        raise ValueError("attention_kl: student layers have different head counts")
    sums = [_attention_layer_sum(s, t, query_mask, chunk_size, eps) for s, t in pairs]
    total = functools.reduce(torch.add, [part for part, _ in sums])
    n = sums[-1][1]  # the same query mask selects the same rows in every layer
    if n == 0:
        return total
    return _normalise(total, n, num_rows) / (pairs[0][0].shape[1] * len(layer_map))


# --------------------------------------------------------------------------------------------
# Hidden-state distillation
# --------------------------------------------------------------------------------------------


def hidden_state_loss(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    mask: Tensor | None,
    projection: nn.Module | None,
    kind: str = "mse",
    num_tokens: int | float | Tensor | None = None,
) -> Tensor:
    """Distance between projected student hidden states and teacher hidden states.

    The student's width ``Ds`` usually differs from the teacher's ``Dt``, so a learned
    `projection` (``Ds -> Dt``, e.g. ``nn.Linear(Ds, Dt)``) maps the student side first. The
    projection belongs to the caller (it is trained with the student but is not part of the
    saved student model).

    Args:
        student_hidden: ``(B, T, Ds)``.
        teacher_hidden: ``(B, T, Dt)``.
        mask: ``(B, T)`` bool/0-1 rows to compare; None = all rows.
        projection: module ``(N, Ds) -> (N, Dt)``; None = identity (requires ``Ds == Dt``).
            The selected student rows are cast to the projection's parameter dtype.
        kind: ``"mse"``: per row the mean over ``Dt`` of the squared difference;
            ``"cosine"``: per row ``1 - cos(projected student, teacher)``.
        num_tokens: normaliser (see module docstring); None = ``mask.sum()``.

    Returns:
        Scalar: ``sum over masked rows of the per-row value / num_tokens`` (fp32, fp64 for
        fp64 input).
    """
    if kind not in ("mse", "cosine"):
        raise ValueError(f"hidden_state_loss: kind must be 'mse' or 'cosine', got {kind!r}")
    if student_hidden.dim() != 3 or teacher_hidden.dim() != 3:
        raise ValueError(
            f"hidden states must be (B, T, D); got student {tuple(student_hidden.shape)}, "
            f"teacher {tuple(teacher_hidden.shape)}"
        )
    if student_hidden.shape[:2] != teacher_hidden.shape[:2]:
        raise ValueError(
            f"hidden states differ in (B, T): student {tuple(student_hidden.shape)}, "
            f"teacher {tuple(teacher_hidden.shape)}"
        )
    mask = _check_mask(mask, student_hidden.shape[:2], "hidden states (B, T)")
    dtype = _compute_dtype(student_hidden.dtype)
    s = _select_rows(student_hidden, mask)
    t = _select_rows(teacher_hidden, mask)
    n = s.shape[0]
    if n == 0:
        zero = _zero_like_graph(student_hidden, dtype)
        if projection is not None:  # keep the projection in the graph too (DDP unused params)
            zero = zero + sum(_zero_like_graph(p, dtype) for p in projection.parameters())
        return zero
    if projection is not None:
        param = next(projection.parameters(), None)
        if param is not None and param.is_floating_point():
            s = s.to(param.dtype)
        s = projection(s)
    if s.shape[-1] != t.shape[-1]:
        raise ValueError(
            f"projected student width {s.shape[-1]} != teacher width {t.shape[-1]}; "
            "pass a projection Ds -> Dt"
        )
    s = s.to(dtype)
    t = t.to(dtype)
    if kind == "mse":
        per_row = (s - t).pow(2).mean(-1)
    else:
        per_row = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    return _normalise(per_row.sum(), n, num_tokens)

"""Token-level KD losses from the student's last hidden states and its output projection.

`distill.losses` takes logits ``(B, T, V)``: the model has already built them, and autograd keeps
them (and later their fp32 gradient) for the whole backward pass. Here the loss gets the final
hidden states ``(B, T, D)`` and the output projection ``W`` ``(V, D)`` instead, and computes
``logits = h @ W^T`` one chunk of rows at a time; each chunk's gradients with respect to ``h``
and ``W`` are computed right there in the forward pass (a custom autograd.Function), and the
chunk's logits are dropped. Neither the full logits nor their gradient ever exist. The same idea
as Liger-Kernel's fused linear losses (`LigerFusedLinearCrossEntropy`,
`LigerFusedLinearJSD`), written here in plain PyTorch: Liger's Triton kernels need CUDA, this
runs on the CPU too and covers every divergence of `distill.losses` and every teacher kind
(full logits, top-k cache, sampled cache) through the same chunk functions.

The backward pass only scales the stored gradients by the incoming gradient (the loss is a
scalar), so the loss must be back-propagated once, as a training loss is.

    head = LinearHead(hidden, lm_head.weight)
    loss = fused_divergence("forward_kl", head, teacher, mask, temperature=1.0, num_tokens=n)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from distill import losses

#: Rows per chunk. One fp32 chunk at vocab 49,152 is 256 x 49,152 x 4 B = 50 MB; the chunk's
#: loss holds a handful of such tensors at its peak.
DEFAULT_FUSED_CHUNK_SIZE = 256


@dataclass(frozen=True, eq=False)
class LinearHead:
    """The student's output side before the logits: ``logits = hidden @ weight.T``.

    hidden ``(B, T, D)`` final (normed) hidden states; weight ``(V, D)`` the output projection
    (a trained parameter: its gradient flows through the fused loss).
    """

    hidden: Tensor
    weight: Tensor

    def select(self, rows: Tensor) -> LinearHead:
        """The head of the batch rows `rows` ``(B,)`` bool (DAE routes samples to teachers)."""
        return LinearHead(self.hidden[rows], self.weight)

    @property
    def shape(self) -> torch.Size:
        """The shape the logits would have: ``(B, T, V)``."""
        return torch.Size((*self.hidden.shape[:2], self.weight.shape[0]))


def _matmul_dtype(hidden: Tensor) -> torch.dtype:
    """The dtype the logits matmul runs in: autocast's when autocast is on (as for nn.Linear)."""
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return hidden.dtype


class _FusedLinearLoss(torch.autograd.Function):
    """sum over chunks of chunk_fn(h_c @ W^T, *teacher_c), gradients computed in the forward.

    hidden ``(M, D)`` and the teacher tensors ``(M, ...)`` hold every row; `rows` ``(N,)`` the
    ones that count. Each chunk gathers its rows itself, so no copy of all selected teacher rows
    (``(N, V)`` for a full teacher) is ever made.
    """

    @staticmethod
    def forward(ctx, hidden, weight, chunk_fn, chunk_size, rows, *teacher):
        mm = _matmul_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.detach().to(mm)
            grad_hidden = torch.zeros_like(hidden)
            # Summed over chunks in fp32 (fp64 for fp64 weights) whatever the matmul dtype.
            acc = losses._compute_dtype(weight.dtype)
            grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
            total = torch.zeros((), dtype=torch.float64, device=hidden.device)
            for start in range(0, rows.shape[0], chunk_size):
                at = rows[start : start + chunk_size]
                h = hidden.detach()[at].to(mm)
                with torch.enable_grad():
                    logits = (h @ w.T).requires_grad_(True)
                    part = chunk_fn(logits, *(t[at] for t in teacher))
                    (grad_logits,) = torch.autograd.grad(part, logits)
                grad_logits = grad_logits.to(mm)
                grad_hidden.index_copy_(0, at, (grad_logits @ w).to(hidden.dtype))
                grad_weight += (grad_logits.T @ h).to(acc)
                total += part.detach().double()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total.to(losses._compute_dtype(hidden.dtype))

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            grad_hidden * grad_output.to(grad_hidden.dtype),
            grad_weight * grad_output.to(grad_weight.dtype),
            *([None] * (len(ctx.needs_input_grad) - 2)),  # chunk_fn, chunk_size, rows, teacher
        )


def fused_divergence(
    kind: str,
    head: LinearHead,
    teacher: Tensor | losses.TopKTeacher | losses.SampledTeacher,
    mask: Tensor | None,
    *,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    num_tokens: int | float | Tensor | None = None,
    chunk_size: int = DEFAULT_FUSED_CHUNK_SIZE,
    **param: float,
) -> Tensor:
    """`distill.losses.divergence(kind, head.hidden @ head.weight.T, teacher, mask, ...)`.

    The same value and gradients (up to float rounding) without the ``(B, T, V)`` logits.

    Args:
        kind: a key of `distill.losses.DIVERGENCE_TABLE`; `param` its beta/alpha.
        head: the student's hidden states ``(B, T, D)`` and output projection ``(V, D)``.
        teacher: ``(B, T, V)`` logits, a `TopKTeacher` or a `SampledTeacher`.
        mask: ``(B, T)`` rows whose next token is a target; None = all rows.
        temperature, scale_by_t2, num_tokens: as in `distill.losses.forward_kl`.
        chunk_size: rows whose logits exist at once.

    Returns:
        Scalar (fp32, fp64 for fp64 hidden states).
    """
    rows_fn = losses.DIVERGENCE_TABLE[losses.check_divergence_name(kind)].bind(kind, param)
    losses._check_temperature(temperature)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    mask = losses._check_mask(mask, head.hidden.shape[:2], "hidden states (B, T)")
    dtype = losses._compute_dtype(head.hidden.dtype)
    # mask=None: every row as a flat view; the chunks pick the masked rows themselves.
    chunk_fn, teacher_rows = losses.teacher_rows(
        teacher, None, head.shape, kind, rows_fn, temperature, dtype
    )
    total, n = _fused_sum(head, mask, chunk_fn, teacher_rows, chunk_size)
    if n == 0:
        return total
    return losses.finish_token_loss(total, n, num_tokens, temperature, scale_by_t2)


def fused_cross_entropy(
    head: LinearHead,
    labels: Tensor,
    mask: Tensor | None,
    num_tokens: int | float | Tensor | None = None,
    chunk_size: int = DEFAULT_FUSED_CHUNK_SIZE,
) -> Tensor:
    """`distill.losses.cross_entropy` of ``head.hidden @ head.weight.T`` without the logits."""
    mask = losses._check_mask(mask, head.hidden.shape[:2], "hidden states (B, T)")
    dtype = losses._compute_dtype(head.hidden.dtype)
    chunk_fn = functools.partial(losses._ce_chunk, dtype)
    labels_rows = [labels.reshape(-1)]
    total, n = _fused_sum(head, mask, chunk_fn, labels_rows, chunk_size)
    if n == 0:
        return total
    return losses.finish_token_loss(total, n, num_tokens, 1.0, False)


def _fused_sum(head, mask, chunk_fn, teacher_rows, chunk_size) -> tuple[Tensor, int]:
    """(sum of chunk_fn over the masked rows, their number), chunk by chunk.

    teacher_rows hold every row ``(B*T, ...)``; the masked ones are gathered chunk by chunk.
    """
    hidden = head.hidden.reshape(-1, head.hidden.shape[-1])  # a view: no copy
    if mask is None:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
    else:
        rows = mask.reshape(-1).nonzero().squeeze(-1).to(hidden.device)
    n = rows.shape[0]
    if n == 0:
        dtype = losses._compute_dtype(head.hidden.dtype)
        zero = losses._zero_like_graph(head.hidden, dtype) + losses._zero_like_graph(
            head.weight, dtype
        )
        return zero, 0
    if not (torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)):
        mm = _matmul_dtype(hidden)
        with torch.no_grad():  # evaluation: the plain chunked sum, no gradients to keep
            w = head.weight.to(mm)
            total = 0.0
            for start in range(0, n, chunk_size):
                at = rows[start : start + chunk_size]
                total = total + chunk_fn(hidden[at].to(mm) @ w.T, *(t[at] for t in teacher_rows))
        return total, n
    args = (hidden, head.weight, chunk_fn, chunk_size, rows, *teacher_rows)
    return _FusedLinearLoss.apply(*args), n

"""LM head + cross-entropy fused and chunked over rows, so the [tokens, vocab] fp32 logits never exist at once.

`F.cross_entropy(lm_head(h).float(), targets)` keeps the full fp32 logits (and the log-softmax) alive until
backward: for phi1's micro-batch 8 x 2048 x 51,200 that is 3.4 GB per copy. Here each chunk of rows computes
its logits, its loss and, when a gradient is wanted, its gradients w.r.t. the hidden states and the head's
weight and bias right away (the gradient of mean CE is softmax - onehot, scaled). Backward then only scales
those stored gradients by the incoming gradient: the head's matmuls run once each, like the plain path, and
at most one chunk's logits are alive at any time. Idea as in Liger-Kernel's fused linear cross-entropy;
written from the math here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def accumulate_mm(acc: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    """acc + a @ b, accumulated in fp32. The first product becomes the accumulator, and later ones add inside
    the matmul (addmm_) when the dtypes allow: a zero-filled head-sized buffer and a separate add pass each
    cost a full sweep of [vocab, hidden] fp32 (98 MB at 32k x 768), as much as the pointwise loss itself."""
    if acc is None:
        return (a @ b).float()
    if a.dtype == acc.dtype:
        return acc.addmm_(a, b)
    return acc.add_(a @ b)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows: int, reduction: str, grad_mode: bool):
        # needs_input_grad is set even under torch.no_grad(): validation must not pay for gradients.
        want = [grad_mode and needed for needed in ctx.needs_input_grad[:3]]
        want_grads = any(want)
        valid = targets != IGNORE_INDEX
        # Mean over non-ignored targets, as F.cross_entropy: an all-ignored batch gives 0/0 = nan there too.
        scale = 1.0 / valid.sum() if reduction == "mean" else torch.ones((), device=hidden.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if want[0] else None
        grad_weight = grad_bias = None  # the first chunk's products become them: no head-sized zero fill
        # The matmuls run in the autocast dtype when autocast is on (cast once here, not per chunk), as
        # F.linear would; everything from the logits on is fp32.
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
        for start in range(0, hidden.shape[0], chunk_rows):
            h = hidden[start : start + chunk_rows].to(dtype)
            t, ok = targets[start : start + chunk_rows].clamp(min=0), valid[start : start + chunk_rows]
            # A fresh tensor (in fp32 .float() is a no-op, not a copy), so the in-place passes below reuse it.
            logits = F.linear(h, w, b).float()
            target_logit = logits.gather(1, t[:, None]).squeeze(1)
            # log-sum-exp by hand, keeping exp(z - max) in place: softmax is then one more pass, where
            # torch.logsumexp followed by exp(z - lse) would exponentiate the chunk twice.
            peak = logits.amax(-1, keepdim=True)
            exp = logits.sub_(peak).exp_()
            sum_exp = exp.sum(-1)
            lse = peak.squeeze(1) + sum_exp.log()
            total += torch.where(ok, lse - target_logit, 0.0).sum()
            if not want_grads:
                continue
            # d(loss)/d(logits) = softmax - onehot(target), zero on ignored rows, scaled; in place on `exp`.
            row_scale = ok * scale
            grad = exp.mul_((row_scale / sum_exp)[:, None])
            grad[torch.arange(len(t), device=t.device), t] -= row_scale
            g = grad.to(dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk_rows] = g @ w
            if want[1]:
                grad_weight = accumulate_mm(grad_weight, g.t(), h)
            if want[2]:
                grad_bias = grad.sum(0) if grad_bias is None else grad_bias.add_(grad.sum(0))
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(
            *(g if g is not None else torch.empty(0) for g in (grad_hidden, grad_weight, grad_bias))
        )
        ctx.has = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        # Scaled in place: a second copy of the head-sized gradient would raise the peak. A second backward
        # through the same graph (retain_graph) then fails loudly on the saved tensors' version counter.
        grads = [
            g.mul_(grad_output).to(dtype) if has else None
            for g, has, dtype in zip(ctx.saved_tensors, ctx.has, ctx.dtypes)
        ]
        return *grads, None, None, None, None


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    *,
    reduction: str = "mean",
    chunk_rows: int = 1024,
) -> Tensor:
    """Cross-entropy of `F.linear(hidden, weight, bias)` against `targets` (-100 = ignored), fp32, chunked.

    hidden [..., H], targets [...] (int64). reduction "mean" (over non-ignored targets) or "sum". Equal in
    value and gradient to `F.cross_entropy(F.linear(hidden, weight, bias).float().flatten(0, -2),
    targets.flatten(), ignore_index=-100, reduction=reduction)`.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {reduction!r}")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets {tuple(targets.shape)} must match the tokens {tuple(hidden.shape[:-1])}")
    return _LinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        bias,
        targets.reshape(-1),
        chunk_rows,
        reduction,
        torch.is_grad_enabled(),
    )

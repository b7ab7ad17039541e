"""forward(targets=...): the chunked LM head + cross-entropy against F.cross_entropy on the full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from modeling_helpers import PHI, small_config

from modeling import Transformer

CONFIGS = {
    "llama-tied": dict(tie_word_embeddings=True),
    "llama-untied": dict(tie_word_embeddings=False),
    "phi-head-bias": dict(PHI),
}


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (3, 21), generator=g)
    targets = torch.randint(0, 97, (3, 21), generator=g)
    targets[0, :5] = -100  # a masked prompt
    targets[:, -1] = -100  # no next token
    return ids, targets


def grads(model: Transformer) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_rows", [7, 1024])  # 7 does not divide the 63 rows; 1024 is one chunk
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_chunked_loss_equals_plain_in_value_and_gradient(name, chunk_rows, reduction):
    torch.manual_seed(0)
    model = Transformer(small_config(loss_chunk_rows=chunk_rows, **CONFIGS[name]))
    ids, targets = batch()
    position_ids = torch.tensor([list(range(9)) + list(range(12))] * 3)  # packed rows: documents too

    plain = F.cross_entropy(
        model(ids, position_ids).flatten(0, 1), targets.flatten(), ignore_index=-100, reduction=reduction
    )
    plain.backward()
    expected = grads(model)
    chunked = model(ids, position_ids, targets=targets, loss_reduction=reduction)
    chunked.backward()
    got = grads(model)

    assert chunked.dtype == torch.float32 and chunked.shape == ()
    assert torch.allclose(chunked, plain, rtol=1e-6, atol=1e-6)
    for param, grad in expected.items():  # fp32, summed in a different order: relative to the largest entry
        diff = (got[param] - grad).abs().max() / grad.abs().max()
        assert diff <= 1e-5, f"{param}: {diff:.1e}"


def test_loss_scales_with_upstream_gradient_and_runs_without_grad():
    torch.manual_seed(1)
    model = Transformer(small_config())
    ids, targets = batch(1)
    (3.0 * model(ids, targets=targets)).backward()
    tripled = grads(model)
    model(ids, targets=targets).backward()
    single = grads(model)
    assert all(torch.allclose(tripled[k], 3.0 * single[k], rtol=1e-5, atol=1e-7) for k in single)
    with torch.no_grad():  # validation: a value, no gradient work
        loss = model(ids, targets=targets)
    reference = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert torch.allclose(loss, reference, rtol=1e-6) and not loss.requires_grad


def test_all_ignored_matches_cross_entropy():
    """Mean over zero counted targets is nan in F.cross_entropy; the sum is 0 with zero gradients."""
    model = Transformer(small_config())
    ids, targets = batch()
    ignored = torch.full_like(targets, -100)
    assert torch.isnan(model(ids, targets=ignored)) and torch.isnan(
        F.cross_entropy(model(ids).flatten(0, 1), ignored.flatten(), ignore_index=-100)
    )
    loss = model(ids, targets=ignored, loss_reduction="sum")
    loss.backward()
    assert loss == 0 and all(p.grad.abs().max() == 0 for p in model.parameters())


def test_bf16_autocast_close_to_plain():
    """Under autocast the head's matmuls run in bf16 on both paths; the loss stays fp32."""
    torch.manual_seed(2)
    model = Transformer(small_config())
    ids, targets = batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = model(ids, targets=targets)
        plain = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert chunked.dtype == torch.float32 and abs(chunked.item() - plain.item()) < 1e-2


def test_bad_arguments_name_the_problem():
    model = Transformer(small_config())
    ids, targets = batch()
    with pytest.raises(ValueError, match="loss_reduction"):
        model(ids, targets=targets, loss_reduction="none")
    with pytest.raises(ValueError, match="targets"):
        model(ids, targets=targets[:, :-1])


def saved_for_backward(fn) -> list[tuple[int, ...]]:
    """Shapes of every tensor autograd keeps for backward while fn runs its forward."""
    shapes: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return shapes


def test_no_logits_sized_tensor_is_kept_for_backward():
    """The memory claim, structurally: plain CE keeps [tokens, vocab] tensors (the logits, the log-softmax)
    until backward; the chunked loss keeps nothing that large (only [tokens, hidden] and head-sized grads)."""
    torch.manual_seed(3)
    vocab, hidden = 4096, 64
    model = Transformer(small_config(vocab_size=vocab, hidden_size=hidden, loss_chunk_rows=16))
    ids = torch.randint(0, vocab, (4, 32))
    tokens = ids.numel()
    logits_size = tokens * vocab

    def plain():
        logits = model(ids)
        return F.cross_entropy(logits.flatten(0, 1), ids.flatten())

    plain_saved = saved_for_backward(plain)
    chunked_saved = saved_for_backward(lambda: model(ids, targets=ids))
    numel = lambda shape: torch.Size(shape).numel()  # noqa: E731
    assert max(map(numel, plain_saved)) >= logits_size
    assert max(map(numel, chunked_saved)) <= vocab * hidden < logits_size


def test_second_backward_through_the_loss_fails_loudly():
    """The stored gradients are scaled in place, so reusing the graph must raise, never give wrong grads."""
    model = Transformer(small_config())
    ids, targets = batch()
    loss = model(ids, targets=targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()

"""Backward: the memory-lean autograd Functions (RMSNorm, SwiGLU, in-place RoPE) against numeric differentiation
and transformers' gradients, and what a block keeps for backward against transformers' own decoder layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from modeling_helpers import PHI, hf_twin, small_config
from test_model_forward import randomize_norms_and_biases

from modeling import Transformer
from modeling.model import Layout, _RMSNorm, _RotaryQK, _SiluMul, to_hf_state
from train.memory import Setup, block_activation_bytes


def test_functions_match_numeric_gradients():
    """gradcheck: analytic backward vs central finite differences, float64."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(8, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: _RMSNorm.apply(x, w, 1e-6), (x, weight))
    gate_up = torch.randn(2, 5, 12, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(_SiluMul.apply, (gate_up,))
    for rotary_dim in (6, 4):  # all dims of the 6-dim heads, and a partial rotary prefix
        angles = torch.randn(2, 5, 1, rotary_dim // 2, dtype=torch.float64, generator=g).repeat(1, 1, 1, 2)
        qkv = torch.randn(2, 5, 4, 6, dtype=torch.float64, generator=g, requires_grad=True)
        # 3 of the 4 heads rotated (q and k), as Attention does; clone: the Function works in place
        args = (angles.cos(), angles.sin(), 3)
        assert torch.autograd.gradcheck(lambda t, args=args: _RotaryQK.apply(t.clone(), *args), (qkv,))


@pytest.mark.parametrize("block", ["llama", "phi"])
def test_gradients_equal_transformers(block):
    """One cross-entropy backward through our model and through transformers' twin holding the same weights:
    every parameter's gradient agrees (fp32; relative to the largest entry)."""
    torch.manual_seed(0)
    model = Transformer(small_config(**(PHI if block == "phi" else {}), tie_word_embeddings=False))
    randomize_norms_and_biases(model)
    reference = hf_twin(model).train()
    ids = torch.randint(0, 97, (2, 19))
    F.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
    F.cross_entropy(reference(ids).logits.flatten(0, 1), ids.flatten()).backward()
    ours = to_hf_state({n: p.grad for n, p in model.named_parameters()}, model.config)
    theirs = dict(reference.named_parameters())
    assert ours.keys() == theirs.keys()
    for name, grad in ours.items():
        expected = theirs[name].grad
        assert (grad - expected).abs().max() <= 1e-5 * expected.abs().max(), name


def saved_bytes(fn, exclude) -> int:
    """Bytes of the distinct storages autograd keeps for backward while fn runs its forward, but those of the
    tensors in `exclude` (parameters, shared tables: kept anyway)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in skip:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_llama_block_keeps_less_for_backward_than_transformers():
    """Our block against LlamaDecoderLayer on the same input and weights: the Functions keep no fp32 normalised
    copies, no silu output and no rotated copies of q and k. Parameters (kept by both) are excluded."""
    torch.manual_seed(0)
    config = small_config(hidden_size=128, intermediate_size=384, num_heads=8, num_kv_heads=4)
    model = Transformer(config)
    reference = hf_twin(model).train()
    x = torch.randn(2, 32, 128, requires_grad=True)
    positions = torch.arange(32).expand(2, 32)
    cos, sin = model._rope(positions, True, torch.float32)
    ours = saved_bytes(lambda: model.layers[0](x, cos, sin, Layout("sdpa")), [*model.parameters(), cos, sin])
    hf_cos, hf_sin = reference.model.rotary_emb(x, positions)
    layer = reference.model.layers[0]
    theirs = saved_bytes(
        lambda: layer(x, position_embeddings=(hf_cos, hf_sin), attention_mask=None),
        [*reference.parameters(), hf_cos, hf_sin],
    )
    # transformers keeps per norm its input and the normalised copy, q, k and v and their rotated copies, and
    # gate, up, silu(gate) and the product: here 0.76x of its total is ours.
    assert ours < 0.8 * theirs, (ours, theirs)


@pytest.mark.parametrize("block", ["llama", "phi"])
def test_memory_estimator_counts_what_a_block_keeps(block):
    """train/memory.py's per-block activation model (fp32) against the storages autograd really keeps for one
    block, parameters and the per-forward cos/sin tables excluded (its per-row 1/rms and LayerNorm statistics
    are the only things it leaves out)."""
    torch.manual_seed(0)
    shape = dict(hidden_size=128, intermediate_size=384, num_heads=8)  # 16-dim heads, 4 kv heads
    config = small_config(**{**(PHI if block == "phi" else {}), **shape})
    model = Transformer(config)
    B, T = 2, 32
    x = torch.randn(B, T, 128, requires_grad=True)
    cos, sin = model._rope(torch.arange(T).expand(B, T), True, torch.float32)
    saved = saved_bytes(lambda: model.layers[0](x, cos, sin, Layout("sdpa")), [*model.parameters(), cos, sin])
    estimated = block_activation_bytes(config, Setup(precision="fp32"), T) * B * T
    assert 0 <= saved / estimated - 1 <= 0.02, (saved, estimated)

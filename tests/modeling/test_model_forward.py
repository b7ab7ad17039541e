"""Forward pass: logits parity with transformers' LlamaForCausalLM, document masking, backends, init."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from modeling_helpers import PHI, hf_twin, small_config

from modeling import Transformer
from modeling.model import KVCache, cu_seqlens, document_ids, select_backend

CONFIGS = {
    "gqa-tied": dict(num_kv_heads=2, tie_word_embeddings=True),
    "gqa-untied": dict(num_kv_heads=1, tie_word_embeddings=False),
    "mha-untied": dict(num_kv_heads=4, tie_word_embeddings=False),
    "mha-tied-3layers": dict(num_kv_heads=4, tie_word_embeddings=True, num_layers=3, rope_theta=10000.0),
    "phi-partial-rotary": dict(PHI, num_kv_heads=4),
    "phi-full-rotary-gqa": dict(PHI, rotary_dim=16),
    "phi-tied-dropout-configured": dict(PHI, tie_word_embeddings=True, attn_dropout=0.1, resid_dropout=0.1),
}


def randomize_norms_and_biases(model: Transformer) -> None:
    """init_weights sets norms to 1 and biases to 0; random values make a misplaced one show in the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in name:
                p.normal_(1.0, 0.1)


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers_llama(name, backend):
    torch.manual_seed(0)
    model = Transformer(small_config(attention=backend, **CONFIGS[name])).eval()
    randomize_norms_and_biases(model)
    reference = hf_twin(model)
    assert type(reference).__name__ == ("PhiForCausalLM" if name.startswith("phi") else "LlamaForCausalLM")
    for seq_len in (1, 7, 33):
        ids = torch.randint(0, 97, (3, seq_len))
        with torch.no_grad():
            diff = (model(ids) - reference(ids).logits).abs().max().item()
        assert diff <= 1e-4, f"{name}/{backend}/T={seq_len}: max abs diff {diff:.2e}"


def test_tied_head_is_the_embedding():
    model = Transformer(small_config(tie_word_embeddings=True))
    assert model.lm_head.weight is model.embed.weight
    assert sum(p.numel() for p in model.parameters()) == model.config.num_params()


@pytest.mark.parametrize("block", ["llama", "phi"])
@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_packed_documents_equal_separate_forwards(backend, block):
    """A packed row (position_ids restarting at 0) gives each document the logits it gets alone."""
    torch.manual_seed(1)
    model = Transformer(small_config(attention=backend, **(PHI if block == "phi" else {}))).eval()
    splits = [[5, 1, 11], [17], [9, 8]]  # three rows of 17 tokens
    ids = torch.randint(0, 97, (3, 17))
    position_ids = torch.cat([torch.cat([torch.arange(n) for n in row])[None] for row in splits])
    with torch.no_grad():
        packed = model(ids, position_ids)
        for r, row in enumerate(splits):
            start = 0
            for n in row:
                alone = model(ids[r : r + 1, start : start + n])[0]
                diff = (packed[r, start : start + n] - alone).abs().max().item()
                assert diff <= 1e-5, f"row {r}, document at {start}: {diff:.2e}"
                start += n


def test_position_ids_without_restarts_equal_default():
    torch.manual_seed(2)
    model = Transformer(small_config()).eval()
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        assert torch.allclose(model(ids), model(ids, torch.arange(12).expand(2, 12)), atol=1e-6)


def test_documents_do_not_leak():
    """Changing an earlier document never changes a later one's logits, and no gradient crosses back."""
    torch.manual_seed(3)
    model = Transformer(small_config(tie_word_embeddings=False))
    ids = torch.tensor([[1, 2, 3, 4, 10, 11, 12, 13, 14, 15]])  # the documents share no token id
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])
    other = ids.clone()
    other[0, :4] = torch.tensor([5, 6, 7, 8])
    with torch.no_grad():
        assert torch.equal(model(ids, position_ids)[0, 4:], model(other, position_ids)[0, 4:])
    model(ids, position_ids)[0, 4:].sum().backward()
    grad = model.embed.weight.grad
    assert grad[1:5].abs().max() == 0 and grad[10:16].abs().max() > 0


def test_document_ids_and_cu_seqlens():
    position_ids = torch.tensor([[0, 1, 2, 0, 1], [3, 4, 0, 1, 2]])
    assert document_ids(position_ids).tolist() == [[1, 1, 1, 2, 2], [0, 0, 1, 1, 1]]
    cu, max_len = cu_seqlens(position_ids)
    # Row 2 starts mid-document (position 3): the row start still opens a new flash sequence.
    assert cu.tolist() == [0, 3, 5, 7, 10] and cu.dtype == torch.int32 and max_len == 3
    assert position_ids[1, 0] == 3  # the input is not modified


@pytest.mark.parametrize(
    ("requested", "device", "dtype", "flash", "expected"),
    [
        ("auto", "cuda", torch.bfloat16, True, "flash"),
        ("auto", "cuda", torch.float16, True, "flash"),
        ("auto", "cuda", torch.float32, True, "sdpa"),
        ("auto", "cuda", torch.bfloat16, False, "sdpa"),
        ("auto", "cpu", torch.bfloat16, True, "sdpa"),
        ("sdpa", "cuda", torch.bfloat16, True, "sdpa"),
        ("reference", "cpu", torch.float32, False, "reference"),
        ("flash", "cuda", torch.bfloat16, True, "flash"),
    ],
)
def test_select_backend(requested, device, dtype, flash, expected):
    assert select_backend(requested, torch.device(device), dtype, flash) == expected


def test_select_backend_flash_unavailable_raises():
    with pytest.raises(RuntimeError, match="flash-attn"):
        select_backend("flash", torch.device("cpu"), torch.bfloat16, True)
    with pytest.raises(RuntimeError, match="fp16/bf16"):
        select_backend("flash", torch.device("cuda"), torch.float32, True)


def test_autocast_dtype_drives_dispatch_and_runs():
    model = Transformer(small_config(attention="auto"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randint(0, 97, (2, 9)), torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 5]] * 2))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


FLASH_READY = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


@pytest.mark.skipif(not FLASH_READY, reason="flash-attn path needs a CUDA device and the flash-attn package")
def test_flash_matches_sdpa_on_packed_rows():
    torch.manual_seed(4)
    model = Transformer(small_config(attention="flash")).cuda().to(torch.bfloat16)
    ids = torch.randint(0, 97, (2, 40), device="cuda")
    position_ids = torch.tensor([list(range(15)) + list(range(25)), list(range(40))], device="cuda")
    with torch.no_grad():
        flash = model(ids, position_ids)
        model.config.attention = "sdpa"
        sdpa = model(ids, position_ids)
    assert (flash - sdpa).abs().max().item() < 5e-2  # bf16 kernels accumulate differently


def test_init_scales_residual_projections():
    torch.manual_seed(5)
    config = small_config(hidden_size=256, intermediate_size=512, num_layers=8, init_std=0.02)
    model = Transformer(config)
    std = lambda p: p.detach().std().item()  # noqa: E731
    assert std(model.layers[0].attn.qkv_proj.weight) == pytest.approx(0.02, rel=0.05)
    assert std(model.layers[0].attn.out_proj.weight) == pytest.approx(0.02 / 4, rel=0.05)
    assert std(model.layers[0].mlp.out_proj.weight) == pytest.approx(0.02 / 4, rel=0.05)
    assert torch.equal(model.layers[0].attn_norm.weight, torch.ones(256))
    phi = Transformer(small_config(**PHI))
    assert all(p.abs().max() == 0 for n, p in phi.named_parameters() if n.endswith("bias"))


def test_meta_then_materialize():
    """The FSDP-style path: build on meta, allocate with to_empty, then init_weights."""
    config = small_config(tie_word_embeddings=True)
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device="cpu")
    model.init_weights()
    assert model.lm_head.weight is model.embed.weight
    eager = Transformer(config)
    assert torch.equal(model.rope_cos, eager.rope_cos) and torch.equal(model.rope_sin, eager.rope_sin)
    model.load_state_dict(eager.state_dict())
    ids = torch.randint(0, 97, (1, 6))
    assert torch.equal(model(ids), eager(ids))


def test_rope_table_equals_computed_angles():
    """Default positions read the cached table; packed positions compute cos/sin: both give the same logits,
    also past max_seq_len (computed) and after a bf16 round trip of the model (the table is then bypassed)."""
    torch.manual_seed(6)
    model = Transformer(small_config(max_seq_len=16)).eval()
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        assert torch.allclose(model(ids), model(ids, torch.arange(16).expand(2, 16)), atol=1e-6)
        longer = torch.randint(0, 97, (1, 24))  # beyond the table: computed, and equal to transformers
        assert torch.allclose(model(longer), hf_twin(model)(longer).logits, atol=1e-4)
        model.to(torch.bfloat16).to(torch.float32)
        assert model.rope_cos.dtype == torch.float32
        assert torch.isfinite(model(ids)).all()


@pytest.mark.parametrize("block", ["llama", "phi"])
def test_dropout_only_in_training(block):
    torch.manual_seed(7)
    extra = dict(PHI if block == "phi" else {}, attn_dropout=0.2, resid_dropout=0.2, embed_dropout=0.2)
    model = Transformer(small_config(**extra))
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        assert not torch.allclose(model.train()(ids), model.eval()(ids))
        assert torch.equal(model.eval()(ids), model(ids))
        model.train()
        for attention in ("sdpa", "reference"):  # every backend applies attention dropout
            model.config.attention = attention
            torch.manual_seed(0)
            a = model(ids, torch.arange(10).expand(2, 10))
            assert not torch.allclose(a, model.eval()(ids)) and torch.isfinite(a).all()
            model.train()


@pytest.mark.slow  # dynamo tracing: ~10-30 s on the shared CI CPU
@pytest.mark.parametrize("block", ["llama", "phi"])
def test_block_has_no_graph_breaks(block):
    """torch.compile sees each block as one graph for every layout (causal, packed documents, KV cache); the
    layout itself is built eagerly outside the compiled region."""
    model = Transformer(small_config(**(PHI if block == "phi" else {}))).eval()
    positions = torch.tensor([list(range(5)) + list(range(7))] * 2)
    cos, sin = model._rope(positions, False, torch.float32)
    cache = KVCache.empty(model.config, 2, 20, "cpu", torch.float32)
    layouts = [
        model._layout(positions, False, None, torch.float32),
        model._layout(positions, True, None, torch.float32),
        model._layout(positions, True, cache, torch.float32),
    ]
    for layout in layouts:
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model.layers[0])(torch.randn(2, 12, 64), cos, sin, layout)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons

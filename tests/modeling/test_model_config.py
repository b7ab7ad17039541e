"""ModelConfig: validation, presets (sizes against their sources), HF config mapping, FLOPs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from modeling_helpers import PHI, hf_twin, small_config
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForCausalLM

from modeling import PRESETS, ModelConfig, Transformer


def hf_on_meta(config: ModelConfig):
    """transformers' own model for this config (Llama or Phi), built without memory."""
    hf_config = config.to_hf_config()
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(
            AutoConfig.for_model(hf_config.pop("model_type"), **hf_config)
        )


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_sizes_match_transformers(name):
    config = ModelConfig.from_preset(name)
    with torch.device("meta"):
        model = Transformer(config)
    reference = hf_on_meta(config)
    assert sum(p.numel() for p in model.parameters()) == config.num_params() == reference.num_parameters()
    assert model.embed.weight.is_meta


def test_phi1_presets_are_the_paper_architecture():
    """Phi-1 Sec. 2.3: 24 layers / 2048 hidden / MLP 8192 / 32 heads of 64 (phi-1), 20 / 1024 / 4096 / 16 of 64
    (phi-1-small), rotary dim 32, exported as transformers' PhiForCausalLM."""
    shapes = {"phi1": (24, 2048, 8192, 32), "phi1-small": (20, 1024, 4096, 16)}
    for name, (layers, hidden, mlp, heads) in shapes.items():
        config = ModelConfig.from_preset(name)
        got = (config.num_layers, config.hidden_size, config.intermediate_size, config.num_heads)
        assert got == (layers, hidden, mlp, heads) and config.head_dim == 64 and config.rotary_dim == 32
        assert type(hf_on_meta(config)).__name__ == "PhiForCausalLM"
        assert ModelConfig.from_preset(f"{name}-llama").hf_model_type() == "llama"
    # microsoft/phi-1's model page lists 1.42B parameters (the paper rounds to "1.3B"): same architecture.
    assert round(hf_on_meta(ModelConfig.from_preset("phi1")).num_parameters() / 1e9, 2) == 1.42


def test_smollm2_preset_matches_real_checkpoint(smollm2_path):
    real = ModelConfig.from_hf_config(json.loads((smollm2_path / "config.json").read_text()))
    preset = ModelConfig.from_preset("smollm2-135m")
    for field in dataclasses.fields(ModelConfig):
        a, b = getattr(real, field.name), getattr(preset, field.name)
        assert a == pytest.approx(b, rel=1e-6) if isinstance(b, float) else a == b, field.name


def test_from_preset_overrides():
    config = ModelConfig.from_preset("tiny", vocab_size=1000, head_dim=None, attention="reference")
    assert config.vocab_size == 1000 and config.attention == "reference"
    assert config.head_dim == 256 // 8  # None keeps the preset (derived) value
    with pytest.raises(ValueError, match="num_layer"):
        ModelConfig.from_preset("tiny", num_layer=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.from_preset("gpt5")


@pytest.mark.parametrize(
    ("field", "overrides"),
    [
        ("vocab_size", dict(vocab_size=0)),
        ("hidden_size", dict(hidden_size=-64)),
        ("intermediate_size", dict(intermediate_size=1.5)),
        ("num_layers", dict(num_layers=0)),
        ("hidden_size", dict(hidden_size=66)),  # not divisible by 4 heads
        ("num_heads", dict(num_heads=4, num_kv_heads=3)),  # heads not divisible by kv heads
        ("num_kv_heads", dict(num_kv_heads=0)),
        ("head_dim", dict(head_dim=7)),
        ("rope_theta", dict(rope_theta=0.0)),
        ("norm_eps", dict(norm_eps=-1e-5)),
        ("rotary_dim", dict(rotary_dim=18)),
        ("rotary_dim", dict(rotary_dim=3)),
        ("mlp", dict(mlp="relu")),
        ("norm", dict(norm="batchnorm")),
        ("resid_dropout", dict(resid_dropout=1.0)),
        ("loss_chunk_rows", dict(loss_chunk_rows=0)),
        ("init_std", dict(init_std=0.0)),
        ("max_seq_len", dict(max_seq_len=0)),
        ("attention", dict(attention="xformers")),
    ],
)
def test_bad_config_names_the_field(field, overrides):
    with pytest.raises(ValueError, match=field):
        small_config(**overrides)


def test_explicit_head_dim_decouples_from_hidden():
    config = small_config(hidden_size=66, head_dim=16)
    model = Transformer(config)
    assert model.layers[0].attn.qkv_proj.weight.shape == ((4 + 2 * 2) * 16, 66)  # q, k, v fused
    assert model(torch.randint(0, 97, (1, 5))).shape == (1, 5, 97)


def test_hf_config_round_trip():
    for name in PRESETS:
        config = ModelConfig.from_preset(name)
        assert ModelConfig.from_hf_config(config.to_hf_config()) == config


def test_from_hf_config_rejects_unsupported_features():
    cfg = ModelConfig.from_preset("tiny").to_hf_config()
    with pytest.raises(ValueError, match="rope"):
        ModelConfig.from_hf_config({**cfg, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}})
    with pytest.raises(ValueError, match="attention_bias"):
        ModelConfig.from_hf_config({**cfg, "attention_bias": True})
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig.from_hf_config({**cfg, "model_type": "mistral"})
    phi = ModelConfig.from_preset("phi1").to_hf_config()
    with pytest.raises(ValueError, match="qk_layernorm"):
        ModelConfig.from_hf_config({**phi, "qk_layernorm": True})
    with pytest.raises(ValueError, match="hidden_act"):
        ModelConfig.from_hf_config({**phi, "hidden_act": "relu"})


def test_mixed_block_has_no_hf_architecture():
    """A Llama block with partial rotary (or any mix of the two families) exports as neither class."""
    with pytest.raises(ValueError, match="rotary_dim"):
        small_config(rotary_dim=8).to_hf_config()
    with pytest.raises(ValueError, match="parallel_block"):
        small_config(**{**PHI, "norm": "rmsnorm"}).to_hf_config()


@pytest.mark.parametrize("extra", [dict(tie_word_embeddings=True), dict(tie_word_embeddings=False), PHI])
def test_flops_per_token_equals_counted_matmul_flops(extra):
    """PaLM's 6N + 12 * L * H * T against the FLOPs torch's FlopCounterMode counts in one fwd+bwd of
    transformers' own model (eager attention: QK^T and AV as full matmuls, as PaLM counts them). The counter
    sees matmuls only, so the norm weights and biases that N also holds are added as 6 each."""
    reference = hf_twin(Transformer(small_config(**extra))).train()
    reference.config._attn_implementation = "eager"
    seq_len = 32
    with FlopCounterMode(display=False) as counter:
        reference(torch.randint(0, 97, (2, seq_len))).logits.sum().backward()
    elementwise = sum(p.numel() for n, p in reference.named_parameters() if n.endswith("bias") or "norm" in n)
    per_token = counter.get_total_flops() / (2 * seq_len) + 6 * elementwise
    assert small_config(**extra).flops_per_token(seq_len) == per_token

"""ModelConfig: validation, presets (sizes against their sources), HF config mapping, FLOPs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from modeling_helpers import small_config

from modeling import PRESETS, ModelConfig, Transformer

# Documented ranges (modeling/README.md): total parameters including embeddings.
PRESET_RANGES = {
    "tiny": (5e6, 15e6),
    "phi1-small": (330e6, 380e6),
    "phi1": (1.3e9, 1.5e9),  # microsoft/phi-1 counts 1.42B with embeddings; the paper calls it 1.3B
    "cosmo-1b": (1.6e9, 1.9e9),  # model card: "1.8B"
    "smollm2-135m": (134e6, 136e6),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_sizes_on_meta(name):
    config = ModelConfig.from_preset(name)
    with torch.device("meta"):
        model = Transformer(config)
    counted = sum(p.numel() for p in model.parameters())
    assert counted == config.num_params()
    low, high = PRESET_RANGES[name]
    assert low <= counted <= high, f"{name}: {counted / 1e6:.1f}M params"
    assert model.embed.weight.is_meta


def test_phi1_matches_paper_shape():
    config = ModelConfig.from_preset("phi1")
    assert (config.num_layers, config.hidden_size, config.num_heads, config.head_dim) == (24, 2048, 32, 64)
    # SwiGLU at 2/3 width keeps the paper's per-layer MLP size (2 * 2048 * 8192) to within 0.5%.
    assert 3 * 2048 * config.intermediate_size == pytest.approx(2 * 2048 * 8192, rel=5e-3)
    assert 1.20e9 <= config.num_params(include_embeddings=False) <= 1.22e9


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
        ("rms_norm_eps", dict(rms_norm_eps=-1e-5)),
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
    assert model.layers[0].attn.q_proj.weight.shape == (4 * 16, 66)
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


def test_flops_per_token_palm_formula():
    config = ModelConfig.from_preset("phi1")
    n = config.num_params(include_embeddings=False) + config.vocab_size * config.hidden_size
    assert config.flops_per_token(2048) == 6 * n + 12 * 24 * 2048 * 2048
    # 6N dominates; the attention term adds ~15% at seq 2048 for this shape.
    assert 9.0e9 < config.flops_per_token(2048) < 9.1e9

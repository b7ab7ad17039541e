"""Model builders shared by the modeling tests (a uniquely named module: conftest.py is not importable)."""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from modeling import ModelConfig, Transformer
from modeling.model import to_hf_state


def small_config(**overrides) -> ModelConfig:
    """A 2-layer model that runs in milliseconds; GQA (4 query heads share 2 kv heads) unless overridden."""
    fields = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=160,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        rope_theta=500.0,
        max_seq_len=128,
        attention="sdpa",
    )
    return ModelConfig(**{**fields, **overrides})


# The Phi-1 block (parallel, LayerNorm, GELU, biases) at small_config's size: 16-dim heads, 8 of them rotated.
PHI = dict(parallel_block=True, mlp="gelu", norm="layernorm", bias=True, rotary_dim=8, intermediate_size=256)


def hf_twin(model: Transformer) -> PreTrainedModel:
    """transformers' LlamaForCausalLM or PhiForCausalLM holding exactly our weights (the reference)."""
    config = model.config.to_hf_config()
    hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    reference = AutoModelForCausalLM.from_config(hf_config).to(model.embed.weight.dtype)
    reference.load_state_dict(to_hf_state(model.state_dict(), model.config), strict=True)
    return reference.eval()

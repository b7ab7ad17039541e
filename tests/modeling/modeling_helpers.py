"""Model builders shared by the modeling tests (a uniquely named module: conftest.py is not importable)."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM

from modeling import ModelConfig, Transformer
from modeling.model import hf_name


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


def hf_twin(model: Transformer) -> LlamaForCausalLM:
    """transformers' LlamaForCausalLM holding exactly our weights (the reference implementation)."""
    reference = LlamaForCausalLM(LlamaConfig(**model.config.to_hf_config())).to(model.embed.weight.dtype)
    state = {hf_name(k): v for k, v in model.state_dict().items()}
    reference.load_state_dict(state, strict=True)
    return reference.eval()

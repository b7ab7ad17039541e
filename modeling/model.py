"""A Llama-style decoder in one file: RMSNorm, grouped-query attention with RoPE, SwiGLU, tied or untied head.

Parameters map 1:1 onto transformers' LlamaForCausalLM (same RoPE convention: rotate_half on the two
halves of each head), so checkpoints round-trip through `save_pretrained` / `from_pretrained` unchanged.

Packed sequences: wherever `position_ids` restarts at 0 inside a row a new document begins; attention never
crosses documents and RoPE positions restart. Generation reuses the same rule for left padding: every pad
token gets position 0, so each pad is a one-token document that real tokens never see.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeling.config import ModelConfig

try:  # CUDA-only kernels; absent on CPU machines
    from flash_attn import flash_attn_varlen_func
except ImportError:
    flash_attn_varlen_func = None


def select_backend(requested: str, device: torch.device, dtype: torch.dtype, flash_available: bool) -> str:
    """Resolve the attention backend: "auto" takes flash-attn 2 when it can run here, else SDPA."""
    flash_ok = flash_available and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    if requested == "auto":
        return "flash" if flash_ok else "sdpa"
    if requested == "flash" and not flash_ok:
        raise RuntimeError(
            "attention='flash' needs the flash-attn package, a CUDA device and fp16/bf16 activations "
            f"(flash-attn importable: {flash_available}, device: {device.type}, dtype: {dtype})"
        )
    return requested


# ---- attention layout: which keys each query may see ------------------------------------------------------


@dataclass
class KVCache:
    """Static per-layer key/value buffers [batch, kv_heads, max_len, head_dim] plus each slot's document id."""

    k: list[Tensor]
    v: list[Tensor]
    doc: Tensor  # [batch, max_len]
    length: int = 0  # slots filled so far

    @classmethod
    def empty(
        cls, config: ModelConfig, batch: int, max_len: int, device: torch.device | str, dtype: torch.dtype
    ) -> KVCache:
        shape = (batch, config.num_kv_heads, max_len, config.head_dim)
        return cls(
            k=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)],
            v=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)],
            doc=torch.zeros(batch, max_len, dtype=torch.long, device=device),
        )


@dataclass
class Layout:
    """Per-forward attention structure, built once and shared by all layers."""

    backend: str
    mask: Tensor | None = None  # [B, 1, T, S] bool, True = may attend; None = plain causal
    cu_seqlens: Tensor | None = None  # flash: document boundaries in the flattened batch
    max_seqlen: int = 0
    cache: KVCache | None = None


def document_ids(position_ids: Tensor) -> Tensor:
    """Number each row's documents: a new one starts wherever the position is 0."""
    return torch.cumsum(position_ids == 0, dim=1)


def document_mask(doc_q: Tensor, doc_k: Tensor, q_offset: int = 0) -> Tensor:
    """[B, 1, Tq, Tk] causal mask restricted to same-document pairs; query i sits in key slot q_offset + i."""
    q_slot = torch.arange(q_offset, q_offset + doc_q.shape[1], device=doc_q.device)
    k_slot = torch.arange(doc_k.shape[1], device=doc_k.device)
    causal = k_slot[None, :] <= q_slot[:, None]
    return ((doc_q[:, :, None] == doc_k[:, None, :]) & causal)[:, None]


def cu_seqlens(position_ids: Tensor) -> tuple[Tensor, int]:
    """flash-attn varlen boundaries: every row start and every position-0 token begins a sequence."""
    starts = position_ids == 0
    starts[:, 0] = True
    idx = starts.flatten().nonzero().flatten()
    cu = torch.cat([idx, idx.new_tensor([position_ids.numel()])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype matmuls run in: the autocast dtype when autocast is on, else the activations' own."""
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


# ---- modules -----------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalize in fp32 and scale after casting back, exactly as LlamaRMSNorm does (bf16 parity).
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(
    position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """cos/sin [B, T, 1, head_dim], computed in fp32 from the positions (no buffers: meta-init safe)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
    angles = position_ids[..., None].float() * inv_freq
    angles = torch.cat([angles, angles], dim=-1)[:, :, None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # HF convention: dims [0, d/2) pair with [d/2, d) (rotate_half), not interleaved neighbours.
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, layout: Layout) -> Tensor:
        B, T, _ = x.shape
        q = apply_rope(self.q_proj(x).view(B, T, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).view(B, T, self.n_kv, self.head_dim), cos, sin)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim)

        if layout.backend == "flash":  # [B*T, heads, dim] with sequences delimited by cu_seqlens; GQA native
            out = flash_attn_varlen_func(
                q.reshape(B * T, self.n_heads, self.head_dim),
                k.reshape(B * T, self.n_kv, self.head_dim),
                v.reshape(B * T, self.n_kv, self.head_dim),
                layout.cu_seqlens,
                layout.cu_seqlens,
                layout.max_seqlen,
                layout.max_seqlen,
                causal=True,
            )
            return self.o_proj(out.reshape(B, T, -1))

        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, dim]
        if layout.cache is not None:
            cache, start = layout.cache, layout.cache.length
            cache.k[self.layer_idx][:, :, start : start + T] = k
            cache.v[self.layer_idx][:, :, start : start + T] = v
            k, v = cache.k[self.layer_idx][:, :, : start + T], cache.v[self.layer_idx][:, :, : start + T]
        # Expand kv heads to query heads: works with every SDPA kernel (enable_gqa does not, with masks).
        rep = self.n_heads // self.n_kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)

        if layout.backend == "sdpa":
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=layout.mask, is_causal=layout.mask is None
            )
        else:  # reference: explicit softmax(QK^T / sqrt(d)) V in (at least) fp32, for tests
            acc = torch.promote_types(q.dtype, torch.float32)
            scores = (q.to(acc) @ k.to(acc).transpose(-1, -2)) / math.sqrt(self.head_dim)
            mask = (
                layout.mask
                if layout.mask is not None
                else torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            )
            out = (scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v.to(acc)).to(q.dtype)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, layout: Layout) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, layout)
        return x + self.mlp(self.mlp_norm(x))


# Our block submodule names -> LlamaForCausalLM's.
_HF_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn": "self_attn",
    "mlp_norm": "post_attention_layernorm",
    "mlp": "mlp",
}
_HF_TOP_NAMES = {
    "embed.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


def hf_name(name: str) -> str:
    """Our parameter name -> the LlamaForCausalLM state-dict key."""
    if name.startswith("layers."):
        _, i, sub, rest = name.split(".", 3)
        return f"model.layers.{i}.{_HF_BLOCK_NAMES[sub]}.{rest}"
    return _HF_TOP_NAMES[name]


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_std) everywhere; residual output projections scaled by 1/sqrt(2 * layers) (GPT-2) so the
        residual stream's variance does not grow with depth. Call again after `to_empty` from meta: it also
        re-ties the head, which `to_empty` unties."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                residual = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(
                    module.weight, 0.0, std / math.sqrt(2 * self.config.num_layers) if residual else std
                )
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def _layout(
        self, positions: Tensor, documents: bool, cache: KVCache | None, dtype: torch.dtype
    ) -> Layout:
        backend = select_backend(
            self.config.attention, positions.device, dtype, flash_attn_varlen_func is not None
        )
        if cache is not None:
            # Cached decoding always runs on SDPA/reference over the static cache; flash serves cache-free forwards.
            backend = "sdpa" if backend == "flash" else backend
            start, T = cache.length, positions.shape[1]
            doc = document_ids(positions)
            if start > 0:  # continue the cached prefix's numbering so a continuation stays in its document
                doc = doc + cache.doc[:, start - 1 : start]
            cache.doc[:, start : start + T] = doc
            return Layout(
                backend, mask=document_mask(doc, cache.doc[:, : start + T], q_offset=start), cache=cache
            )
        if backend == "flash":
            cu, max_len = cu_seqlens(positions)
            return Layout(backend, cu_seqlens=cu, max_seqlen=max_len)
        if not documents:
            return Layout(backend)  # plain causal: lets SDPA pick its fastest kernel
        doc = document_ids(positions)
        return Layout(backend, mask=document_mask(doc, doc))

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Logits [B, T, vocab] in fp32 ([B, 1, vocab] with `last_only`, which generation uses at prefill).

        `position_ids` [B, T] (default 0..T-1) restarting at 0 start new documents (packed rows). With a
        `kv_cache` they are required (generation passes them) and the cache advances by T.
        """
        B, T = input_ids.shape
        if kv_cache is not None and position_ids is None:
            raise ValueError("position_ids are required with a kv_cache")
        x = self.embed(input_ids)
        dtype = compute_dtype(x)
        documents = position_ids is not None
        if position_ids is None:
            position_ids = torch.arange(T, device=x.device).expand(B, T)
        layout = self._layout(position_ids, documents, kv_cache, dtype)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, layout)
        if kv_cache is not None:
            kv_cache.length += T
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x)).float()

    # ---- generation ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        eos_token_id: int | None = None,
        pad_token_id: int = 0,
        stop_strings: Sequence[str] = (),
        tokenizer=None,
        seed: int | None = None,
    ) -> list[list[int]]:
        """New tokens per prompt (eos excluded, nothing after it); batched, left-padded, KV-cached.

        Greedy when temperature == 0, else temperature + nucleus (top_p) sampling from a generator seeded by
        `seed`. A sequence also stops once its decoded continuation contains a stop string (the stop string's
        tokens are kept; callers cut the text).
        """
        if stop_strings and tokenizer is None:
            raise ValueError("stop_strings need a tokenizer to decode the continuation")
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs at least one prompt and every prompt needs at least one token")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature=}, {top_p=}")
        if max_new_tokens <= 0:
            return [[] for _ in prompts]
        device = self.embed.weight.device
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        B, L = len(prompts), int(lengths.max())
        # Pads sit on the left with position 0, so each is its own document and prompts keep positions 0..n-1.
        ids = torch.full((B, L), pad_token_id, dtype=torch.long, device=device)
        positions = torch.zeros(B, L, dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            ids[i, L - len(p) :] = torch.tensor(p, device=device)
            positions[i, L - len(p) :] = torch.arange(len(p), device=device)
        cache = KVCache.empty(self.config, B, L + max_new_tokens, device, compute_dtype(self.embed.weight))
        generator = None if seed is None else torch.Generator(device).manual_seed(seed)

        logits = self(ids, positions, kv_cache=cache, last_only=True)[:, -1]
        out: list[list[int]] = [[] for _ in prompts]
        active = [True] * B
        for step in range(max_new_tokens):
            tokens = sample(logits, temperature, top_p, generator)
            for i, t in enumerate(tokens.tolist()):
                if not active[i]:
                    continue
                if t == eos_token_id:
                    active[i] = False
                    continue
                out[i].append(t)
                if stop_strings and any(s in tokenizer.decode(out[i]) for s in stop_strings):
                    active[i] = False
            if not any(active) or step == max_new_tokens - 1:
                break
            # Finished rows keep decoding (batch shape stays fixed); their tokens are ignored.
            logits = self(tokens[:, None], (lengths + step)[:, None], kv_cache=cache)[:, -1]
        return out

    # ---- Hugging Face checkpoints --------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path, tokenizer=None, dtype: torch.dtype | None = None) -> Path:
        """Write a standard LlamaForCausalLM directory (config.json, model.safetensors, generation_config.json,
        tokenizer files when given), atomically: a killed save never leaves a half-written checkpoint."""
        from safetensors.torch import save_file

        tied = self.config.tie_word_embeddings
        state = {
            hf_name(k): v.detach().to("cpu", dtype or v.dtype).contiguous()
            for k, v in self.state_dict().items()
            if not (tied and k == "lm_head.weight")  # HF stores a tied head once, as the embedding
        }
        config = self.config.to_hf_config()
        config["torch_dtype"] = str(state["model.embed_tokens.weight"].dtype).removeprefix("torch.")
        generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            if path.exists():  # replace an older export: move it aside first, so no moment has neither
                old = tmp.with_name(tmp.name + ".old")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return path

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device | None = None
    ) -> Transformer:
        """Load any HF Llama safetensors checkpoint (single file or sharded, tied or untied).

        dtype None keeps the stored dtype; device None loads to CPU.
        """
        from safetensors import safe_open

        path = Path(path)
        config = ModelConfig.from_hf_config(json.loads((path / "config.json").read_text()))
        with torch.device("meta"):  # no memory for the random init that the checkpoint overwrites
            model = cls(config)
        ours = {hf_name(k): k for k in model.state_dict()}
        state: dict[str, Tensor] = {}
        for file in _safetensors_files(path):
            with safe_open(str(file), "pt", device=str(device or "cpu")) as f:
                for key in f.keys():
                    if key.endswith("rotary_emb.inv_freq") or (
                        config.tie_word_embeddings and key == "lm_head.weight"
                    ):
                        continue  # recomputed from positions / the tied head is the embedding
                    if key not in ours:
                        raise ValueError(f"{file}: tensor {key!r} has no counterpart in a Llama model")
                    tensor = f.get_tensor(key)
                    state[ours[key]] = tensor.to(dtype) if dtype is not None else tensor
        if config.tie_word_embeddings:
            state["lm_head.weight"] = state.get("embed.weight")
        missing = sorted(hf_name(k) for k in ours.values() if state.get(k) is None)
        if missing:
            raise ValueError(
                f"{path}: checkpoint lacks {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
        model.load_state_dict(state, assign=True)
        if config.tie_word_embeddings:  # assign=True gives the two modules separate Parameter objects
            model.lm_head.weight = model.embed.weight
        return model


def sample(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Next token per row: argmax at temperature 0, else a draw from the smallest top-p nucleus."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = (logits / temperature).softmax(-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(-1, descending=True)
        # Drop a token once the mass ranked above it already reaches top_p; the top token always stays.
        sorted_probs = sorted_probs.masked_fill(sorted_probs.cumsum(-1) - sorted_probs >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return sorted({path / name for name in json.loads(index.read_text())["weight_map"].values()})
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    raise FileNotFoundError(
        f"{path}: no model.safetensors or model.safetensors.index.json (safetensors only)"
    )

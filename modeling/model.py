"""A decoder-only transformer in one file: the Llama block and the Phi-1 (CodeGen-style) block.

Llama: RMSNorm, grouped-query attention with RoPE, SwiGLU, sequential residuals, no biases.
Phi: one LayerNorm feeding attention and a GELU MLP in parallel, partial RoPE, biases, dropout.
Parameters map onto transformers' LlamaForCausalLM / PhiForCausalLM (same RoPE convention: rotate_half on
the two halves of the rotated dims); the q/k/v and gate/up projections are stored fused here and split at
the HF boundary (`to_hf_state` / `from_pretrained`), so checkpoints round-trip unchanged.

Packed sequences: wherever `position_ids` restarts at 0 inside a row a new document begins; attention never
crosses documents and RoPE positions restart. Generation reuses the same rule for left padding: every pad
token gets position 0, so each pad is a one-token document that real tokens never see.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeling.config import ModelConfig
from modeling.loss import linear_cross_entropy

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
    """Static per-layer key/value buffers [batch, kv_heads, max_len, head_dim] plus each slot's document id.

    Attention always reads the whole buffer (unfilled slots are masked as "future"), and new keys are
    written with `index_copy_` at tensor slot indices, so every decode step has the same shapes: a compiled
    step does not recompile as the cache fills.
    """

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

    @property
    def max_len(self) -> int:
        return self.doc.shape[1]


@dataclass
class Layout:
    """Per-forward attention structure, built once (outside any compiled region) and shared by all layers."""

    backend: str
    # [B, 1, groups * T, S], with each kv head's query heads stacked as extra rows (see Attention): bool
    # (True = may attend) for the reference backend, additive (0 / -inf) in the compute dtype for SDPA;
    # None = plain causal.
    mask: Tensor | None = None
    cu_seqlens: Tensor | None = None  # flash: document boundaries in the flattened batch
    max_seqlen: int = 0
    cache: KVCache | None = None
    slots: Tensor | None = None  # cache slots this forward's tokens are written to


def document_ids(position_ids: Tensor) -> Tensor:
    """Number each row's documents: a new one starts wherever the position is 0."""
    return torch.cumsum(position_ids == 0, dim=1)


def document_mask(doc_q: Tensor, doc_k: Tensor, q_slot: Tensor | None = None) -> Tensor:
    """[B, 1, Tq, Tk] causal mask restricted to same-document pairs; query i sits in key slot q_slot[i]."""
    if q_slot is None:
        q_slot = torch.arange(doc_q.shape[1], device=doc_q.device)
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


# ---- memory-lean autograd: what the pointwise ops keep for backward ---------------------------------------
# Autograd records every intermediate a pointwise chain needs: RMSNorm's fp32 copy and normalised copy, silu's
# output, RoPE's rotated q and k beside the projection output they came from. These Functions keep only their
# input (which something else keeps anyway, or which replaces what was kept) and recompute the rest in
# backward, where it costs one more pointwise pass per layer. Forward math is op for op what autograd ran.
# Without a graph to record (inference, generation) the plain functions run instead: a Function's apply costs
# Python time per call (the profiler put 5% of an eager batch-8 decode step in the norms' apply alone).


def needs_graph(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """weight * (x * rsqrt(mean(x^2) + eps)) in (at least) fp32, cast before the scale as LlamaRMSNorm does
    (bf16 parity), and the per-row 1/rms."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (xf * rstd).to(x.dtype), rstd


def silu_mul(gate_up: Tensor) -> Tensor:
    """silu(gate) * up from the fused [..., 2 x width] gate/up projection."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class _RMSNorm(torch.autograd.Function):
    """`rms_norm` keeping x and the per-row 1/rms."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        out, rstd = rms_norm(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, rstd = ctx.saved_tensors
        normed = x.to(rstd.dtype) * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed.to(x.dtype)).flatten(0, -2).sum(0).to(weight.dtype)
        # d/dx of x * rstd(x): rstd * (g - normed * mean(g * normed)), g the gradient of the normalised x.
        g = (grad * weight).to(x.dtype).to(rstd.dtype)
        grad_x = rstd * (g - normed * (g * normed).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), grad_weight, None


class _SiluMul(torch.autograd.Function):
    """`silu_mul` keeping the gate/up projection only."""

    @staticmethod
    def forward(ctx, gate_up: Tensor) -> Tensor:
        ctx.save_for_backward(gate_up)
        return silu_mul(gate_up)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (gate_up,) = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        # silu_backward is the kernel autograd itself runs for F.silu.
        return torch.cat([torch.ops.aten.silu_backward(grad * up, gate), grad * F.silu(gate)], dim=-1)


def rotate_(x: Tensor, cos: Tensor, sin: Tensor) -> None:
    """In place, the first cos.shape[-1] dims of each head (all for Llama, 32 of 64 for Phi-1): HF's
    rotate_half convention, dims [0, d/2) pair with [d/2, d), not interleaved neighbours."""
    half = cos.shape[-1] // 2
    cos, sin = cos[..., :half], sin[..., :half]  # the tables repeat each frequency for both halves
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    # Separate products and sums (no fused multiply-add), so fp32 results equal transformers' bit for bit.
    new1, x1_sin = x1 * cos - x2 * sin, x1 * sin
    x2.mul_(cos).add_(x1_sin)
    x1.copy_(new1)


class _RotaryQK(torch.autograd.Function):
    """RoPE on the q and k heads of the qkv projection's output [B, T, heads, head_dim], in place: q, k and v
    then stay views of that one tensor, which attention keeps, so no rotated copies are stored."""

    @staticmethod
    def forward(ctx, qkv: Tensor, cos: Tensor, sin: Tensor, rotated_heads: int) -> Tensor:
        ctx.mark_dirty(qkv)
        ctx.save_for_backward(cos, sin)
        ctx.rotated_heads = rotated_heads
        rotate_(qkv[:, :, :rotated_heads], cos, sin)
        return qkv

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, sin = ctx.saved_tensors
        grad = grad.clone()  # an incoming gradient may be shared: never rotate it in place
        rotate_(grad[:, :, : ctx.rotated_heads], cos, -sin)  # the inverse rotation
        return grad, None, None, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if needs_graph(x, self.weight):
            return _RMSNorm.apply(x, self.weight, self.eps)
        return rms_norm(x, self.weight, self.eps)[0]


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
    return RMSNorm(config.hidden_size, config.norm_eps)


def rope_angles(positions: Tensor, rotary_dim: int, theta: float) -> Tensor:
    """[..., rotary_dim] fp32 angles position * theta^(-2i/rotary_dim), each frequency twice (HF layout)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, device=positions.device).float() / rotary_dim)
    angles = positions[..., None].float() * inv_freq
    return torch.cat([angles, angles], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.dropout = config.attn_dropout
        h, q, kv = config.hidden_size, self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.split = [self.n_heads, self.n_kv, self.n_kv]
        self.qkv_proj = nn.Linear(h, q + 2 * kv, bias=config.bias)  # one matmul for q, k and v
        self.out_proj = nn.Linear(q, h, bias=config.bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, layout: Layout, layer_idx: int) -> Tensor:
        B, T, _ = x.shape
        qkv = self.qkv_proj(x).view(B, T, -1, self.head_dim)
        if needs_graph(qkv):
            qkv = _RotaryQK.apply(qkv, cos, sin, self.n_heads + self.n_kv)
        else:  # also: torch.compile traces a Function's mark_dirty only with grad
            rotate_(qkv[:, :, : self.n_heads + self.n_kv], cos, sin)
        q, k, v = qkv.split(self.split, dim=2)
        dropout = self.dropout if self.training else 0.0

        if layout.backend == "flash":  # [B*T, heads, dim] with sequences delimited by cu_seqlens; GQA native
            out = flash_attn_varlen_func(
                q.reshape(B * T, self.n_heads, self.head_dim),
                k.reshape(B * T, self.n_kv, self.head_dim),
                v.reshape(B * T, self.n_kv, self.head_dim),
                layout.cu_seqlens,
                layout.cu_seqlens,
                layout.max_seqlen,
                layout.max_seqlen,
                dropout_p=dropout,
                causal=True,
            )
            return self.out_proj(out.reshape(B, T, -1))

        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, dim]
        if layout.cache is not None:  # write this step's keys, then attend over the whole static buffer
            k = layout.cache.k[layer_idx].index_copy_(2, layout.slots, k)
            v = layout.cache.v[layer_idx].index_copy_(2, layout.slots, v)
        if layout.mask is None:  # plain causal: SDPA picks its fastest kernel and shares kv heads itself
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=self.n_kv != self.n_heads
            )
            return self.out_proj(out.transpose(1, 2).reshape(B, T, -1))
        # Grouped-query attention without copying keys: the query heads sharing a kv head become extra query
        # rows of that head ([B, kv_heads, groups * T, dim]); the layout's mask is stacked the same way.
        qg = q.reshape(B, self.n_kv, -1, self.head_dim)
        if layout.backend == "sdpa":
            out = F.scaled_dot_product_attention(qg, k, v, attn_mask=layout.mask, dropout_p=dropout)
        else:  # reference: explicit softmax(QK^T / sqrt(d)) V in (at least) fp32, for tests
            acc = torch.promote_types(q.dtype, torch.float32)
            scores = (qg.to(acc) @ k.to(acc).transpose(-1, -2)) / math.sqrt(self.head_dim)
            probs = F.dropout(scores.masked_fill(~layout.mask, float("-inf")).softmax(-1), dropout)
            out = (probs @ v.to(acc)).to(q.dtype)
        return self.out_proj(out.view(B, self.n_heads, T, self.head_dim).transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU (in_proj holds gate and up, fused into one matmul) or the tanh-approximated GELU MLP of Phi."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        width = config.intermediate_size
        self.in_proj = nn.Linear(config.hidden_size, 2 * width if self.swiglu else width, bias=config.bias)
        self.out_proj = nn.Linear(width, config.hidden_size, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.swiglu:
            gate_up = self.in_proj(x)
            return self.out_proj(_SiluMul.apply(gate_up) if needs_graph(gate_up) else silu_mul(gate_up))
        return self.out_proj(F.gelu(self.in_proj(x), approximate="tanh"))  # = HF's "gelu_new"


def dropout_or_identity(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = make_norm(config)
        self.attn = Attention(config)
        # Parallel (Phi): attention and MLP both read attn_norm's output, so there is no second norm.
        self.mlp_norm = None if config.parallel_block else make_norm(config)
        self.mlp = MLP(config)
        self.resid_dropout = dropout_or_identity(config.resid_dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, layout: Layout) -> Tensor:
        h = self.attn_norm(x)
        a = self.resid_dropout(self.attn(h, cos, sin, layout, self.layer_idx))
        if self.mlp_norm is None:
            return a + self.resid_dropout(self.mlp(h)) + x  # PhiDecoderLayer's order of additions
        x = x + a
        return x + self.resid_dropout(self.mlp(self.mlp_norm(x)))


class LMHead(nn.Linear):
    """The output projection; given targets it returns the fused chunked cross-entropy instead of logits. The
    loss runs inside this module's forward so that engines which gather a module's parameters in forward
    hooks (DeepSpeed ZeRO-3, FSDP) see the head's weight used."""

    def forward(
        self, x: Tensor, targets: Tensor | None = None, reduction: str = "mean", chunk_rows: int = 1024
    ):
        if targets is None:
            return super().forward(x)
        return linear_cross_entropy(
            x, self.weight, self.bias, targets, reduction=reduction, chunk_rows=chunk_rows
        )


def hf_pieces(name: str, config: ModelConfig) -> list[tuple[str, int]]:
    """Our parameter name -> [(HF state-dict key, rows)]: a fused tensor is the HF tensors stacked on dim 0."""
    phi = config.hf_model_type() == "phi"
    module, _, param = name.rpartition(".")
    if not module.startswith("layers."):
        top = {"embed": "model.embed_tokens", "norm": "model.final_layernorm" if phi else "model.norm"}
        return [(f"{top.get(module, module)}.{param}", 0)]
    _, i, sub = module.split(".", 2)
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    width = config.intermediate_size
    names = {
        "attn_norm": [("input_layernorm", 0)],
        "mlp_norm": [("post_attention_layernorm", 0)],
        "attn.qkv_proj": [("self_attn.q_proj", q), ("self_attn.k_proj", kv), ("self_attn.v_proj", kv)],
        "attn.out_proj": [("self_attn.dense" if phi else "self_attn.o_proj", 0)],
        "mlp.in_proj": [("mlp.fc1", 0)] if phi else [("mlp.gate_proj", width), ("mlp.up_proj", width)],
        "mlp.out_proj": [("mlp.fc2" if phi else "mlp.down_proj", 0)],
    }[sub]
    return [(f"model.layers.{i}.{hf}.{param}", rows) for hf, rows in names]


def to_hf_state(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Our state dict -> LlamaForCausalLM's / PhiForCausalLM's (fused projections split)."""
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        pieces = hf_pieces(name, config)
        parts = tensor.split([rows for _, rows in pieces]) if len(pieces) > 1 else [tensor]
        out.update({key: part for (key, _), part in zip(pieces, parts)})
    return out


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_dropout = dropout_or_identity(config.embed_dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = make_norm(config)
        self.lm_head = LMHead(config.hidden_size, config.vocab_size, bias=config.bias)
        # cos/sin of positions 0..max_seq_len-1 (not saved; rebuilt by init_weights / from_pretrained).
        self.register_buffer("rope_cos", torch.empty(config.max_seq_len, config.rotary_dim), persistent=False)
        self.register_buffer("rope_sin", torch.empty(config.max_seq_len, config.rotary_dim), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """N(0, init_std) for weights, zero biases; residual output projections scaled by 1/sqrt(2 * layers)
        (GPT-2) so the residual stream's variance does not grow with depth. Call again after `to_empty` from
        meta: it also re-ties the head, which `to_empty` unties, and rebuilds the RoPE tables."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                residual = name.endswith("out_proj")
                nn.init.normal_(
                    module.weight, 0.0, std / math.sqrt(2 * self.config.num_layers) if residual else std
                )
            if isinstance(module, (RMSNorm, nn.LayerNorm)):
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        self.init_rope(self.rope_cos.device)

    @torch.no_grad()
    def init_rope(self, device: torch.device | str) -> None:
        angles = rope_angles(
            torch.arange(self.config.max_seq_len, device=device),
            self.config.rotary_dim,
            self.config.rope_theta,
        )
        self.rope_cos, self.rope_sin = angles.cos(), angles.sin()

    def _rope(self, position_ids: Tensor, table: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos/sin [B, T, 1, rotary_dim] in the compute dtype: looked up in the fp32 table when the positions
        are known to fit it, else computed from the positions (the same fp32 formula)."""
        if table and self.rope_cos.dtype == torch.float32:  # a model.to(bf16) also casts buffers: not then
            cos, sin = F.embedding(position_ids, self.rope_cos), F.embedding(position_ids, self.rope_sin)
        else:
            angles = rope_angles(position_ids, self.config.rotary_dim, self.config.rope_theta)
            cos, sin = angles.cos(), angles.sin()
        return cos[:, :, None].to(dtype), sin[:, :, None].to(dtype)

    def _backend(self, device: torch.device, dtype: torch.dtype) -> str:
        return select_backend(self.config.attention, device, dtype, flash_attn_varlen_func is not None)

    def _stacked(self, mask: Tensor, backend: str, dtype: torch.dtype) -> Tensor:
        """The grouped-query row layout of Attention; for SDPA also converted once to the additive float mask
        it would otherwise build from a boolean one in every layer."""
        groups = self.config.num_heads // self.config.num_kv_heads
        mask = mask.repeat(1, 1, groups, 1) if groups > 1 else mask
        if backend == "reference":
            return mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))

    def _cache_layout(self, positions: Tensor, slots: Tensor, cache: KVCache, dtype: torch.dtype) -> Layout:
        """Write T new tokens into cache `slots` (a tensor, so a compiled decode step never specializes on it)
        and mask them over the whole static buffer. Cached decoding always runs on SDPA/reference; flash
        serves cache-free forwards."""
        backend = self._backend(positions.device, dtype)
        backend = "sdpa" if backend == "flash" else backend
        # Continue the cached prefix's document numbering, so a continuation stays in its document; at slot 0
        # this reads the still-unwritten (zero) slot 0, so a fresh prefix counts from 1.
        doc = document_ids(positions) + cache.doc.index_select(1, (slots[:1] - 1).clamp(min=0))
        cache.doc.index_copy_(1, slots, doc)
        mask = document_mask(doc, cache.doc, slots)
        return Layout(backend, mask=self._stacked(mask, backend, dtype), cache=cache, slots=slots)

    @torch.compiler.disable  # data-dependent shapes (cu_seqlens) and Python-side cache state stay eager
    def _layout(
        self, positions: Tensor, documents: bool, cache: KVCache | None, dtype: torch.dtype
    ) -> Layout:
        if cache is not None:
            start, T = cache.length, positions.shape[1]
            if start + T > cache.max_len:
                raise ValueError(f"KV cache of {cache.max_len} slots cannot take {start + T} tokens")
            slots = torch.arange(start, start + T, device=positions.device)
            return self._cache_layout(positions, slots, cache, dtype)
        backend = self._backend(positions.device, dtype)
        if backend == "flash":
            cu, max_len = cu_seqlens(positions)
            return Layout(backend, cu_seqlens=cu, max_seqlen=max_len)
        if documents:
            doc = document_ids(positions)
            return Layout(backend, mask=self._stacked(document_mask(doc, doc), backend, dtype))
        if backend == "reference":  # the explicit path always takes a mask
            T = positions.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=positions.device).tril()
            return Layout(backend, mask=self._stacked(causal[None, None], backend, dtype))
        return Layout(backend)  # plain causal: lets SDPA pick its fastest kernel

    def _blocks(self, x: Tensor, positions: Tensor, table: bool, layout: Layout) -> Tensor:
        cos, sin = self._rope(positions, table, compute_dtype(x))
        for layer in self.layers:
            x = layer(x, cos, sin, layout)
        return x

    def decode_step(self, tokens: Tensor, positions: Tensor, slot: Tensor, cache: KVCache) -> Tensor:
        """One KV-cached decoding step: tokens and positions [B, 1] written at cache `slot` ([1], a tensor)
        -> next-token logits [B, vocab] (fp32). Every shape is fixed for a given batch and cache, and nothing
        reads Python-side cache state, so `torch.compile(dynamic=False)` compiles it once per generate shape;
        the caller keeps `slot` inside the cache and advances `cache.length`. `generate(compile=True)` runs it
        compiled."""
        x = self.embed(tokens)
        layout = self._cache_layout(positions, slot, cache, compute_dtype(x))
        x = self._blocks(x, positions, cache.max_len <= self.config.max_seq_len, layout)
        return self.lm_head(self.norm(x))[:, -1].float()

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None = None,
        *,
        targets: Tensor | None = None,
        loss_reduction: str = "mean",
        kv_cache: KVCache | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Logits [B, T, vocab] in fp32 ([B, 1, vocab] with `last_only`, which generation uses at prefill), or,
        with `targets` [B, T] (int64, -100 = ignored), the scalar fp32 cross-entropy ("mean" over counted
        targets or their "sum") from the chunked LM head + loss of modeling/loss.py: the full logits are
        never materialized.

        `position_ids` [B, T] (default 0..T-1) restarting at 0 start new documents (packed rows). With a
        `kv_cache` they are required (generation passes them) and the cache advances by T.
        """
        B, T = input_ids.shape
        if kv_cache is not None and position_ids is None:
            raise ValueError("position_ids are required with a kv_cache")
        x = self.embed_dropout(self.embed(input_ids))
        dtype = compute_dtype(x)
        documents = position_ids is not None
        if position_ids is None:
            position_ids = torch.arange(T, device=x.device).expand(B, T)
        layout = self._layout(position_ids, documents, kv_cache, dtype)
        # The table covers 0..max_seq_len-1: default positions and the cache's slots are known to fit it;
        # caller-given packed positions are not (they may continue a long document), so they are computed.
        fits = kv_cache.max_len if kv_cache is not None else (T if not documents else None)
        x = self._blocks(x, position_ids, fits is not None and fits <= self.config.max_seq_len, layout)
        if kv_cache is not None:
            kv_cache.length += T
        if targets is not None:
            return self.lm_head(self.norm(x), targets, loss_reduction, self.config.loss_chunk_rows)
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
        compile: bool = False,
    ) -> list[list[int]]:
        """New tokens per prompt (eos excluded, nothing after it); batched, left-padded, KV-cached.

        Greedy when temperature == 0, else temperature + nucleus (top_p) sampling from a generator seeded by
        `seed`. A sequence also stops once its decoded continuation contains a stop string (the stop string's
        tokens are kept; callers cut the text). `compile`: run the decoding steps (not the prefill, whose
        length varies) through `torch.compile(decode_step, dynamic=False)`; it compiles once per (batch,
        prompt + new tokens) shape, which pays off for long or repeated generations of one shape. On CPU the
        first call re-lays the projection weights column-major (`_column_major_projections`).
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
        if device.type == "cpu":
            self._column_major_projections()
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
        stops = StopStrings(stop_strings, tokenizer)
        step_fn = functools.partial(compiled_decode_step(), self) if compile else self.decode_step

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
                if stops.hit(out[i]):
                    active[i] = False
            if not any(active) or step == max_new_tokens - 1:
                break
            # Finished rows keep decoding (batch shape stays fixed); their tokens are ignored.
            slot = torch.full((1,), cache.length, device=device)
            logits = step_fn(tokens[:, None], (lengths + step)[:, None], slot, cache)
            cache.length += 1
        return out

    @torch.no_grad()
    def _column_major_projections(self) -> None:
        """Store every projection weight column-major, in place: same shape and values, strides (1, rows).
        F.linear then hands BLAS a row-major [in, out] matrix, and CPU matrix-vector products (decoding at
        batch 1) stream that form about twice as fast as the [out, in] one (bench/README.md, "decode layout").
        Prefill is as fast either way; training is not faster, so only generate() calls this (a model trained
        afterwards computes the same numbers). fp32 only: bf16 products were ~9% slower column-major and fp16
        ones 5-7x slower. Skips weights that share their storage (an engine's flat buffer: FSDP, DeepSpeed),
        which is not ours to replace."""
        for module in self.modules():
            w = module.weight if isinstance(module, nn.Linear) else None
            if w is None or w.dtype != torch.float32 or w.stride(0) == 1:
                continue
            if (
                w.untyped_storage().nbytes() == w.numel() * w.element_size()
            ):  # not a view into a shared buffer
                w.data = w.t().contiguous().t()

    # ---- Hugging Face checkpoints --------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path, tokenizer=None, dtype: torch.dtype | None = None) -> Path:
        """Write a standard LlamaForCausalLM or PhiForCausalLM directory (`config.hf_model_type()`): config.json,
        model.safetensors, generation_config.json and the tokenizer files when given, atomically: a killed save
        never leaves a half-written checkpoint."""
        from safetensors.torch import save_file

        tied = self.config.tie_word_embeddings
        ours = {k: v for k, v in self.state_dict().items() if not (tied and k == "lm_head.weight")}
        # HF stores a tied head once, as the embedding; split (fused) tensors are made contiguous copies.
        state = {
            k: v.detach().to("cpu", dtype or v.dtype).contiguous()
            for k, v in to_hf_state(ours, self.config).items()
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
        """Load an HF Llama or Phi safetensors checkpoint (single file or sharded, tied or untied).

        dtype None keeps the stored dtype; device None loads to CPU.
        """
        from safetensors import safe_open

        path = Path(path)
        config = ModelConfig.from_hf_config(json.loads((path / "config.json").read_text()))
        with torch.device("meta"):  # no memory for the random init that the checkpoint overwrites
            model = cls(config)
        tied = config.tie_word_embeddings
        pieces = {k: hf_pieces(k, config) for k in model.state_dict() if not (tied and k == "lm_head.weight")}
        wanted = {key for parts in pieces.values() for key, _ in parts}
        loaded: dict[str, Tensor] = {}
        for file in _safetensors_files(path):
            with safe_open(str(file), "pt", device=str(device or "cpu")) as f:
                for key in f.keys():
                    if key.endswith("rotary_emb.inv_freq") or (tied and key == "lm_head.weight"):
                        continue  # recomputed from positions / the tied head is the embedding
                    if key not in wanted:
                        raise ValueError(
                            f"{file}: tensor {key!r} has no counterpart in this {config.hf_model_type()} model"
                        )
                    tensor = f.get_tensor(key)
                    loaded[key] = tensor.to(dtype) if dtype is not None else tensor
        missing = sorted(wanted - set(loaded))
        if missing:
            raise ValueError(
                f"{path}: checkpoint lacks {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
        state = {k: torch.cat([loaded[key] for key, _ in parts]) for k, parts in pieces.items()}
        if tied:
            state["lm_head.weight"] = state["embed.weight"]
        model.load_state_dict(state, assign=True)
        if tied:  # assign=True gives the two modules separate Parameter objects
            model.lm_head.weight = model.embed.weight
        model.init_rope(model.embed.weight.device)
        return model


@functools.cache
def compiled_decode_step() -> Callable:
    """`Transformer.decode_step` under torch.compile, built once per process; dynamo keeps a graph per model
    and shape. Kept off the model instances, which stay picklable and deep-copyable."""
    return torch.compile(Transformer.decode_step, dynamic=False, fullgraph=True)


class StopStrings:
    """Incremental stop-string check: a new occurrence must end in the newest token, and it spans at most one
    token per byte of the stop string, so decoding the last (longest stop in bytes + 1) tokens finds it; the
    extra token keeps a leading space that a tokenizer drops from the first token it decodes. O(1) per step,
    where decoding the whole continuation every step is O(n^2) per sequence."""

    def __init__(self, stop_strings: Sequence[str], tokenizer):
        self.strings, self.tokenizer = tuple(stop_strings), tokenizer
        self.window = max((len(s.encode()) for s in self.strings), default=0) + 1

    def hit(self, tokens: list[int]) -> bool:
        if not self.strings:
            return False
        text = self.tokenizer.decode(tokens[-self.window :])
        return any(s in text for s in self.strings)


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

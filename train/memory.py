"""Peak memory of one training step per GPU, estimated from the model shape, batch, precision and engine.

The estimate adds up (bytes per device):
- model states (Rajbhandari et al. 2020, "ZeRO", Sec. 3): parameters, gradients and AdamW states, each in the
  dtype the engine keeps it in and divided by the world size where the engine shards it;
- activations saved for backward, counted tensor by tensor for our block (below), times the layers; with
  activation checkpointing only each block's input is kept, plus one block recomputed during backward;
- the LM head + loss: the plain path keeps [tokens, vocab] logits in fp32 (and their log-softmax and gradient);
  the fused chunked loss (modeling/loss.py) holds one chunk of rows and the head's fp32 gradient;
- temporaries: one block's activations of gradient working set during backward, the optimizer's foreach buffers
  (not with the fused CUDA AdamW), and DeepSpeed's gradient bucket.

Saved activations per token of one block (h hidden, q = heads x head_dim, kv = kv_heads x head_dim, i MLP width,
c the matmul dtype's bytes, r the residual stream's bytes; SDPA/flash attention keeps no [seq, seq] tensor), as
modeling/model.py's memory-lean Functions keep them:
  norm (RMSNorm and LayerNorm): its input and the output its matmul consumer keeps: (r + c) h
  attention: the qkv projection, rotated in place (q, k and v are views of it), and the attention output, which
             o_proj reads as a view: c (2q + 2kv), plus the fp32 log-sum-exp per head
  MLP: SwiGLU the gate/up projection and the product (silu recomputed in backward): 3 c i; GELU: its input
       and output: 2 c i
  dropout: a one-byte mask per residual dropout (h each)
A sequential (Llama) block has two norms, a parallel (Phi) block one. Cross-check against Korthikanti et al.
2022 ("Reducing Activation Recomputation", Eq. 1): a GPT block in 16-bit keeps sbh(34 + 5as/h); for the same
block (LayerNorm, 4h GELU MLP, r = c = 2) this count gives 2(r + c) + c(3 + 2) + 2c*4 + 2 = 36 h per token,
and their 5as/h attention-matrix term vanishes with flash/SDPA kernels; ours keeps 34 h (the same block, no
separate rotated q and k: 2(r + c) + 4c + 2c*4 + 2).

Validated against the peak RSS of real CPU training steps (fp32) in `python -m train.memory validate`; the
measured error is in train/README.md and the tests hold the estimate to it. The per-block count is also held
to within 2% of the storages autograd really keeps for one block (tests/modeling/test_model_backward.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from modeling import ModelConfig

GIB = 2**30
# Usable memory per device model: the marketing capacity in GiB (A100 40GB: 40,960 MiB; 80GB: 81,920 MiB;
# H100 SXM 80GB: 81,559 MiB as torch reports it, rounded down).
DEVICES = {"A100-40GB": 40 * GIB, "A100-80GB": 80 * GIB, "H100-80GB": 79.6 * GIB}
# What a CUDA process holds outside the PyTorch allocator (context, cuBLAS/NCCL workspaces), and the share of
# the allocator's reserve lost to fragmentation: an assumption, not measured here (no GPU on this machine).
CUDA_OVERHEAD = 1.5 * GIB
FRAGMENTATION = 0.10
MAX_MICRO_BATCH = 1024


@dataclass(frozen=True)
class Setup:
    """How a step runs: engine ("single", "ddp", "deepspeed", "fsdp"), ZeRO stage (DeepSpeed), world size,
    precision ("bf16", "fp16" or "fp32"), activation checkpointing, the fused loss, the fused optimizer."""

    engine: str = "single"
    zero_stage: int = 0
    world: int = 1
    precision: str = "bf16"
    checkpointing: bool = False
    fused_loss: bool = True
    fused_optimizer: bool = True
    bucket_elements: int = 0  # DeepSpeed reduce_bucket_size (gradient bucket, in elements)
    # The attention kernel keeps the [seq, seq] probabilities: PyTorch's math SDPA, which the CPU takes for
    # attention dropout. Flash and memory-efficient GPU kernels (dropout included) do not.
    attention_matrix: bool = False

    @property
    def shards_states(self) -> bool:
        return self.engine == "fsdp" or (self.engine == "deepspeed" and self.zero_stage >= 1)


@dataclass
class Estimate:
    """Bytes per device. Model states live through the whole step; on top of them the step peaks in one of three
    phases: the end of forward (every saved activation plus the loss's working set), backward (saved
    activations, the recomputed block with checkpointing, the gradients as they fill), or the optimizer step."""

    params: float
    optimizer: float
    grads_kept: float  # gradient buffers an engine keeps between steps (DDP buckets, ZeRO partitions)
    grads: float  # gradients created in backward and freed after the step (set_to_none)
    activations: float  # saved for backward at the end of forward
    loss: float  # the LM head + loss working set at the end of forward
    backward_work: float  # backward's peak on top of the activations: gradients so far, recomputed block
    step_work: float  # optimizer step intermediates

    @property
    def states(self) -> float:
        return self.params + self.optimizer + self.grads_kept

    @property
    def phases(self) -> dict[str, float]:
        return {
            "forward": self.activations + self.loss,
            "backward": self.activations + self.backward_work,
            "step": self.grads + self.step_work,
        }

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    @property
    def total(self) -> float:
        return self.states + max(self.phases.values())

    def fits(self, capacity: float) -> bool:
        return self.total * (1 + FRAGMENTATION) + CUDA_OVERHEAD <= capacity


def dtype_bytes(setup: Setup) -> tuple[int, int]:
    """(matmul activations, residual stream) bytes per element. accelerate's autocast keeps fp32 parameters, so
    the residual stream stays fp32; DeepSpeed and FSDP2 (param_dtype bf16) run the whole model in 16 bits."""
    if setup.precision == "fp32":
        return 4, 4
    return 2, (2 if setup.engine in ("deepspeed", "fsdp") else 4)


def norm_bytes(config: ModelConfig, setup: Setup, consumer_keeps_output: bool = True) -> float:
    """Bytes per token one norm keeps for backward: its input, and the copy of its output a matmul consumer
    keeps (the fused loss keeps none: it computes its gradients in forward)."""
    c, r = dtype_bytes(setup)
    return (r + (c if consumer_keeps_output else 0)) * config.hidden_size


def block_activation_bytes(config: ModelConfig, setup: Setup, seq_len: int) -> float:
    """Bytes per token saved for backward by one block (see the module docstring)."""
    c, _ = dtype_bytes(setup)
    h, i = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    norm = norm_bytes(config, setup)
    norms = 1 if config.parallel_block else 2
    attention = c * (2 * q + 2 * kv) + 4 * config.num_heads
    mlp = (3 if config.mlp == "swiglu" else 2) * c * i
    dropout = 2 * h if config.resid_dropout > 0 else 0
    if setup.attention_matrix:  # softmax output, and with dropout its mask (1 byte) and the dropped copy
        attention += config.num_heads * seq_len * (2 * c + 1 if config.attn_dropout > 0 else c)
    return norms * norm + attention + mlp + dropout


def estimate(config: ModelConfig, micro_batch: int, seq_len: int, setup: Setup) -> Estimate:
    """Peak bytes per device of one steady-state training step (forward, backward, optimizer step)."""
    P = config.num_params()
    n = setup.world if setup.shards_states else 1
    c, r = dtype_bytes(setup)
    h, V, L = config.hidden_size, config.vocab_size, config.num_layers
    layer_params = (config.num_params(include_embeddings=False) - h) / L
    head_params = V * h
    grads_kept = 0.0
    if setup.engine == "deepspeed" and setup.precision != "fp32":
        # 16-bit weights and gradients; fp32 master weights + Adam m, v (12 bytes) sharded from ZeRO-1; the
        # 16-bit gradients from ZeRO-2, which keeps an fp32 gradient partition and a reduce bucket; weights
        # from ZeRO-3, which gathers this and the prefetched layer.
        params = 2 * P / (setup.world if setup.zero_stage >= 3 else 1)
        params += 2 * 2 * layer_params if setup.zero_stage >= 3 else 0
        grads = 2 * P / (setup.world if setup.zero_stage >= 2 else 1)
        optimizer = 12 * P / n
        if setup.zero_stage >= 2:
            grads_kept = 4 * P / setup.world + 2 * setup.bucket_elements
    else:
        # fp32 weights, gradients and Adam m, v (autocast computes in 16 bits from fp32 weights). FSDP2 shards
        # them and all-gathers one block (and prefetches the next) in bf16, and the root's embedding + head.
        params, grads, optimizer = 4 * P / n, 4 * P / n, 8 * P / n
        if setup.engine == "fsdp":
            params += c * (2 * layer_params + 2 * head_params)
        if setup.engine == "ddp":
            grads_kept = 4 * P  # DDP's bucket copy of the gradients (no gradient_as_bucket_view)
    tokens = micro_batch * seq_len
    block = block_activation_bytes(config, setup, seq_len) * tokens
    final_norm = norm_bytes(config, setup, consumer_keeps_output=not setup.fused_loss) * tokens
    residual_grads = 2 * r * h * tokens  # the residual stream's gradient and the block output's
    if setup.checkpointing:  # each block's input is kept; backward recomputes one block at a time, and the
        activations = L * r * h * tokens + final_norm  # peak comes at its end, with every gradient filled
        backward_work = block + residual_grads + grads
    else:  # the peak comes at its start (activations free as gradients fill): only the head's gradient exists
        activations = L * block + final_norm
        backward_work = residual_grads + grads * head_params / P
    if setup.fused_loss:
        # Forward already computes the gradients w.r.t. the hidden states (c x h per token, kept for backward)
        # and the head's weight (fp32); one chunk of rows holds its logits, their fp32 copy and softmax gradient.
        rows = min(config.loss_chunk_rows, tokens)
        activations += c * h * tokens + 4 * head_params
        loss = rows * V * (c + 8 if c != 4 else 8)
    else:
        # [tokens, V] logits in c, their fp32 copy (the same buffer in fp32), the log-softmax kept for backward
        # and, at the start of backward, its gradient: 12 bytes per logit plus the 16-bit copy under autocast.
        loss = tokens * V * (12 + (c if c != 4 else 0))
    # foreach AdamW builds intermediates the size of the (local) parameters; the fused CUDA kernel does not.
    step_work = 0.0 if setup.fused_optimizer or setup.engine == "deepspeed" else 2 * 4 * P / n
    return Estimate(params, optimizer, grads_kept, grads, activations, loss, backward_work, step_work)


def largest_micro_batch(config: ModelConfig, seq_len: int, setup: Setup, capacity: float) -> int:
    """The largest micro-batch whose step fits `capacity` (0: not even one sequence)."""
    low, high = 0, MAX_MICRO_BATCH
    while low < high:  # the estimate grows with the micro-batch
        mid = (low + high + 1) // 2
        if estimate(config, mid, seq_len, setup).fits(capacity):
            low = mid
        else:
            high = mid - 1
    return low


# ---- from a recipe ----------------------------------------------------------------------------------------------


def setup_for(plan, fused_loss: bool) -> Setup:
    """The Setup a stage plan launches with (engine and ZeRO stage from its accelerate config)."""
    from train.launch import accelerate_config_path

    launch, section = plan.recipe.launch, plan.section
    engine, zero, bucket = ("ddp" if plan.world_size > 1 else "single"), 0, 0
    path = accelerate_config_path(launch)
    if path is not None:
        accel = yaml.safe_load(path.read_text())
        kind = accel.get("distributed_type", "")
        if kind == "DEEPSPEED":
            ds_file = accel.get("deepspeed_config", {}).get("deepspeed_config_file")
            ds = json.loads((path.parents[2] / ds_file).read_text()) if ds_file else {}
            zero_cfg = ds.get("zero_optimization", {})
            engine, zero = "deepspeed", int(zero_cfg.get("stage", 0))
            bucket = int(zero_cfg.get("reduce_bucket_size", 5e8)) if zero >= 2 else 0
        elif kind == "FSDP":
            engine = "fsdp"
    precision = {"auto": "bf16", "fp32": "fp32"}.get(section.precision, section.precision)
    fused_opt = section.fused_optimizer if section.fused_optimizer is not None else True  # CUDA default
    return Setup(
        engine=engine,
        zero_stage=zero,
        world=plan.world_size,
        precision=precision,
        checkpointing=section.activation_checkpointing,
        fused_loss=fused_loss,
        fused_optimizer=fused_opt,
        bucket_elements=bucket,
    )


def describe(plan, fused_loss: bool) -> list[str]:
    """Dry-run lines: the estimate's parts, and the fit on each device with and without checkpointing."""
    config, section = plan.model_config, plan.section
    setup = setup_for(plan, fused_loss)
    est = estimate(config, section.micro_batch_size, section.seq_len, setup)
    engine = f"{setup.engine}{f' ZeRO-{setup.zero_stage}' if setup.engine == 'deepspeed' else ''}"
    lines = [
        f"  memory/GPU:        {est.total / GIB:.1f} GiB peak at micro-batch {section.micro_batch_size} ({engine}, "
        f"world {setup.world}, {setup.precision}, activation checkpointing {'on' if setup.checkpointing else 'off'}, "
        f"{'fused chunked' if fused_loss else 'plain fp32'} loss)",
        f"    states {est.states / GIB:.1f} (params {est.params / GIB:.1f}, optimizer {est.optimizer / GIB:.1f}, "
        f"kept gradient buffers {est.grads_kept / GIB:.1f}) + {est.peak_phase} peak "
        f"{max(est.phases.values()) / GIB:.1f} (saved activations {est.activations / GIB:.1f}, loss working set "
        f"{est.loss / GIB:.1f}, gradients {est.grads / GIB:.1f}) GiB; fits = peak x {1 + FRAGMENTATION:.2f} + "
        f"{CUDA_OVERHEAD / GIB:.1f} GiB CUDA overhead <= capacity",
    ]
    for name, capacity in DEVICES.items():
        parts = []
        for ckpt in (False, True):
            s = Setup(**{**setup.__dict__, "checkpointing": ckpt})
            fits = estimate(config, section.micro_batch_size, section.seq_len, s).fits(capacity)
            largest = largest_micro_batch(config, section.seq_len, s, capacity)
            parts.append(
                f"{'with' if ckpt else 'without'} checkpointing {'fits' if fits else 'does NOT fit'} "
                f"(largest micro-batch {largest})"
            )
        lines.append(f"    {name}: {'; '.join(parts)}")
    return lines


# ---- validation on CPU: a real training step's peak RSS -----------------------------------------------------


def measure_peak(
    config: ModelConfig, micro_batch: int, seq_len: int, *, checkpointing: bool, fused_loss: bool
) -> dict:
    """Two fp32 AdamW training steps of `Transformer(config)` in a fresh process: the peak RSS above the
    process's RSS before the model exists (`peak_bytes`), and the steps' `losses`. Large allocations are forced to mmap so freed
    memory leaves the RSS and the peak counts live memory only."""
    job = {
        "config": config.__dict__,
        "micro_batch": micro_batch,
        "seq_len": seq_len,
        "checkpointing": checkpointing,
        "fused_loss": fused_loss,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(
        [sys.executable, "-m", "train.memory", "_step", json.dumps(job)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    if result.returncode:
        raise RuntimeError(f"memory probe failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _step(job: dict) -> dict:
    import psutil
    import torch

    from modeling import Transformer
    from train.data import Batch
    from train.trainer import checkpoint_blocks, loss_sum

    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = ModelConfig(**job["config"])
    B, T = job["micro_batch"], job["seq_len"]
    ids = torch.randint(0, config.vocab_size, (B, T + 1))
    batch = Batch(ids[:, :-1], ids[:, 1:].clone(), torch.arange(T).expand(B, T))
    before = psutil.Process().memory_info().rss
    model = Transformer(config)
    if job["checkpointing"]:
        checkpoint_blocks(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    losses = []
    for _ in range(2):  # the second step is the steady state: AdamW's states exist from the first on
        if job["fused_loss"]:
            loss = loss_sum(model, batch, document_masking=False) / batch.num_targets
        else:
            logits = model(batch.input_ids)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.labels.flatten())
            del logits
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
    return {"peak_bytes": _high_water_rss() - before, "losses": losses}


def _high_water_rss() -> int:
    """This process's peak RSS in bytes. Linux's VmHWM belongs to the address space, so it starts afresh at
    exec; `ru_maxrss` does not (it keeps the parent's peak from before the exec: a big pytest parent would
    leak its own size into the measurement)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource  # not Linux: ru_maxrss (kilobytes on Linux-likes, bytes on macOS; only Linux is validated)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# Small CPU configurations the estimator is validated on (fp32, one process, foreach AdamW).
VALIDATION = [
    ("tiny llama, 4 x 256", "tiny", {}, 4, 256),
    ("tiny llama, 8 x 512", "tiny", {}, 8, 512),
    ("phi block, 4 x 256", "phi1-small", {"num_layers": 4, "hidden_size": 256, "intermediate_size": 1024,
                                          "num_heads": 4, "num_kv_heads": 4, "vocab_size": 8192}, 4, 256),
]  # fmt: skip


def validation_rows(fused_loss: bool) -> list[dict]:
    rows = []
    for name, preset, overrides, micro, seq in VALIDATION:
        config = ModelConfig.from_preset(preset, **overrides)
        for ckpt in (False, True):
            setup = Setup(
                precision="fp32",
                checkpointing=ckpt,
                fused_loss=fused_loss,
                fused_optimizer=False,
                attention_matrix=config.attn_dropout > 0,  # CPU SDPA has no fused kernel with dropout
            )
            est = estimate(config, micro, seq, setup).total
            got = measure_peak(config, micro, seq, checkpointing=ckpt, fused_loss=fused_loss)["peak_bytes"]
            rows.append({"case": name, "checkpointing": ckpt, "estimate": est, "measured": got})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.memory", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["validate", "_step"])
    parser.add_argument("job", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.command == "_step":
        print(json.dumps(_step(json.loads(args.job))))
        return 0
    print(f"{'case':<24} {'loss':<6} {'ckpt':<5} {'estimate MiB':>13} {'measured MiB':>13} {'error':>7}")
    for fused in (True, False):
        for row in validation_rows(fused_loss=fused):
            error = row["estimate"] / row["measured"] - 1
            print(
                f"{row['case']:<24} {'fused' if fused else 'plain':<6} {str(row['checkpointing']):<5} "
                f"{row['estimate'] / 2**20:>13.1f} {row['measured'] / 2**20:>13.1f} {error:>+7.1%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

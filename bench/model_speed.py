#!/usr/bin/env python
"""Speed and memory of our `Transformer` vs transformers' `LlamaForCausalLM` on the same weights, in one run.

Rows: training step (fwd + loss + bwd) tokens/s for the tiny preset and a ~100M Llama config, eager and (with
--compile) under torch.compile on both sides; prefill tokens/s and greedy KV-cached decoding new tokens/s at
batch 1 and 8, eager and (with --compile) compiled on both sides (ours: `generate(compile=True)`; transformers:
its static cache with `CompileConfig`); peak training memory. Ours computes its loss with the fused chunked LM
head + cross-entropy (`model(ids, targets=...)`, what train/ uses); transformers computes it from its full fp32
logits, as its own `labels=` path does. The HF model is loaded from our `save_pretrained` export, so both hold bit-identical
weights. See bench/README.md. Benchmark only: nothing here asserts on timings.

    .venv/bin/python bench/model_speed.py --steps 3
    .venv/bin/python bench/model_speed.py --steps 2 --compile
    python bench/model_speed.py --device cuda --seq-len 2048 --batch 8 --large-batch 8 --compile
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's `modeling`, from any cwd

import transformers  # noqa: E402
from transformers import CompileConfig, LlamaForCausalLM  # noqa: E402

from modeling import ModelConfig, Transformer  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MiB = 2**20
# The ~100M training config: GPT-2-small widths as a Llama block (12 x 768, 12 heads, SwiGLU 2048), 32k vocab.
LARGE = dict(
    vocab_size=32000,
    hidden_size=768,
    intermediate_size=2048,
    num_layers=12,
    num_heads=12,
    num_kv_heads=12,
    max_seq_len=2048,
    tie_word_embeddings=False,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=sorted(DTYPES),
        help="weights and activations (default: fp32 on CPU, bf16 on CUDA); both models cast, no autocast",
    )
    p.add_argument("--seq-len", type=int, default=128, help="training/prefill tokens per row")
    p.add_argument("--batch", type=int, default=4, help="rows per training step of the tiny model")
    p.add_argument("--large-batch", type=int, default=1, help="rows per training step of the ~100M model")
    p.add_argument("--no-large", action="store_true", help="skip the ~100M training rows")
    p.add_argument(
        "--compile",
        action="store_true",
        help="add torch.compile training and decoding rows (slow to compile)",
    )
    p.add_argument(
        "--gen-batches",
        default="1,8",
        help="comma-separated prefill/decode batch sizes ('': no inference rows)",
    )
    p.add_argument("--prompt-len", type=int, default=32, help="tokens per prompt (all prompts equal length)")
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated per prompt")
    p.add_argument("--steps", type=int, default=5, help="timed repeats per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repeats per model before timing")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave torch's default)")
    p.add_argument("--no-memory", action="store_true", help="skip the (untimed) peak-memory runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write all numbers here")
    args = p.parse_args(argv)
    for name in ("batch", "large_batch", "steps", "prompt_len", "new_tokens", "seq_len"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0 or args.threads < 0:
        p.error("--warmup and --threads must be >= 0")
    try:
        args.gen_batches = [int(b) for b in args.gen_batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--gen-batches must be comma-separated integers, got {args.gen_batches!r}")
    return args


# ---- timing and memory -------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], object]], warmup: int, steps: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per call of each fn. Calls alternate between the fns (order flipped every repeat), so drifting
    load from other processes on a shared machine hits both sides alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu_times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(steps):
        for name in names if i % 2 == 0 else names[::-1]:
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    return times, cpu_times


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc) so every CPU measurement starts from a similar RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:  # resident pages; Linux only, cheap enough to poll every millisecond
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak memory of one call of fn above what was in use just before it (weights, etc. excluded), in bytes.

    CUDA: torch.cuda.max_memory_allocated (tensor bytes from the caching allocator). CPU: the peak resident
    set size of the whole process, sampled every ~1 ms by a thread, minus the RSS at the start (after gc and
    malloc_trim); it includes allocator overhead and may miss spikes shorter than the sampling period.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    if not Path("/proc/self/statm").exists():
        return None
    _malloc_trim()
    base = peak = _rss_bytes()
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=poll, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak, _rss_bytes()) - base


# ---- the workloads -----------------------------------------------------------------------------------------


def train_step_ours(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> float:
    """fwd + fused chunked LM head/cross-entropy + bwd; no optimizer step (it costs both sides the same)."""
    loss = model(ids, targets=labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def train_step_hf(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> float:
    """fwd + cross-entropy of the full fp32 logits (as `labels=` does inside transformers) + bwd."""
    logits = model(input_ids=ids, use_cache=False).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch.cuda.is_available() is False")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"


def build_models(
    config: ModelConfig, device: torch.device, dtype: torch.dtype
) -> tuple[Transformer, LlamaForCausalLM]:
    """Ours, randomly initialized on the device, and LlamaForCausalLM loaded from our own HF export of it."""
    with torch.device(device):
        ours = Transformer(config)
    ours = ours.to(dtype)
    with tempfile.TemporaryDirectory(prefix="model_speed_") as tmp:
        ours.save_pretrained(Path(tmp) / "hf", dtype=dtype)
        hf = LlamaForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=dtype, attn_implementation="sdpa")
    return ours, hf.to(device)


def measure(
    fns: dict[str, Callable[[], object]],
    tokens: int,
    args: argparse.Namespace,
    device: torch.device,
    memory: bool,
) -> dict[str, Any]:
    """Interleaved timings (and optionally peak memory) of ours vs HF for one workload of `tokens` per call."""
    times, cpu_times = time_interleaved(fns, args.warmup, args.steps, device)
    entry: dict[str, Any] = {"tokens_per_call": tokens, "seconds": times, "cpu_seconds": cpu_times}
    for key, per_call in (("tokens_per_s", times), ("tokens_per_cpu_s", cpu_times)):
        for side, ts in per_call.items():
            entry[f"{side}_{key}"] = tokens / max(statistics.median(ts), 1e-9)
        entry[f"ratio_{key}"] = entry[f"ours_{key}"] / entry[f"hf_{key}"]
    if memory and not args.no_memory:
        mem = {side: peak_memory(fn, device) for side, fn in fns.items()}
        entry["ours_peak_bytes"], entry["hf_peak_bytes"] = mem["ours"], mem["hf"]
        entry["ratio_peak_bytes"] = mem["ours"] / mem["hf"] if mem["ours"] is not None and mem["hf"] else None
    return entry


def train_cases(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    cases = [("tiny", ModelConfig.from_preset("tiny", attention="sdpa"), args.batch)]
    if not args.no_large:
        cases.append(("llama-100m", ModelConfig(**LARGE, attention="sdpa"), args.large_batch))
    results: dict[str, Any] = {}
    for name, config, batch in cases:
        torch.manual_seed(args.seed)
        ours, hf = build_models(config, device, dtype)
        ours.train()
        hf.train()
        g = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(config.vocab_size, (batch, args.seq_len), generator=g).to(device)
        labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)  # next token; last ignored
        loss_ours, loss_hf = train_step_ours(ours, ids, labels), train_step_hf(hf, ids, labels)
        modes = [("eager", ours, hf)]
        if args.compile:
            modes.append(("compiled", torch.compile(ours), torch.compile(hf)))
        for mode, o, h in modes:
            fns = {
                "ours": lambda o=o, ids=ids, labels=labels: train_step_ours(o, ids, labels),
                "hf": lambda h=h, ids=ids, labels=labels: train_step_hf(h, ids, labels),
            }
            key = f"{name} {batch}x{args.seq_len} {mode}"
            results[key] = measure(fns, batch * args.seq_len, args, device, memory=mode == "eager")
            results[key]["params"] = config.num_params()
            results[key]["loss"] = {"ours": loss_ours, "hf": loss_hf}
        del ours, hf, modes
        gc.collect()
    return results


def inference_cases(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Prefill and greedy decoding of the tiny model at each --gen-batches size."""
    config = ModelConfig.from_preset("tiny", attention="sdpa")
    torch.manual_seed(args.seed)
    ours, hf = build_models(config, device, dtype)
    ours.eval()
    hf.eval()
    g = torch.Generator().manual_seed(args.seed)
    return {
        key: entry
        for batch in args.gen_batches
        for key, entry in inference_batch(ours, hf, config, batch, g, args, device).items()
    }


def inference_batch(
    ours: Transformer,
    hf: LlamaForCausalLM,
    config: ModelConfig,
    batch: int,
    g: torch.Generator,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    ids = torch.randint(config.vocab_size, (batch, args.seq_len), generator=g).to(device)
    with torch.inference_mode():
        diff = (ours(ids) - hf(input_ids=ids, use_cache=False).logits).abs().max().item()

    def prefill(model: torch.nn.Module, hf_side: bool) -> torch.Tensor:
        with torch.inference_mode():
            return model(input_ids=ids, use_cache=False).logits if hf_side else model(ids)

    results[f"prefill b{batch}"] = measure(
        {"ours": lambda: prefill(ours, False), "hf": lambda: prefill(hf, True)},
        batch * args.seq_len,
        args,
        device,
        memory=False,
    )
    results[f"prefill b{batch}"]["max_abs_logit_diff"] = diff

    prompt_ids = torch.randint(config.vocab_size, (batch, args.prompt_len), generator=g).to(device)
    prompts = prompt_ids.tolist()
    gen_config = copy.deepcopy(hf.generation_config)  # exactly new_tokens per prompt: no eos on either side
    gen_config.update(
        do_sample=False,
        max_new_tokens=args.new_tokens,
        eos_token_id=None,
        pad_token_id=0,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    mask = torch.ones_like(prompt_ids)
    # transformers compiles its forward for decoding only with a static cache and, off CUDA, only when told to.
    compiled_config = copy.deepcopy(gen_config)
    compile_config = CompileConfig(fullgraph=True, dynamic=False, mode="default")  # no CUDA graphs on CPU
    compile_config._compile_all_devices = device.type != "cuda"
    compiled_config.update(cache_implementation="static", compile_config=compile_config)

    def gen_ours(compile: bool) -> list[list[int]]:
        return ours.generate(prompts, args.new_tokens, temperature=0.0, pad_token_id=0, compile=compile)

    def gen_hf(config) -> list[list[int]]:
        out = hf.generate(input_ids=prompt_ids, attention_mask=mask, generation_config=config)
        return out[:, args.prompt_len :].tolist()

    modes = [("", False, gen_config)] + ([(" compiled", True, compiled_config)] if args.compile else [])
    for suffix, compile, config in modes:
        fns = {"ours": lambda c=compile: gen_ours(c), "hf": lambda c=config: gen_hf(c)}
        tokens_ours, tokens_hf = fns["ours"](), fns["hf"]()  # also compiles, before any timing
        if any(len(t) != args.new_tokens for t in tokens_ours + tokens_hf):  # the tokens/s below assume it
            raise RuntimeError(f"a generate call stopped before {args.new_tokens} new tokens")
        key = f"decode b{batch}{suffix}"
        results[key] = measure(fns, batch * args.new_tokens, args, device, False)
        results[key]["greedy_rows_identical"] = sum(a == b for a, b in zip(tokens_ours, tokens_hf))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    start = time.perf_counter()
    device = resolve_device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    report = {
        "meta": {
            "device": str(device),
            "device_name": device_name(device),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "dtype": str(dtype).removeprefix("torch."),
            "steps": args.steps,
            "warmup": args.warmup,
            "prompt_len": args.prompt_len,
            "new_tokens": args.new_tokens,
            "seq_len": args.seq_len,
            "memory": "cuda max_memory_allocated delta"
            if device.type == "cuda"
            else "sampled process RSS delta",
        },
        "train": train_cases(args, device, dtype),
        "inference": inference_cases(args, device, dtype) if args.gen_batches else {},
    }
    report["meta"]["wall_s"] = time.perf_counter() - start
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


def _fmt(value: float | None, scale: float) -> str:
    return "n/a" if value is None else f"{value / scale:,.1f}"


def print_report(report: dict[str, Any]) -> None:
    m = report["meta"]
    print(
        f"device {m['device']} ({m['device_name']}) | torch {m['torch']} | transformers {m['transformers']} | "
        f"threads {m['threads']} | {m['dtype']} | median of {m['steps']} after {m['warmup']} warmup"
    )
    for key, r in report["train"].items():
        print(f"sanity {key}: loss ours {r['loss']['ours']:.5f} vs transformers {r['loss']['hf']:.5f}")
    for key, r in report["inference"].items():
        if "max_abs_logit_diff" in r:
            print(f"sanity {key}: max|logits diff| {r['max_abs_logit_diff']:.2e}")
        if "greedy_rows_identical" in r:
            print(f"sanity {key}: greedy rows identical {r['greedy_rows_identical']}")
    rows = []
    units = [("tokens_per_s", "tokens/s", "new tok/s")]
    if m["device"] == "cpu":  # per CPU-second of this process: robust to other processes taking the cores
        units.append(("tokens_per_cpu_s", "tok/cpu-s", "new/cpu-s"))
    for key, unit, gen_unit in units:
        rows += [("train fwd+bwd", unit, case, r, key, 1.0) for case, r in report["train"].items()]
        for case, r in report["inference"].items():
            label = "prefill fwd" if case.startswith("prefill") else "generate greedy"
            rows.append((label, unit if label == "prefill fwd" else gen_unit, case, r, key, 1.0))
    rows += [
        ("train peak mem", "MiB", case, r, "peak_bytes", MiB)
        for case, r in report["train"].items()
        if "ours_peak_bytes" in r
    ]
    print(f"\n{'metric':<16} {'unit':<10} {'case':<28} {'ours':>10} {'transformers':>13} {'ours/HF':>8}")
    for label, unit, case, r, key, scale in rows:
        ratio = r[f"ratio_{key}"]
        print(
            f"{label:<16} {unit:<10} {case:<28} {_fmt(r[f'ours_{key}'], scale):>10} "
            f"{_fmt(r[f'hf_{key}'], scale):>13} {'n/a' if ratio is None else f'{ratio:.2f}':>8}"
        )
    print(
        f"memory: {m['memory']} over one call (what was allocated before it excluded); "
        "throughput ratio > 1 = ours faster, memory ratio < 1 = ours smaller"
    )
    print(f"wall time {m['wall_s']:.0f} s")


if __name__ == "__main__":
    main()

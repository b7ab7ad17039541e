#!/usr/bin/env python
"""Speed and memory of our `Transformer` vs transformers' `LlamaForCausalLM` on the same weights.

One run measures, for one preset: fwd+bwd training throughput, forward-only (prefill) throughput, greedy
KV-cached generation throughput and the peak memory of each, and prints absolute numbers plus ours/HF ratios.
The HF model is loaded from our own `save_pretrained` export, so both models hold bit-identical weights.
See bench/README.md for what each number means. Benchmark only: nothing here asserts on timings.

    .venv/bin/python bench/model_speed.py --steps 3
    python bench/model_speed.py --device cuda --preset cosmo-1b --seq-len 2048 --batch 4 --json out.json
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
from transformers import LlamaForCausalLM  # noqa: E402
from transformers.utils import is_flash_attn_2_available  # noqa: E402

from modeling import PRESETS, ModelConfig, Transformer  # noqa: E402
from modeling import model as modeling_model  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MiB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=sorted(DTYPES),
        help="weights and activations (default: fp32 on CPU, bf16 on CUDA); both models cast, no autocast",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="training/prefill length (default: the preset's max_seq_len, capped at 128 on CPU)",
    )
    p.add_argument("--batch", type=int, default=4, help="rows per training/prefill step")
    p.add_argument("--steps", type=int, default=10, help="timed repeats per measurement (median reported)")
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed repeats per model before timing (after the sanity pass)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave torch's default)")
    p.add_argument("--gen-batch", type=int, default=None, help="prompts per generate call (default: --batch)")
    p.add_argument("--prompt-len", type=int, default=32, help="tokens per prompt (all prompts equal length)")
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated per prompt")
    p.add_argument(
        "--attention",
        default="auto",
        choices=["auto", "flash", "sdpa", "reference"],
        help="our ModelConfig.attention",
    )
    p.add_argument(
        "--hf-attn",
        default="auto",
        choices=["auto", "sdpa", "eager", "flash_attention_2"],
        help="LlamaForCausalLM attn_implementation (auto: flash_attention_2 when ours runs flash, else sdpa)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the (untimed) peak-memory runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write all numbers here")
    args = p.parse_args(argv)
    for name in ("batch", "steps", "prompt_len", "new_tokens", "seq_len", "gen_batch"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0 or args.threads < 0:
        p.error("--warmup and --threads must be >= 0")
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


def logits_of(model: torch.nn.Module, ids: torch.Tensor, hf: bool) -> torch.Tensor:
    # HF: no KV cache object in training/prefill (use_cache=True would build a DynamicCache it never reuses).
    return model(input_ids=ids, use_cache=False).logits if hf else model(ids)


def train_step(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor, hf: bool) -> float:
    """fwd + next-token cross-entropy (fp32 logits, identical for both) + bwd; no optimizer step."""
    logits = logits_of(model, ids, hf)
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def forward_only(model: torch.nn.Module, ids: torch.Tensor, hf: bool) -> torch.Tensor:
    with torch.inference_mode():
        return logits_of(model, ids, hf)


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
    config: ModelConfig, device: torch.device, dtype: torch.dtype, hf_attn: str, tmp: Path
) -> tuple[Transformer, LlamaForCausalLM]:
    """Ours, randomly initialized on the device, and LlamaForCausalLM loaded from our own HF export of it."""
    with torch.device(device):
        ours = Transformer(config)
    ours = ours.to(dtype)
    ours.save_pretrained(tmp / "hf", dtype=dtype)
    hf = LlamaForCausalLM.from_pretrained(tmp / "hf", dtype=dtype, attn_implementation=hf_attn).to(device)
    return ours, hf


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    start = time.perf_counter()
    device = resolve_device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    config = ModelConfig.from_preset(args.preset, attention=args.attention)
    seq_len = args.seq_len or (config.max_seq_len if device.type == "cuda" else min(config.max_seq_len, 128))
    gen_batch = args.gen_batch or args.batch

    # Attention kernels: ours picks one for cache-free forwards (train/prefill); cached decoding is SDPA.
    flash_available = modeling_model.flash_attn_varlen_func is not None
    ours_backend = modeling_model.select_backend(config.attention, device, dtype, flash_available)
    decode_backend = "sdpa" if ours_backend == "flash" else ours_backend
    hf_attn = args.hf_attn
    if hf_attn == "auto":
        hf_attn = "flash_attention_2" if ours_backend == "flash" and is_flash_attn_2_available() else "sdpa"

    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="model_speed_") as tmp:
        ours, hf = build_models(config, device, dtype, hf_attn, Path(tmp))
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(config.vocab_size, (args.batch, seq_len), generator=g).to(device)
    labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)  # next token; last one ignored
    prompt_ids = torch.randint(config.vocab_size, (gen_batch, args.prompt_len), generator=g).to(device)
    prompts = prompt_ids.tolist()
    # Exactly new_tokens per prompt on both sides: no eos (ours gets eos_token_id=None too).
    gen_config = copy.deepcopy(hf.generation_config)
    gen_config.update(
        do_sample=False,
        max_new_tokens=args.new_tokens,
        eos_token_id=None,
        pad_token_id=pad,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    attention_mask = torch.ones_like(prompt_ids)

    def gen_ours() -> list[list[int]]:
        return ours.generate(prompts, args.new_tokens, temperature=0.0, pad_token_id=pad)

    def gen_hf() -> list[list[int]]:
        out = hf.generate(input_ids=prompt_ids, attention_mask=attention_mask, generation_config=gen_config)
        return out[:, args.prompt_len :].tolist()

    # Sanity (not timed): same weights must give the same logits, loss and greedy tokens.
    ours.eval()
    hf.eval()
    diff = (forward_only(ours, ids, False).float() - forward_only(hf, ids, True).float()).abs().max().item()
    loss_ours, loss_hf = train_step(ours, ids, labels, False), train_step(hf, ids, labels, True)
    tokens_ours, tokens_hf = gen_ours(), gen_hf()
    same_tokens = sum(a == b for a, b in zip(tokens_ours, tokens_hf))
    if any(len(t) != args.new_tokens for t in tokens_ours + tokens_hf):  # the tokens/s below assume it
        raise RuntimeError(f"a generate call stopped before {args.new_tokens} new tokens")

    workloads: dict[str, dict[str, Callable[[], object]]] = {
        "train": {
            "ours": lambda: train_step(ours, ids, labels, False),
            "hf": lambda: train_step(hf, ids, labels, True),
        },
        "prefill": {
            "ours": lambda: forward_only(ours, ids, False),
            "hf": lambda: forward_only(hf, ids, True),
        },
        "generate": {"ours": gen_ours, "hf": gen_hf},
    }
    tokens_per_call = {
        "train": args.batch * seq_len,
        "prefill": args.batch * seq_len,
        "generate": gen_batch * args.new_tokens,
    }
    results: dict[str, Any] = {}
    for phase, fns in workloads.items():
        ours.train(phase == "train")
        hf.train(phase == "train")
        times, cpu_times = time_interleaved(fns, args.warmup, args.steps, device)
        entry: dict[str, Any] = {
            "tokens_per_call": tokens_per_call[phase],
            "seconds": times,
            "cpu_seconds": cpu_times,
        }
        for key, per_call in (("tokens_per_s", times), ("tokens_per_cpu_s", cpu_times)):
            for side, ts in per_call.items():
                entry[f"{side}_{key}"] = tokens_per_call[phase] / max(statistics.median(ts), 1e-9)
            entry[f"ratio_{key}"] = entry[f"ours_{key}"] / entry[f"hf_{key}"]
        if not args.no_memory:
            mem = {side: peak_memory(fn, device) for side, fn in fns.items()}
            entry["ours_peak_bytes"], entry["hf_peak_bytes"] = mem["ours"], mem["hf"]
            entry["ratio_peak_bytes"] = (
                mem["ours"] / mem["hf"] if mem["ours"] is not None and mem["hf"] else None
            )
        results[phase] = entry

    meta = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "preset": args.preset,
        "params": config.num_params(),
        "batch": args.batch,
        "seq_len": seq_len,
        "gen_batch": gen_batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "steps": args.steps,
        "warmup": args.warmup,
        "ours_attention": {"train_prefill": ours_backend, "cached_decode": decode_backend},
        "hf_attention": hf.config._attn_implementation,
        "memory": "cuda max_memory_allocated delta" if device.type == "cuda" else "sampled process RSS delta",
        "sanity": {
            "max_abs_logit_diff": diff,
            "loss_ours": loss_ours,
            "loss_hf": loss_hf,
            "greedy_rows_identical": same_tokens,
            "greedy_rows": gen_batch,
        },
    }
    meta["wall_s"] = time.perf_counter() - start
    report = {"meta": meta, "results": results}
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


def _fmt(value: float | None, scale: float) -> str:
    return "n/a" if value is None else f"{value / scale:,.1f}"


def print_report(report: dict[str, Any]) -> None:
    m, r = report["meta"], report["results"]
    s = m["sanity"]
    print(
        f"device {m['device']} ({m['device_name']}) | torch {m['torch']} | "
        f"transformers {m['transformers']} | threads {m['threads']} | {m['dtype']}"
    )
    print(
        f"preset {m['preset']} ({m['params'] / 1e6:.1f}M params) | "
        f"train/prefill {m['batch']} x {m['seq_len']} | "
        f"generate {m['gen_batch']} prompts x {m['prompt_len']} + {m['new_tokens']} new | "
        f"median of {m['steps']} after {m['warmup']} warmup"
    )
    print(
        f"attention: ours {m['ours_attention']['train_prefill']} (train/prefill), "
        f"{m['ours_attention']['cached_decode']} (cached decode) | transformers {m['hf_attention']}"
    )
    print(
        f"sanity: max|logits diff| {s['max_abs_logit_diff']:.2e} | loss {s['loss_ours']:.5f} vs "
        f"{s['loss_hf']:.5f} | greedy rows identical {s['greedy_rows_identical']}/{s['greedy_rows']}"
    )
    rows = [
        ("train fwd+bwd", "tokens/s", "train", "tokens_per_s", 1.0),
        ("prefill fwd", "tokens/s", "prefill", "tokens_per_s", 1.0),
        ("generate greedy", "new tok/s", "generate", "tokens_per_s", 1.0),
    ]
    if m["device"] == "cpu":  # per CPU-second of this process: robust to other processes taking the cores
        rows += [
            ("train fwd+bwd", "tok/cpu-s", "train", "tokens_per_cpu_s", 1.0),
            ("prefill fwd", "tok/cpu-s", "prefill", "tokens_per_cpu_s", 1.0),
            ("generate greedy", "new/cpu-s", "generate", "tokens_per_cpu_s", 1.0),
        ]
    if "ours_peak_bytes" in r["train"]:
        rows += [
            ("train peak mem", "MiB", "train", "peak_bytes", MiB),
            ("prefill peak mem", "MiB", "prefill", "peak_bytes", MiB),
            ("generate peak mem", "MiB", "generate", "peak_bytes", MiB),
        ]
    print(f"\n{'metric':<18} {'unit':<10} {'ours':>12} {'transformers':>13} {'ours/HF':>8}")
    for label, unit, phase, key, scale in rows:
        ours, hf, ratio = r[phase][f"ours_{key}"], r[phase][f"hf_{key}"], r[phase][f"ratio_{key}"]
        print(
            f"{label:<18} {unit:<10} {_fmt(ours, scale):>12} {_fmt(hf, scale):>13} "
            f"{'n/a' if ratio is None else f'{ratio:.2f}':>8}"
        )
    print(
        f"memory: {m['memory']} over one call (what was allocated before it excluded); "
        "throughput ratio > 1 = ours faster, memory ratio < 1 = ours smaller"
    )
    print(f"wall time {m['wall_s']:.0f} s")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""How much faster than transformers can any implementation of the same matmuls be, on this machine?

model_speed.py's goals (issue 14: train >= 1.3x, decode >= 1.5x) compare two models that multiply the same
fp32 weights by the same activations through the same BLAS. This script measures the bound that sets: for
each workload it times transformers' call (median CPU seconds, no profiler), then profiles one call of each
model and sums the self time of its matrix products (`aten::mm`, `addmm`, `bmm`, `baddbmm`). Our model, had
it no cost at all outside those products, would still spend its matmul time, so

    ceiling = transformers' seconds per call / our matmul seconds per call

is the largest ours/transformers ratio this model can reach here without faster matmuls. For decoding it
also prints the fp32 weight bytes the decoding steps read divided by our matmul time, next to this
machine's copy bandwidth (a 256 MiB `Tensor.copy_`, same run). See bench/README.md.

    .venv/bin/python bench/speed_ceiling.py            # ~1 min here
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))  # model_speed's builders and training steps

from model_speed import LARGE, build_models, train_step_hf, train_step_ours  # noqa: E402

from modeling import ModelConfig  # noqa: E402

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def matmul_seconds(fn: Callable[[], object], calls: int = 3) -> float:
    """Self CPU seconds of the matrix products in one call of fn (the median of `calls` profiled calls)."""
    seconds = []
    for _ in range(calls):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        seconds.append(sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMULS) / 1e6)
    return statistics.median(seconds)


def median_seconds(fn: Callable[[], object], steps: int) -> float:
    """Median CPU seconds (this process; one thread) per call: steadier than wall time on a shared box."""
    fn()
    times = []
    for _ in range(steps):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes/s of one large fp32 copy (read + write counted), the memory system's rate for streaming."""
    src, dst = torch.empty(64 * 2**20), torch.empty(64 * 2**20)
    return 2 * src.numel() * 4 / median_seconds(lambda: dst.copy_(src), 5)


def workloads(args: argparse.Namespace) -> dict[str, tuple[dict[str, Callable[[], object]], int]]:
    """{case: ({"ours": fn, "hf": fn}, fp32 weight bytes one decoding step reads, 0 for training)}."""
    g = torch.Generator().manual_seed(args.seed)
    out = {}
    for name, config, batch in (
        ("train tiny 4x128", ModelConfig.from_preset("tiny", attention="sdpa"), 4),
        ("train llama-100m 1x128", ModelConfig(**LARGE, attention="sdpa"), 1),
    ):
        torch.manual_seed(args.seed)
        ours, hf = build_models(config, torch.device("cpu"), torch.float32)
        ids = torch.randint(config.vocab_size, (batch, 128), generator=g)
        labels = torch.cat([ids[:, 1:], torch.full((batch, 1), -100)], dim=1)
        out[name] = (
            {
                "ours": lambda m=ours, i=ids, y=labels: train_step_ours(m, i, y),
                "hf": lambda m=hf, i=ids, y=labels: train_step_hf(m, i, y),
            },
            0,
        )
    config = ModelConfig.from_preset("tiny", attention="sdpa")
    torch.manual_seed(args.seed)
    ours, hf = build_models(config, torch.device("cpu"), torch.float32)
    # every step reads each block's projections and the (tied) LM head once; the embedding lookup reads one row
    weight_bytes = sum(p.numel() * 4 for n, p in ours.named_parameters() if p.dim() == 2 and "norm" not in n)
    hf_config = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    for batch in (1, 8):
        prompts = torch.randint(config.vocab_size, (batch, 32), generator=g)
        out[f"decode b{batch}"] = (
            {
                "ours": lambda p=prompts.tolist(): ours.generate(p, args.new_tokens, temperature=0.0),
                "hf": lambda p=prompts: hf.generate(
                    input_ids=p, attention_mask=torch.ones_like(p), pad_token_id=0, **hf_config
                ),
            },
            weight_bytes * args.new_tokens,
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=9, help="timed calls of transformers per workload")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # as model_speed.py's default: one core, no OpenMP barriers
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s (256 MiB fp32 copy, read + write)")
    print(f"{'case':24} {'HF cpu-s':>10} {'HF matmul':>10} {'ours matmul':>11} {'ceiling':>8}  weights GB/s")
    for case, (fns, streamed) in workloads(args).items():
        hf_seconds = median_seconds(fns["hf"], args.steps)
        mm = {side: matmul_seconds(fn) for side, fn in fns.items()}
        rate = f"{streamed / mm['ours'] / 1e9:12.1f}" if streamed else ""
        print(
            f"{case:24} {hf_seconds:10.4f} {mm['hf']:10.4f} {mm['ours']:11.4f} {hf_seconds / mm['ours']:7.2f}x  {rate}"
        )


if __name__ == "__main__":
    main()

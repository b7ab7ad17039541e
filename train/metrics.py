"""Throughput, MFU, memory, and the per-stage metrics.jsonl that the report plots.

Record keys (one JSON object per logged step; the eval/report code reads these names):
step, loss, lr, grad_norm, tokens (seen so far, all ranks), tokens_per_s, mfu (null without a known peak),
memory_gb (peak allocated on the GPU, else peak RSS of the process), skipped (steps skipped so far by the
loss guard), elapsed_s, and val_loss on evaluation steps.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import torch

from stagekit.io import atomic_path

# Dense (no 2:4 sparsity) peak FLOP/s per device from NVIDIA's datasheets. bf16/fp16 are tensor-core
# numbers; fp32 is the plain CUDA-core rate (PyTorch's default matmul precision does not use TF32).
# Matched against torch.cuda.get_device_name() in order, so the more specific names come first.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),  # SXM5
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
]


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one device at this precision; None on CPU or an unknown GPU (MFU is then null)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_FLOPS:
        if key in name:
            return peaks.get(precision)
    return None


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux reports KiB


def mfu(tokens_per_s: float, flops_per_token: int, peak_per_device: float | None, world: int) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak of all devices."""
    if not peak_per_device:
        return None
    return tokens_per_s * flops_per_token / (peak_per_device * world)


class MetricsLog:
    """metrics.jsonl, appended and flushed per record. On resume from step N, records after N (written by
    the interrupted run after its last checkpoint) are dropped so the file reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = Path(path)
        kept = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by kill -9
                    continue
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

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
import sys
from pathlib import Path

import torch

from stagekit.io import atomic_path

# Dense (no 2:4 sparsity) peak FLOP/s per device, keyed by the exact torch.cuda.get_device_name() string (no
# substring matching: "NVIDIA L40" is not an L4, and an H100 NVL is not an SXM H100). bf16/fp16 are tensor-core
# figures: NVIDIA's datasheets list them with sparsity, halved here. fp32 is the plain CUDA-core rate (PyTorch's
# default matmul precision does not use TF32). Sources: A100 datasheet (2021), H100 datasheet (2023: SXM, PCIe,
# NVL), H200 datasheet (2024: SXM, NVL), L4, L40 and L40S datasheets, V100 datasheet (fp16 only: no bf16).
_A100 = {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}
_H100_SXM = {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}
_H100_NVL = {"bf16": 835e12, "fp16": 835e12, "fp32": 60e12}
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "NVIDIA A100-SXM4-40GB": _A100,
    "NVIDIA A100-SXM4-80GB": _A100,
    "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100,
    "NVIDIA H100 80GB HBM3": _H100_SXM,
    "NVIDIA H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12},
    "NVIDIA H100 NVL": _H100_NVL,
    "NVIDIA H200": _H100_SXM,  # H200 SXM: the H100 SXM's compute with more, faster memory
    "NVIDIA H200 NVL": _H100_NVL,
    "NVIDIA L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12},
    "NVIDIA L40": {"bf16": 181e12, "fp16": 181e12, "fp32": 90.5e12},
    "NVIDIA L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12},
    "Tesla V100-SXM2-16GB": {"fp16": 125e12, "fp32": 15.7e12},
    "Tesla V100-SXM2-32GB": {"fp16": 125e12, "fp32": 15.7e12},
    "Tesla V100-PCIE-16GB": {"fp16": 112e12, "fp32": 14e12},
    "Tesla V100-PCIE-32GB": {"fp16": 112e12, "fp32": 14e12},
}


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of the device with exactly this name at this precision; None when the table lacks either."""
    return PEAK_FLOPS.get(device_name, {}).get(precision)


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of one device at this precision; None on CPU or an unknown GPU, which is said once on stderr
    (MFU is then null; train.peak_flops supplies the figure)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(name, precision)
    if peak is None:
        print(
            f"[train] MFU not reported: no {precision} peak for '{name}' in train.metrics.PEAK_FLOPS; set "
            "train.peak_flops to the device's dense peak FLOP/s",
            file=sys.stderr,
            flush=True,
        )
    return peak


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

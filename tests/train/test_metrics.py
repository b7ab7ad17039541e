"""The GPU peak table matches whole device names only, and MFU on a hand-computed configuration."""

from __future__ import annotations

import pytest
import torch

from train.metrics import device_peak_flops, mfu, peak_flops


@pytest.mark.parametrize(
    ("name", "bf16"),
    [
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100-PCIE-40GB", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),  # a substring match on "H100" gave it the SXM figure
        ("NVIDIA H200", 989e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40", 181e12),  # a substring match on "L4" gave it the L4's figure
        ("NVIDIA L40S", 362e12),
    ],
)
def test_peak_is_looked_up_by_the_full_device_name(name, bf16):
    assert peak_flops(name, "bf16") == bf16


def test_unknown_devices_and_precisions_get_no_peak(monkeypatch, capsys):
    assert peak_flops("NVIDIA A100", "bf16") is None  # a partial name is not a device name
    assert peak_flops("NVIDIA GeForce RTX 9999", "bf16") is None
    assert peak_flops("Tesla V100-SXM2-32GB", "bf16") is None  # V100 has no bf16 tensor cores
    assert device_peak_flops(torch.device("cpu"), "fp32") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 NVLink Prototype")
    assert device_peak_flops(torch.device("cuda", 0), "bf16") is None
    assert "MFU not reported: no bf16 peak for 'NVIDIA H100 NVLink Prototype'" in capsys.readouterr().err


def test_mfu_of_a_hand_computed_run():
    # 8 A100s at 100,000 tokens/s in total on a model costing 6e9 training FLOPs per token:
    # 6e14 FLOP/s achieved / (8 x 312e12) peak = 0.2403846...
    assert mfu(100_000, 6_000_000_000, peak_flops("NVIDIA A100-SXM4-80GB", "bf16"), 8) == pytest.approx(
        6e14 / 2.496e15, rel=1e-12
    )
    assert mfu(100_000, 6_000_000_000, None, 8) is None

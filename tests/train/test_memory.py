"""The memory estimator against the measured peak RSS of real CPU training steps (the error documented in
train/README.md), and the dry-run's fit table for the paper recipes."""

from __future__ import annotations

import pytest

from modeling import ModelConfig
from train.memory import VALIDATION, Setup, estimate, measure_peak

DOCUMENTED_ERROR = 0.20  # train/README.md "Memory": the estimate is within 20% of the measured CPU peak
CASES = {name: (preset, overrides, micro, seq) for name, preset, overrides, micro, seq in VALIDATION}


@pytest.mark.parametrize(
    ("case", "checkpointing", "fused_loss"),
    [
        ("tiny llama, 4 x 256", False, True),
        ("tiny llama, 4 x 256", True, True),
        ("tiny llama, 4 x 256", False, False),
        ("phi block, 4 x 256", False, True),
    ],
)
def test_estimate_is_within_the_documented_error_of_the_measured_cpu_peak(case, checkpointing, fused_loss):
    preset, overrides, micro, seq = CASES[case]
    config = ModelConfig.from_preset(preset, **overrides)
    setup = Setup(
        precision="fp32",
        checkpointing=checkpointing,
        fused_loss=fused_loss,
        fused_optimizer=False,
        attention_matrix=config.attn_dropout > 0,
    )
    measured = measure_peak(config, micro, seq, checkpointing=checkpointing, fused_loss=fused_loss)[
        "peak_bytes"
    ]
    estimated = estimate(config, micro, seq, setup).total
    assert abs(estimated / measured - 1) <= DOCUMENTED_ERROR, (estimated / 2**20, measured / 2**20)

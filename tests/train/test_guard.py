"""The loss guard: NaN/inf and spikes stop the run or skip the batch, never pass silently."""

from __future__ import annotations

import math

import pytest

from train.guard import LossGuard, TrainingDiverged


def test_non_finite_loss_stops_with_the_step_and_the_key_to_change():
    guard = LossGuard(factor=3.0, window=10, policy="stop", max_skipped=2)
    assert guard.accept(1, 5.0, "pretrain")
    with pytest.raises(
        TrainingDiverged,
        match=r"pretrain step 2: loss is nan; stopping \(train\.pretrain\.loss_spike_policy=stop",
    ):
        guard.accept(2, math.nan, "pretrain")
    with pytest.raises(TrainingDiverged, match="loss is inf"):
        guard.accept(3, math.inf, "pretrain")


def test_spike_is_judged_against_the_recent_median():
    guard = LossGuard(factor=2.0, window=5, policy="skip", max_skipped=2)
    for step, loss in enumerate([4.0, 3.0, 3.5, 3.2, 3.1], 1):  # too little history to judge until 5 steps
        assert guard.accept(step, loss, "finetune")
    assert guard.accept(6, 6.3, "finetune")  # below 2 x median(3.0, 3.1, 3.2, 3.5, 4.0) = 6.4
    assert guard.history == [3.0, 3.5, 3.2, 3.1, 6.3]  # a window of 5
    assert not guard.accept(7, 6.5 * 1.1, "finetune")  # above 2 x median 3.2: skipped, not remembered
    assert guard.skipped == 1 and guard.history[-1] == 6.3
    assert guard.accept(8, 3.0, "finetune") and guard.consecutive == 0
    assert not guard.accept(9, math.nan, "finetune") and not guard.accept(10, math.nan, "finetune")
    with pytest.raises(
        TrainingDiverged, match="3 consecutive steps skipped, more than train.finetune.max_skipped_steps=2"
    ):
        guard.accept(11, math.nan, "finetune")


def test_state_round_trips():
    guard = LossGuard(factor=2.0, window=5, policy="skip", max_skipped=3)
    for step, loss in enumerate([4.0, 3.0, math.nan, 3.5], 1):
        guard.accept(step, loss, "pretrain")
    again = LossGuard(factor=2.0, window=5, policy="skip", max_skipped=3)
    again.load_state_dict(guard.state_dict())
    assert again == guard


def test_disabled_spike_test_still_catches_nan():
    guard = LossGuard(factor=0.0, window=3, policy="stop", max_skipped=1)
    for step in range(1, 10):
        assert guard.accept(step, 1.0 * 10**step, "pretrain")
    with pytest.raises(TrainingDiverged):
        guard.accept(10, math.nan, "pretrain")

"""Packed-shard batches: exact windows, document positions, a seeded order, and disjoint rank slices."""

from __future__ import annotations

import numpy as np
import pytest

from stagekit.io import StageError
from stagekit.shards import ShardReader
from train.data import (
    PackedSequences,
    TrainBatches,
    training_sequences,
    validation_batches,
    validation_sequences,
)


@pytest.fixture(scope="module")
def reader(data_template):
    return ShardReader(data_template / "shards" / "pretrain" / "train")


def test_windows_are_consecutive_slices_with_shifted_labels(reader):
    seqs = PackedSequences(reader, 64, seed=1, shuffle=False)
    assert seqs.num_windows == (reader.num_tokens - 1) // 64
    flat = reader.tokens(0, reader.num_tokens)  # crosses the 20k-token shard boundaries
    for w in (0, 1, 312, seqs.num_windows - 1):
        batch = seqs.batch([w])
        np.testing.assert_array_equal(batch.input_ids[0].numpy(), flat[w * 64 : w * 64 + 64])
        np.testing.assert_array_equal(batch.labels[0].numpy(), flat[w * 64 + 1 : w * 64 + 65])


def test_positions_restart_after_each_eot(reader):
    """Independent rule: a token follows an eot -> new document (position 0); the window start counts as one."""
    seqs = PackedSequences(reader, 64, seed=1, shuffle=False)
    windows = list(range(0, seqs.num_windows, 7))
    batch = seqs.batch(windows)
    restarts = 0
    for row, ids in zip(batch.position_ids.numpy(), batch.input_ids.numpy()):
        expected = np.zeros_like(row)
        for i in range(1, len(row)):
            expected[i] = 0 if ids[i - 1] == reader.eot_id else expected[i - 1] + 1
        np.testing.assert_array_equal(row, expected)
        restarts += int((row[1:] == 0).sum())
    assert restarts > 0  # the sample does cross document boundaries


def test_order_is_a_seeded_permutation_per_epoch(reader):
    n = PackedSequences(reader, 64, seed=1, shuffle=True).num_windows
    order = lambda seed, epoch: [  # noqa: E731
        PackedSequences(reader, 64, seed=seed, shuffle=True).window_index(epoch * n + i) for i in range(n)
    ]
    first = order(1, 0)
    assert sorted(first) == list(range(n))  # every window exactly once per epoch
    assert first == order(1, 0)  # deterministic
    assert first != order(2, 0) and first != order(1, 1)  # the seed and the epoch change it
    assert sorted(order(1, 1)) == list(range(n))
    plain = PackedSequences(reader, 64, seed=1, shuffle=False)
    assert [plain.window_index(i) for i in range(n + 3)] == [*range(n), 0, 1, 2]


def test_ranks_split_each_step_without_overlap(reader):
    """2 ranks x micro 2 x accumulation 2 see exactly the sequences of 1 rank x micro 4 x accumulation 2."""
    seqs = PackedSequences(reader, 64, seed=3, shuffle=True)
    single = TrainBatches(seqs, micro_batch=4, accumulation=2, world=1, rank=0)
    ranks = [TrainBatches(seqs, micro_batch=2, accumulation=2, world=2, rank=r) for r in (0, 1)]

    def rows(batches, step):
        return [
            tuple(row)
            for k in range(batches.accumulation)
            for row in batches.micro_batch(step, k).input_ids.tolist()
        ]

    for step in (0, 1, 57):
        per_rank = [rows(b, step) for b in ranks]
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(per_rank[0] + per_rank[1]) == sorted(rows(single, step))
    assert set(rows(single, 0)).isdisjoint(rows(single, 1))  # consecutive steps move on through the data
    assert single.position(10) == {
        "sequences_consumed": 80,
        "epoch": 80 // seqs.num_windows,
        "num_windows": seqs.num_windows,
        "seq_len": 64,
        "global_batch": 8,
        "shuffle": True,
    }


def test_validation_is_shared_evenly_and_fixed(data_template):
    val = validation_sequences(data_template / "shards" / "pretrain" / "val", 64, "val")
    parts = [validation_batches(val, 9, micro_batch=2, world=2, rank=r) for r in (0, 1)]
    seen = [tuple(row) for part in parts for b in part for row in b.input_ids.tolist()]
    assert len(seen) == 8  # 9 rounded down to a multiple of the world size
    expected = {tuple(val.batch([w]).input_ids[0].tolist()) for w in range(8)}
    assert set(seen) == expected


def test_too_little_data_is_a_clear_error(data_template, tmp_path):
    directory = data_template / "shards" / "finetune" / "val"
    tokens = ShardReader(directory).num_tokens
    with pytest.raises(StageError, match=rf"{directory}: finetune training shards hold {tokens} tokens"):
        training_sequences(directory, tokens, seed=0, shuffle=False, what="finetune training")
    # Validation shorter than a sequence is scored as one shorter window instead.
    short = validation_sequences(directory, tokens + 100, "val")
    assert short.num_windows == 1 and short.seq_len == tokens - 1
    with pytest.raises(StageError, match="shard index not found"):
        training_sequences(tmp_path / "missing", 64, seed=0, shuffle=False, what="pretrain training")

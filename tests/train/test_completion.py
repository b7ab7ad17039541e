"""Completion-only loss: prompt tokens get no label, the loss sums only completion tokens, and a step's loss is
normalised by its token count over all micro-batches (so accumulation does not change it when counts differ)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_testkit import SMALL_MODEL, prompt_length, write_prompted_shards

from modeling import ModelConfig, Transformer
from recipes import load_recipe
from stagekit.shards import ShardReader
from train import train_stage
from train.data import IGNORE, PackedSequences, TrainBatches
from train.metrics import read_metrics
from train.trainer import loss_sum


@pytest.fixture(scope="module")
def prompted(tmp_path_factory, data_template):
    return write_prompted_shards(data_template, tmp_path_factory.mktemp("prompted"))


def expected_counted(reader: ShardReader) -> np.ndarray:
    """Per token of the packed array: does it count (not among its document's first third)? From the documents."""
    counted = []
    for i in range(reader.num_documents):
        n = reader.document(i).size
        counted += [False] * prompt_length(n) + [True] * (n - prompt_length(n)) + [True]  # + its eot
    return np.array(counted)


def test_prompt_tokens_get_no_label(prompted):
    reader = ShardReader(prompted / "train")
    counted = expected_counted(reader)
    seqs = PackedSequences(reader, 64, seed=0, shuffle=False, completion_only=True)
    windows = list(range(0, seqs.num_windows, 5))
    batch = seqs.batch(windows)
    for row, w in zip(batch.labels.numpy(), windows):
        want = counted[w * 64 + 1 : w * 64 + 65]  # label i is token i + 1
        np.testing.assert_array_equal(row != IGNORE, want)
    assert 0 < (batch.labels == IGNORE).float().mean() < 0.5
    plain = PackedSequences(reader, 64, seed=0, shuffle=False).batch(windows)
    assert plain.num_targets == plain.labels.numel()  # loss_on: all keeps every label


def test_loss_sums_completion_tokens_only(prompted):
    seqs = PackedSequences(ShardReader(prompted / "train"), 64, seed=0, shuffle=False, completion_only=True)
    batch = seqs.batch([0, 3, 7])
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_preset("tiny", vocab_size=seqs.reader.vocab_size, **SMALL_MODEL))
    labels = PackedSequences(seqs.reader, 64, seed=0, shuffle=False).batch([0, 3, 7]).labels  # every label
    with torch.no_grad():
        per_token = F.cross_entropy(model(batch.input_ids).flatten(0, 1), labels.flatten(), reduction="none")
        counted = (batch.labels != IGNORE).flatten()
        assert float(loss_sum(model, batch, document_masking=False)) == pytest.approx(
            float(per_token[counted].sum()), rel=1e-5
        )


def test_accumulation_does_not_change_a_masked_step(make_run, prompted):
    """micro 4 x accumulation 2 = micro 8 in one pass, although the two micro-batches count different numbers
    of tokens (a per-micro-batch mean would weight them equally and differ)."""
    stage = {"shards": str(prompted), "loss_on": "completion", "max_steps": 6, "eval_every": 0}
    runs = {}
    for micro in (4, 8):
        recipe = load_recipe(make_run(f"micro{micro}", pretrain={**stage, "micro_batch_size": micro}))
        train_stage(recipe, "pretrain")
        runs[micro] = read_metrics(recipe.run_path / "pretrain" / "metrics.jsonl")
    seqs = PackedSequences(ShardReader(prompted / "train"), 64, seed=7, shuffle=True, completion_only=True)
    halves = TrainBatches(seqs, micro_batch=4, accumulation=2, world=1, rank=0)
    counts = [[halves.micro_batch(step, k).num_targets for k in (0, 1)] for step in range(6)]
    assert any(a != b for a, b in counts), counts
    for a, b in zip(runs[4], runs[8]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert runs[4][-1]["val_loss"] == pytest.approx(runs[8][-1]["val_loss"], rel=1e-5)

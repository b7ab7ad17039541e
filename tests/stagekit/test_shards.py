"""Packed token shards: documents come back exactly, boundaries and position ids are where they belong."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stagekit.io import StageError
from stagekit.shards import ShardReader, ShardWriter

EOT = 0


def _docs(seed: int, n: int, vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=int(rng.integers(0, 40))).tolist() for _ in range(n)]


def _write(path, docs, vocab=1000, shard_tokens=64):
    with ShardWriter(path, vocab_size=vocab, eot_id=EOT, shard_tokens=shard_tokens) as w:
        for i, d in enumerate(docs):
            w.add_document(d, source="a" if i % 2 else "b")
        return w.close()


def test_documents_round_trip_across_shards(tmp_path):
    docs = _docs(0, 50, 1000)
    index = _write(tmp_path, docs)
    stream = [t for d in docs for t in (*d, EOT)]  # the reference layout: doc, eot, doc, eot, ...
    reader = ShardReader(tmp_path)
    assert reader.num_shards > 3 and index["num_tokens"] == len(stream) == reader.num_tokens
    assert all(s["num_tokens"] == 64 for s in index["shards"][:-1])  # fixed-size shards, documents straddle
    assert reader.dtype == np.uint16 and reader.num_documents == len(docs)
    assert [reader.document(i).tolist() for i in range(len(docs))] == docs
    assert reader.tokens(0, reader.num_tokens).tolist() == stream
    assert reader.read(1, 5, 10).tolist() == stream[64 + 5 : 64 + 15]
    assert index["tokens_per_source"] == {
        "a": sum(len(d) + 1 for d in docs[1::2]),
        "b": sum(len(d) + 1 for d in docs[0::2]),
    }


def test_window_position_ids_restart_after_each_eot(tmp_path):
    docs = _docs(1, 40, 500)
    _write(tmp_path, docs, vocab=500, shard_tokens=50)
    reader = ShardReader(tmp_path)
    stream = np.array([t for d in docs for t in (*d, EOT)])
    # Independent reference: scan for eot; the token after an eot starts a document at position 0.
    expected, pos = [], 0
    for tok in stream:
        expected.append(pos)
        pos = 0 if tok == EOT else pos + 1
    for start, length in [(0, 30), (45, 60), (97, 103), (len(stream) - 20, 20)]:
        tokens, positions = reader.window(start, length)
        assert tokens.dtype == np.int64 and positions.dtype == np.int64
        assert tokens.tolist() == stream[start : start + length].tolist()
        assert positions.tolist() == expected[start : start + length]


def test_boundary_index_is_stored_not_scanned(tmp_path):
    # An eot id inside a document's tokens must not split it: positions follow the stored starts.
    _write(tmp_path, [[5, EOT, 6], [7, 8]], vocab=10)
    _, positions = ShardReader(tmp_path).window(0, 6)
    assert positions.tolist() == [0, 1, 2, 3, 0, 1]


def test_uint32_for_large_vocab(tmp_path):
    _write(tmp_path, [[70000, 3], [65536]], vocab=100_000)
    reader = ShardReader(tmp_path)
    assert reader.dtype == np.uint32 and reader.document(0).tolist() == [70000, 3]
    assert json.loads((tmp_path / "index.json").read_text())["dtype"] == "uint32"


def test_empty_set_is_refused(tmp_path):
    w = ShardWriter(tmp_path, vocab_size=10, eot_id=0)
    with pytest.raises(StageError, match="no documents"):
        w.close()
    assert not any(tmp_path.iterdir())


def test_bad_token_and_failed_write_leave_no_index(tmp_path):
    with pytest.raises(StageError, match="outside the vocabulary"):
        with ShardWriter(tmp_path, vocab_size=10, eot_id=0, shard_tokens=4) as w:
            w.add_document([1, 2, 3, 4, 5])
            w.add_document([11])
    assert not (tmp_path / "index.json").exists()
    with pytest.raises(StageError, match="shard index not found"):
        ShardReader(tmp_path)


def test_truncated_shard_is_detected(tmp_path):
    _write(tmp_path, _docs(2, 10, 100), vocab=100)
    shard = tmp_path / "shard-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(StageError, match="truncated"):
        ShardReader(tmp_path)


def test_rewrite_replaces_previous_set(tmp_path):
    _write(tmp_path, _docs(3, 60, 100), vocab=100, shard_tokens=16)
    _write(tmp_path, [[1, 2]], vocab=100, shard_tokens=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "index.json",
        "shard-00000.bin",
        "shard-00000.docs.npy",
        "shard-00000.prompt.npy",
    ]
    assert ShardReader(tmp_path).document(0).tolist() == [1, 2]


def test_loss_mask_skips_each_documents_prompt(tmp_path):
    docs = _docs(4, 30, 300)
    prompts = [len(d) // 3 for d in docs]  # some 0 (short docs), some straddling shard boundaries
    with ShardWriter(tmp_path, vocab_size=300, eot_id=EOT, shard_tokens=16) as w:
        for d, p in zip(docs, prompts):
            w.add_document(d, prompt_tokens=p)
        index = w.close()
    # Reference: per document, p False then True for the rest of its tokens and its eot.
    expected = [k >= p for d, p in zip(docs, prompts) for k in range(len(d) + 1)]
    reader = ShardReader(tmp_path)
    assert index["prompt_tokens"] == sum(prompts) == expected.count(False)
    assert reader.loss_mask(0, reader.num_tokens).tolist() == expected
    for start, length in [(3, 20), (15, 2), (len(expected) - 9, 9)]:
        mask = reader.loss_mask(start, length)
        assert mask.dtype == bool and mask.tolist() == expected[start : start + length]


def test_format_1_sets_read_as_all_trained(tmp_path):
    _write(tmp_path, _docs(5, 20, 100), vocab=100, shard_tokens=32)
    index = json.loads((tmp_path / "index.json").read_text())
    for shard in index["shards"]:  # what a set written before prompt counts existed looks like
        (tmp_path / shard.pop("prompts")).unlink()
    index["format_version"] = 1
    del index["prompt_tokens"]
    (tmp_path / "index.json").write_text(json.dumps(index))
    reader = ShardReader(tmp_path)
    assert reader.loss_mask(0, reader.num_tokens).all()


def test_prompt_longer_than_document_is_refused(tmp_path):
    with pytest.raises(StageError, match="prompt_tokens 4 is outside"):
        with ShardWriter(tmp_path, vocab_size=10, eot_id=0) as w:
            w.add_document([1, 2, 3], source="x", prompt_tokens=4)

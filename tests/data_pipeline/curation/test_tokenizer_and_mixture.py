"""Tokenizer round trip and packed mixtures that decode back to the curated documents."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from curation_helpers import STDLIB, write_records
from transformers import AutoTokenizer

from data_pipeline.curation.mixture import load_tokenizer, run_shards
from data_pipeline.curation.tokenizer import run_tokenizer
from recipes.curation import MixtureComponent
from stagekit.io import StageError
from stagekit.shards import ShardReader

SMALL = ("data.curation.tokenizer.vocab_size=600",)
UNSEEN = "naïve café — 東京 🙂\tTabs\r\n  and   spaces\x00 ``` def ünïcode(x): return x ** 2"


def _code_docs(n: int) -> list[dict]:
    files = sorted(STDLIB.glob("json/*.py"))[:n]
    return [{"id": f.name, "text": f.read_text(encoding="utf-8")} for f in files]


def _prose_docs(n: int) -> list[dict]:
    return [
        {
            "id": f"p{i}",
            "text": f"Lesson {i}: a loop repeats a block of code. " * (3 + i)
            + f"Exercise {i}: count to {i + 2}.",
        }
        for i in range(n)
    ]


@pytest.fixture
def corpus(tmp_path):
    return write_records(tmp_path / "code.jsonl", _code_docs(5)), write_records(
        tmp_path / "prose.jsonl", _prose_docs(6)
    )


def test_tokenizer_round_trips_and_is_deterministic(make_recipe, tmp_path, corpus):
    recipe = make_recipe(*SMALL)
    manifest = run_tokenizer(recipe, list(corpus), tmp_path / "tok")
    assert manifest["counts"] == {"documents": 11, "vocab_size": 600}
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|endoftext|>", "<|pad|>", "<|endoftext|>")
    assert (tok.eos_token_id, tok.pad_token_id) == (0, 1) and len(tok) == 600
    for text in [d["text"] for d in _code_docs(5)] + [UNSEEN]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert tok.encode("<|endoftext|>", add_special_tokens=False) == [0]
    run_tokenizer(recipe, list(corpus), tmp_path / "tok2")
    assert (tmp_path / "tok" / "tokenizer.json").read_bytes() == (
        tmp_path / "tok2" / "tokenizer.json"
    ).read_bytes()


def test_existing_tokenizer_directory(make_recipe, tmp_path, corpus):
    from stagekit.assets import smollm2_dir

    recipe = make_recipe(f"data.curation.tokenizer.pretrained_dir={smollm2_dir()}")
    manifest = run_tokenizer(recipe, list(corpus), tmp_path / "tok")
    ours, theirs = (
        AutoTokenizer.from_pretrained(tmp_path / "tok"),
        AutoTokenizer.from_pretrained(smollm2_dir()),
    )
    assert manifest["counts"]["vocab_size"] == len(theirs) == len(ours)
    assert ours.encode(UNSEEN) == theirs.encode(UNSEEN) and ours.eos_token_id == theirs.eos_token_id


def test_load_tokenizer_agrees_with_transformers(make_recipe, tmp_path, corpus):
    from stagekit.assets import smollm2_dir

    run_tokenizer(make_recipe(*SMALL), list(corpus), tmp_path / "tok")
    for directory in (tmp_path / "tok", smollm2_dir()):
        reference = AutoTokenizer.from_pretrained(directory)
        tok, vocab_size, eos_id = load_tokenizer(directory)
        assert (vocab_size, eos_id) == (len(reference), reference.eos_token_id)
        ids = tok.encode(UNSEEN, add_special_tokens=False).ids
        assert ids == reference.encode(UNSEEN, add_special_tokens=False)


def test_empty_corpus_fails(make_recipe, tmp_path):
    with pytest.raises(StageError, match="no documents"):
        run_tokenizer(make_recipe(*SMALL), [write_records(tmp_path / "e.jsonl", [])], tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_mixture_shards_decode_to_the_documents(make_recipe, tmp_path, corpus):
    recipe = make_recipe(
        *SMALL, "data.curation.shards.val_fraction=0.2", "data.curation.shards.shard_tokens=2048"
    )
    run_tokenizer(recipe, list(corpus), tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    code_path, prose_path = corpus
    components = [
        (MixtureComponent(name="code", path=str(code_path), weight=2.0), code_path),
        (MixtureComponent(name="prose", path=str(prose_path), weight=0.5), prose_path),
    ]
    manifest = run_shards(recipe, "pretrain", components, tmp_path / "tok", tmp_path / "shards")
    texts = {"code": [d["text"] for d in _code_docs(5)], "prose": [d["text"] for d in _prose_docs(6)]}
    decoded = {}
    for split in ("train", "val"):
        reader = ShardReader(tmp_path / "shards" / split)
        assert reader.eot_id == tok.eos_token_id and reader.vocab_size == len(tok)
        decoded[split] = Counter(tok.decode(reader.document(i).tolist()) for i in range(reader.num_documents))
        # Boundaries: an eot ends every document and positions restart right after it.
        tokens, positions = reader.window(0, reader.num_tokens)
        starts = np.flatnonzero(positions == 0)
        assert starts.tolist() == reader.doc_starts.tolist()
        assert (tokens[starts[1:] - 1] == tok.eos_token_id).all() and tokens[-1] == tok.eos_token_id
    assert ShardReader(tmp_path / "shards" / "train").num_shards > 1
    val, train = decoded["val"], decoded["train"]
    assert not set(val) & set(train)  # held-out documents never appear in training
    assert all(n == 1 for n in val.values())
    code_val = [t for t in texts["code"] if t in val]
    prose_val = [t for t in texts["prose"] if t in val]
    assert len(code_val) == 1 and len(prose_val) == 1  # round(0.2 * 5), round(0.2 * 6)
    for t in texts["code"]:
        assert train[t] == (0 if t in val else 2)  # weight 2.0: every training document twice
    prose_train = [t for t in texts["prose"] if t not in val]
    assert (
        sum(train[t] for t in prose_train) == round(0.5 * len(prose_train))
        and max(train[t] for t in prose_train) == 1
    )
    # Token accounting against an independent encode of what was written.
    expected = sum(
        n * (len(tok.encode(t, add_special_tokens=False)) + 1) for t, n in train.items() if t in texts["code"]
    )
    assert manifest["splits"]["train"]["tokens_per_source"]["code"] == expected
    assert {m["name"]: m["weight"] for m in manifest["mixture"]} == {"code": 2.0, "prose": 0.5}

    again = run_shards(recipe, "pretrain", components, tmp_path / "tok", tmp_path / "shards2")
    assert again["splits"] == manifest["splits"]  # same shard hashes: deterministic


def test_mixture_errors(make_recipe, tmp_path, corpus):
    recipe = make_recipe(*SMALL)
    run_tokenizer(recipe, list(corpus), tmp_path / "tok")
    one = write_records(tmp_path / "one.jsonl", _prose_docs(1))
    with pytest.raises(StageError, match="at least 2 documents"):
        run_shards(
            recipe,
            "finetune",
            [(MixtureComponent(name="one", path=str(one)), one)],
            tmp_path / "tok",
            tmp_path / "s",
        )
    empty = write_records(tmp_path / "empty.jsonl", [{"id": "e", "text": ""}])
    with pytest.raises(StageError, match="at least 2 documents for a train/val split, got 0"):
        run_shards(
            recipe,
            "finetune",
            [(MixtureComponent(name="e", path=str(empty)), empty)],
            tmp_path / "tok",
            tmp_path / "s",
        )
    with pytest.raises(StageError, match="no tokenizer.json"):
        run_shards(
            recipe, "finetune", [(MixtureComponent(name="one", path=str(one)), one)], tmp_path, tmp_path / "s"
        )
    assert not (tmp_path / "s").exists()


def _exercise_records(n: int) -> list[dict]:
    """Exercise records as the CodeExercises parser writes them (text = prompt + solution)."""
    from data_pipeline.generation.code_exercises import split_exercise

    records = []
    for i in range(n):
        code = (
            f"def add_{i}(a: int, b: int) -> int:\n"
            f'    """Return a + b + {i}.\n\n    >>> add_{i}(1, 2)\n    {3 + i}\n    """\n'
            f"    total = a + b\n    return total + {i}\n"
        )
        prompt, solution, name = split_exercise(code)
        records.append({"id": f"e{i}", "text": prompt + solution, "prompt": prompt, "solution": solution})
    return records


def test_finetune_mask_prompt_trains_on_the_solution_only(make_recipe, tmp_path, corpus):
    recipe = make_recipe(*SMALL, "data.curation.shards.val_fraction=0.25")
    run_tokenizer(recipe, list(corpus), tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    records = _exercise_records(8)
    path = write_records(tmp_path / "ex.jsonl", records)
    comp = MixtureComponent(name="exercises", path=str(path), mask_prompt=True)
    manifest = run_shards(recipe, "finetune", [(comp, path)], tmp_path / "tok", tmp_path / "shards")
    by_text = {r["text"]: r for r in records}
    prompts = 0
    for split in ("train", "val"):
        reader = ShardReader(tmp_path / "shards" / split)
        mask = reader.loss_mask(0, reader.num_tokens)
        for i in range(reader.num_documents):
            ids = reader.document(i).tolist()
            record = by_text[tok.decode(ids)]
            start, n = int(reader.doc_starts[i]), len(ids) + 1
            # Reference: the prompt decodes to the record's prompt; the rest (solution, eot) is trained on.
            head = len(tok.encode(record["prompt"], add_special_tokens=False))
            assert tok.decode(ids[:head]) == record["prompt"]
            assert mask[start : start + n].tolist() == [False] * head + [True] * (n - head)
            prompts += head
        assert manifest["splits"][split]["prompt_tokens"] == int((~mask).sum())
    assert prompts > 0
    # Without mask_prompt the same records train on every token.
    plain = MixtureComponent(name="exercises", path=str(path))
    run_shards(recipe, "finetune", [(plain, path)], tmp_path / "tok", tmp_path / "plain")
    reader = ShardReader(tmp_path / "plain" / "train")
    assert reader.loss_mask(0, reader.num_tokens).all()


def test_mask_prompt_refuses_a_prompt_that_is_not_the_texts_prefix(make_recipe, tmp_path, corpus):
    recipe = make_recipe(*SMALL)
    run_tokenizer(recipe, list(corpus), tmp_path / "tok")
    records = _exercise_records(3)
    records[1]["prompt"] = "def other():\n"
    path = write_records(tmp_path / "ex.jsonl", records)
    comp = MixtureComponent(name="exercises", path=str(path), mask_prompt=True)
    with pytest.raises(StageError, match="record e1: its `prompt` is not a prefix"):
        run_shards(recipe, "finetune", [(comp, path)], tmp_path / "tok", tmp_path / "s")

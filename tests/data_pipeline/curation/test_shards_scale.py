"""Tokenize and pack at scale: per-task token shards, a streaming split and a bucketed shuffle give the same
shards whatever the task count or input layout, and after a kill; the shards hold what the inputs say."""

from __future__ import annotations

import random
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
from curation_helpers import STDLIB, run_in_own_session, script_env, write_records
from transformers import AutoTokenizer

from data_pipeline.curation.corpus import byte_range, read_jsonl_range
from data_pipeline.curation.mixture import run_shards
from data_pipeline.curation.tokenizer import run_tokenizer
from recipes.curation import MixtureComponent
from stagekit.io import StageError
from stagekit.shards import ShardReader, ShardWriter, iter_documents

SMALL = (
    "data.curation.tokenizer.vocab_size=500",
    "data.curation.shards.val_fraction=0.1",
    "data.curation.shards.shard_tokens=4096",
    "data.curation.shards.shuffle_buffer_tokens=20000",  # several shuffle buckets
)
LOCAL = (
    "data.curation.executor.kind=local",
    "data.curation.executor.tasks=3",
    "data.curation.executor.workers=2",
)


def _docs() -> list[dict]:
    files = sorted(STDLIB.glob("json/*.py")) + sorted(STDLIB.glob("email/*.py"))[:20]
    return [{"id": f"{f.parent.name}/{f.name}", "text": f.read_text(encoding="utf-8")} for f in files]


def _decoded(tok, directory: Path) -> list[str]:
    reader = ShardReader(directory)
    return [tok.decode(reader.document(i).tolist()) for i in range(reader.num_documents)]


def test_iter_documents_streams_what_the_reader_maps(tmp_path):
    rng = random.Random(0)
    written = [([rng.randrange(1, 50) for _ in range(rng.randrange(0, 30))], 0) for _ in range(40)]
    written = [(ids, rng.randrange(0, len(ids) + 1)) for ids, _ in written]
    with ShardWriter(
        tmp_path / "s", vocab_size=50, eot_id=0, shard_tokens=7
    ) as w:  # documents straddle shards
        for ids, prompt in written:
            w.add_document(ids, prompt_tokens=prompt)
        w.close()
    reader = ShardReader(tmp_path / "s")
    streamed = [(t.tolist(), p) for t, p in iter_documents(tmp_path / "s")]
    assert streamed == written
    assert streamed == [
        (reader.document(i).tolist(), int(reader.doc_prompt_tokens[i])) for i in range(reader.num_documents)
    ]


def test_task_count_and_input_layout_do_not_change_the_shards(make_recipe, tmp_path):
    docs = _docs()
    src = write_records(tmp_path / "code.jsonl", docs)
    shard_dir = tmp_path / "code"  # the same records as a directory of 4 JSONL shards
    for k in range(4):
        write_records(shard_dir / f"part-{k}.jsonl", docs[k * len(docs) // 4 : (k + 1) * len(docs) // 4])
    run_tokenizer(make_recipe(*SMALL), [src], tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")

    def pack(name: str, path: Path, *overrides: str) -> dict:
        comp = MixtureComponent(name="code", path=str(path), weight=1.5)
        recipe = make_recipe(*SMALL, *overrides)
        return run_shards(recipe, "pretrain", [(comp, path)], tmp_path / "tok", tmp_path / name / "shards")

    inline = pack("inline", src)
    local = pack("local", src, *LOCAL)
    from_dir = pack("dir", shard_dir, *LOCAL[:2], "data.curation.executor.workers=1")  # tasks in this process
    assert local["splits"] == inline["splits"] == from_dir["splits"]  # every shard's sha256
    assert inline["shuffle_buckets"] > 1
    parts = tmp_path / "local" / "_cache" / "pretrain-code" / "parts"
    assert sorted(p.name for p in parts.iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        "00000",
        "00001",
        "00002",
    ]
    # Reference: the input documents. Validation: round(0.1 * n), each once and never trained on; training:
    # every other document once, and a half of them (weight 1.5) twice.
    texts = [d["text"] for d in docs]
    val = Counter(_decoded(tok, tmp_path / "inline" / "shards" / "val"))
    train_order = _decoded(tok, tmp_path / "inline" / "shards" / "train")
    train = Counter(train_order)
    assert sum(val.values()) == len(val) == round(0.1 * len(docs)) and set(val) <= set(texts)
    assert not set(val) & set(train) and set(val) | set(train) == set(texts)
    assert sorted(Counter(train.values()).items()) == [
        (1, len(train) - round(0.5 * len(train))),
        (2, round(0.5 * len(train))),
    ]
    firsts = list(dict.fromkeys(train_order))
    assert firsts != [t for t in texts if t in train]  # shuffled, not in input order


KILL_SCRIPT = """
import sys
from pathlib import Path
import data_pipeline.curation.mixture as mixture
from curation_helpers import KillableTokenizer
from recipes import load_recipe
from recipes.curation import MixtureComponent

recipe_path, src, tok, out, *overrides = sys.argv[1:]
if __name__ == "__main__":
    mixture.TokenizeWorker = KillableTokenizer  # logs each record; SIGKILLs itself at $KILL_AT once
    comp = MixtureComponent(name="code", path=src, weight=1.5)
    recipe = load_recipe(recipe_path, overrides)
    mixture.run_shards(recipe, "pretrain", [(comp, Path(src))], Path(tok), Path(out))
"""


def test_killed_tokenization_resumes_without_losing_or_duplicating(make_recipe, tmp_path):
    docs = _docs()
    src = write_records(tmp_path / "code.jsonl", docs)
    recipe = make_recipe(*SMALL)
    run_tokenizer(recipe, [src], tmp_path / "tok")
    comp = MixtureComponent(name="code", path=str(src), weight=1.5)
    reference = run_shards(recipe, "pretrain", [(comp, src)], tmp_path / "tok", tmp_path / "ref" / "shards")

    (tmp_path / "script.py").write_text(KILL_SCRIPT)
    (tmp_path / "kill").touch()
    task1 = [r["id"] for r in read_jsonl_range(src, *byte_range(src, 1, 3), ())]
    kill_at = task1[1]  # the middle task's second record
    env = script_env(KILL_DIR=str(tmp_path), KILL_AT=kill_at)
    out = tmp_path / "run" / "shards"
    overrides = [*SMALL, "data.curation.executor.kind=local", "data.curation.executor.tasks=3"]
    overrides.append("data.curation.executor.workers=1")  # tasks one after another, in this process
    cmd = [sys.executable, str(tmp_path / "script.py"), str(tmp_path / "recipe.yaml"), str(src)]
    cmd += [str(tmp_path / "tok"), str(out), *overrides]

    assert run_in_own_session(cmd, env) == -signal.SIGKILL and not out.exists()
    assert run_in_own_session(cmd, env) == 0
    # Reference: the uninterrupted inline run; same shard bytes = no document missing or repeated.
    for split in ("train", "val"):
        index = ShardReader(out / split).index
        assert [x["sha256"] for x in index["shards"]] == reference["splits"][split]["shard_sha256"]
        assert index["num_documents"] == reference["counts"][split]["documents"]
    # The finished first task was not redone; the killed task ran again from its start; every record ran.
    processed = Counter((tmp_path / "processed.txt").read_text().split())
    ids = [d["id"] for d in docs]
    redone = {i for i, n in processed.items() if n > 1}
    assert set(processed) == set(ids) and redone == set(task1[:2])


def test_a_component_with_no_training_copies_is_an_error(make_recipe, tmp_path):
    src = write_records(tmp_path / "code.jsonl", _docs()[:6])
    recipe = make_recipe(*SMALL)
    run_tokenizer(recipe, [src], tmp_path / "tok")
    comp = MixtureComponent(name="code", path=str(src), weight=0.0)
    with pytest.raises(StageError, match="no documents to write"):
        run_shards(recipe, "pretrain", [(comp, src)], tmp_path / "tok", tmp_path / "shards")
    assert not (tmp_path / "shards").exists()

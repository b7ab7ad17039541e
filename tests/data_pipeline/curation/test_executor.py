"""datatrove's LocalPipelineExecutor runs the real stages as parallel tasks, with the inline run's output."""

from __future__ import annotations

import pytest
from curation_helpers import STDLIB, write_records

from data_pipeline.curation.dedup import run_dedup
from data_pipeline.curation.heuristics import run_heuristics
from data_pipeline.curation.mixture import run_shards
from data_pipeline.curation.tokenizer import run_tokenizer
from recipes.curation import MixtureComponent
from stagekit.io import sha256_file

LOCAL = (
    "data.curation.executor.kind=local",
    "data.curation.executor.tasks=3",
    "data.curation.executor.workers=2",
)


def _corpus(tmp_path):
    files = sorted(STDLIB.glob("email/*.py"))[:14]
    docs = [{"id": f.name, "text": f.read_text(encoding="utf-8")} for f in files]
    docs.append({"id": "copy", "text": docs[0]["text"].upper()})  # an exact duplicate after normalization
    docs.append({"id": "tiny", "text": "pass\n"})  # dropped by heuristics
    return write_records(tmp_path / "corpus.jsonl", docs)


@pytest.mark.slow
def test_local_executor_matches_inline(make_recipe, tmp_path):
    src = _corpus(tmp_path)
    inline, local = (
        make_recipe("data.curation.tokenizer.vocab_size=500"),
        make_recipe("data.curation.tokenizer.vocab_size=500", *LOCAL),
    )
    outputs = {}
    for name, recipe in (("inline", inline), ("local", local)):
        out = tmp_path / name
        heur = run_heuristics(recipe, src, out / "heuristics.jsonl")
        dedup = run_dedup(recipe, out / "heuristics.jsonl", out / "dedup.jsonl")
        run_tokenizer(inline, [out / "dedup.jsonl"], out / "tok")
        comp = MixtureComponent(name="code", path=str(out / "dedup.jsonl"))
        shards = run_shards(recipe, "pretrain", [(comp, out / "dedup.jsonl")], out / "tok", out / "shards")
        outputs[name] = (heur["drops"], dedup["drops"], sha256_file(out / "dedup.jsonl"), shards["splits"])
    assert outputs["local"] == outputs["inline"]
    assert outputs["inline"][0] == {"too_long": 1, "too_short": 1} and outputs["inline"][1] == {
        "exact_duplicate": 1
    }
    # The datatrove tasks really ran: one part per task and their logs/completions.
    parts = sorted((tmp_path / "local" / "_datatrove" / "dedup" / "parts").glob("*.jsonl"))
    assert [p.name for p in parts] == ["00000.jsonl", "00001.jsonl", "00002.jsonl"]
    assert len(list((tmp_path / "local" / "_datatrove" / "dedup" / "logs" / "completions").iterdir())) == 3

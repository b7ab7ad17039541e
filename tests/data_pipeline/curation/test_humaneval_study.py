"""Phi-1 Sec. 5.2 study: hand-made near-copies of HumanEval problems are found and pruned, other exercises kept."""

from __future__ import annotations

import pytest
from curation_helpers import read_records, write_records

from data_pipeline.curation.humaneval_study import (
    StudyWorker,
    ast_fingerprint,
    ast_match_rate,
    format_table,
    humaneval_problems,
    run_humaneval_study,
)

# HumanEval/0 with every name changed and the docstring reworded.
RENAMED = '''from typing import List


def any_pair_within(values: List[float], limit: float) -> bool:
    """Tell whether some two entries of values lie closer together than limit."""
    for i, a in enumerate(values):
        for j, b in enumerate(values):
            if i != j:
                gap = abs(a - b)
                if gap < limit:
                    return True
    return False
'''

# HumanEval/37 with names changed and its independent statements in another order.
REORDERED = '''def sort_even_positions(xs: list):
    """Sort the values at even positions, leave the odd positions alone."""
    out = []
    odd = xs[1::2]
    even = xs[::2]
    even.sort()
    for p, q in zip(even, odd):
        out.extend([p, q])
    if len(even) > len(odd):
        out.append(even[-1])
    return out
'''

# Ordinary exercises that solve other problems.
OTHERS = [
    '''def count_vowels(text: str) -> int:
    """Count the vowels in text.

    >>> count_vowels("banana")
    3
    """
    return sum(1 for ch in text.lower() if ch in "aeiou")
''',
    '''def merge_intervals(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping closed intervals."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
''',
    '''def run_lengths(items: list) -> list[tuple[object, int]]:
    """Run-length encode a list."""
    runs = []
    for item in items:
        if runs and runs[-1][0] == item:
            runs[-1] = (item, runs[-1][1] + 1)
        else:
            runs.append((item, 1))
    return runs
''',
]


def test_match_rate_ignores_names_and_order_but_not_structure():
    source = dict(humaneval_problems())["HumanEval/0"]
    ref = ast_fingerprint(source)
    assert ast_match_rate(ref, ast_fingerprint(source)) == 1.0
    assert ast_match_rate(ref, ast_fingerprint(RENAMED)) == 1.0  # identical up to names and docstring
    assert ast_match_rate(ref, ast_fingerprint(OTHERS[1])) < 0.5
    assert ast_fingerprint("def broken(:\n") is None


def test_study_finds_planted_near_copies(make_recipe, tmp_path):
    records = [{"id": "renamed", "text": RENAMED}, {"id": "reordered", "text": REORDERED}]
    records += [{"id": f"other-{i}", "text": t} for i, t in enumerate(OTHERS)]
    src = write_records(tmp_path / "ex.jsonl", records)
    recipe = make_recipe(
        "data.curation.humaneval_study.prune_ast=0.8", "data.curation.humaneval_study.embedder="
    )
    manifest = run_humaneval_study(recipe, src, tmp_path / "out.jsonl")
    assert [r["id"] for r in read_records(tmp_path / "out.jsonl")] == ["other-0", "other-1", "other-2"]
    assert manifest["drops"] == {"humaneval_ast": 2}
    found = {e["id"]: e["item"] for e in manifest["study"]["examples"]}
    assert found == {"renamed": "HumanEval/0", "reordered": "HumanEval/37"}
    study = manifest["study"]
    assert study["problems"] == len(humaneval_problems()) and study["exercises"] == 5
    rows = {(r["measure"], r["threshold"]): r for r in study["table"]}
    assert rows[("ast", 0.8)]["exercises_removed"] == 2 and rows[("ast", 0.8)]["problems_similar"] == 2
    assert rows[("ast", 0.8)]["problems_non_similar"] == study["problems"] - 2
    # Thresholds are nested: a stricter one never removes more.
    removed = [rows[("ast", t)]["exercises_removed"] for t in (0.95, 0.9, 0.85, 0.8)]
    assert removed == sorted(removed)
    assert "| ast | 0.8 | 2 | 2 |" in format_table(study)
    assert {r["measure"] for r in study["table"]} == {"ast"}  # no embedder: the AST measure only


@pytest.mark.slow  # embeds the 164 HumanEval problems with MiniLM (a minute on 2 busy cores)
def test_embedding_similarity_puts_the_copy_nearest_its_source(make_recipe, tmp_path):
    records = [{"id": "renamed", "text": RENAMED}] + [
        {"id": f"o{i}", "text": t} for i, t in enumerate(OTHERS)
    ]
    src = write_records(tmp_path / "ex.jsonl", records)
    recipe = make_recipe("data.curation.humaneval_study.prune_embedding=0.99")
    manifest = run_humaneval_study(recipe, src, tmp_path / "out.jsonl")
    rows = [r for r in manifest["study"]["table"] if r["measure"] == "embedding"]
    assert [r["threshold"] for r in rows] == [0.95, 0.9, 0.85, 0.8]
    worker = StudyWorker("minilm", 2000, 0.0, 0.0).ready()  # floors 0: every problem's score comes back
    results = worker.process(records)
    he0 = humaneval_problems().index(next(p for p in humaneval_problems() if p[0] == "HumanEval/0"))
    to_source = [dict(map(tuple, r["embedding"]))[he0] for r in results]
    assert results[0]["best_embedding_item"] == "HumanEval/0"
    assert to_source[0] > max(to_source[1:])  # closer to its source than any unrelated exercise is

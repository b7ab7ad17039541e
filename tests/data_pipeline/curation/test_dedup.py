"""Dedup on datatrove's MinHash blocks: exact copies (modulo case/whitespace) and near-duplicates dropped,
the earliest copy kept, judged against an exact pairwise Jaccard reference; inline and local agree."""

from __future__ import annotations

import re

import pytest
from curation_helpers import STDLIB, read_records, stdlib_text, write_records

from data_pipeline.curation.dedup import run_dedup
from stagekit.io import StageError, sha256_file

LOCAL = (
    "data.curation.executor.kind=local",
    "data.curation.executor.tasks=3",
    "data.curation.executor.workers=2",
)


def _shingles(text: str) -> set[str]:
    """The reference: lowercase \\w+ words, 5-word shingles, computed independently of datatrove."""
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i : i + 5]) for i in range(max(1, len(words) - 4))}


def _jaccard(a: str, b: str) -> float:
    x, y = _shingles(a), _shingles(b)
    return len(x & y) / len(x | y)


def _edited(text: str, at: int) -> str:
    lines = text.splitlines()
    lines[at] = lines[at] + "  # tweaked"
    return "\n".join(lines[:-2])  # edited and cut short: not an exact copy


def _corpus():
    a, b, c, d = (stdlib_text(n) for n in ("heapq.py", "bisect.py", "colorsys.py", "keyword.py"))
    shouty = "  ".join(b.upper().split(" ")).replace("\n", "\r\n")
    return [
        {"id": "a", "text": a},
        {"id": "b", "text": b},
        {"id": "c", "text": c},
        {"id": "a-near", "text": _edited(a, 40)},
        {"id": "b-exact", "text": shouty},
        {"id": "d", "text": d},
    ]


def test_near_and_exact_duplicates_are_dropped_first_kept(make_recipe, tmp_path):
    docs = _corpus()
    # The planted near-duplicate is one by the true Jaccard; the distinct files are far apart.
    assert _jaccard(docs[0]["text"], docs[3]["text"]) > 0.95
    assert max(_jaccard(x["text"], y["text"]) for x in docs[:3] for y in docs[:3] if x is not y) < 0.2
    src = write_records(tmp_path / "in.jsonl", docs)
    manifest = run_dedup(make_recipe(), src, tmp_path / "out.jsonl")
    assert [r["id"] for r in read_records(tmp_path / "out.jsonl")] == ["a", "b", "c", "d"]
    assert manifest["drops"] == {"exact_duplicate": 1, "near_duplicate": 1}
    assert manifest["counts"] == {"in": 6, "out": 4, "dropped": 2}
    assert manifest["clusters"]["clusters_with_duplicates"] == 2
    assert {(e["kept"], e["dropped"], e["rule"]) for e in manifest["clusters"]["examples"]} == {
        ("a", "a-near", "near_duplicate"),
        ("b", "b-exact", "exact_duplicate"),
    }


def test_which_copy_stays_follows_input_order(make_recipe, tmp_path):
    docs = _corpus()
    # The edited copy now comes first and is the one kept; with three copies the earliest wins, whatever
    # datatrove's union-by-size would pick.
    reordered = [docs[3], docs[0], docs[1], {"id": "a-near2", "text": _edited(docs[0]["text"], 90)}]
    src = write_records(tmp_path / "in.jsonl", reordered)
    run_dedup(make_recipe(), src, tmp_path / "out.jsonl")
    assert [r["id"] for r in read_records(tmp_path / "out.jsonl")] == ["a-near", "b"]


def test_thresholds_and_switches(make_recipe, tmp_path):
    src = write_records(tmp_path / "in.jsonl", _corpus())
    exact_only = run_dedup(make_recipe("data.curation.dedup.near=false"), src, tmp_path / "exact.jsonl")
    assert exact_only["drops"] == {"exact_duplicate": 1}
    char = run_dedup(
        make_recipe("data.curation.dedup.shingle=char", "data.curation.dedup.shingle_size=8"),
        src,
        tmp_path / "char.jsonl",
    )
    assert char["drops"] == {"exact_duplicate": 1, "near_duplicate": 1}
    banded = run_dedup(
        make_recipe("data.curation.dedup.bands=14", "data.curation.dedup.rows=8"),
        src,
        tmp_path / "banded.jsonl",
    )
    assert banded["lsh"] == {"bands": 14, "rows": 8}


def _reference_corpus() -> list[dict]:
    """Distinct stdlib modules plus planted one-line edits and case/whitespace copies of some of them."""
    files = [p for p in sorted(STDLIB.glob("*.py")) if 4_000 < p.stat().st_size < 20_000][:24]
    docs = [{"id": p.stem, "text": p.read_text(encoding="utf-8")} for p in files]
    for i in range(0, 24, 3):
        docs.append({"id": f"{docs[i]['id']}-near", "text": _edited(docs[i]["text"], 20 + i)})
    for i in range(1, 24, 6):
        docs.append({"id": f"{docs[i]['id']}-exact", "text": docs[i]["text"].upper()})
    order = list(range(len(docs)))
    order[2], order[-1] = order[-1], order[2]  # one copy before its original: the copy is the one kept
    return [docs[i] for i in order]


@pytest.mark.slow
def test_matches_an_exact_jaccard_reference_inline_and_local(make_recipe, tmp_path):
    docs = _reference_corpus()
    sims = {(i, j): _jaccard(docs[i]["text"], docs[j]["text"]) for j in range(len(docs)) for i in range(j)}
    # The corpus has a clear gap, so MinHash at threshold 0.8 must agree with the reference exactly.
    assert all(s > 0.95 or s < 0.5 for s in sims.values())
    expected = [d["id"] for j, d in enumerate(docs) if not any(sims[i, j] >= 0.8 for i in range(j))]
    assert len(expected) == 24
    src = write_records(tmp_path / "in.jsonl", docs)
    inline = run_dedup(make_recipe(), src, tmp_path / "inline.jsonl")
    local = run_dedup(make_recipe(*LOCAL), src, tmp_path / "local.jsonl")
    assert [r["id"] for r in read_records(tmp_path / "inline.jsonl")] == expected
    assert sha256_file(tmp_path / "local.jsonl") == sha256_file(tmp_path / "inline.jsonl")
    assert local["drops"] == inline["drops"] == {"exact_duplicate": 4, "near_duplicate": 8}
    parts = sorted((tmp_path / "_datatrove" / "local" / "parts").glob("*.jsonl"))
    assert [p.name for p in parts] == ["00000.jsonl", "00001.jsonl", "00002.jsonl"]

    # A re-run after losing a task's part redoes that task only and writes the same output.
    parts[1].unlink()
    (tmp_path / "_datatrove" / "local" / "logs" / "completions" / "00001").unlink()
    run_dedup(make_recipe(*LOCAL), src, tmp_path / "local.jsonl", force=True)
    assert sha256_file(tmp_path / "local.jsonl") == sha256_file(tmp_path / "inline.jsonl")


def test_bad_line_names_file_and_line(make_recipe, tmp_path):
    src = write_records(tmp_path / "in.jsonl", _corpus())
    lines = src.read_text().splitlines()
    lines[2] = '{"id": "c"}'
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(StageError, match=r"in\.jsonl:3"):
        run_dedup(make_recipe(), src, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_deterministic_and_fresh(make_recipe, tmp_path):
    src = write_records(tmp_path / "in.jsonl", _corpus())
    first = run_dedup(make_recipe(), src, tmp_path / "one.jsonl")
    run_dedup(make_recipe(), src, tmp_path / "two.jsonl")
    assert sha256_file(tmp_path / "one.jsonl") == sha256_file(tmp_path / "two.jsonl")
    assert run_dedup(make_recipe(), src, tmp_path / "one.jsonl") == first  # up to date: reused as is

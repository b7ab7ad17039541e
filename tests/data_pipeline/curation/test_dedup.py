"""Dedup: exact copies (modulo case/whitespace) and MinHash near-duplicates are dropped, the first copy kept."""

from __future__ import annotations

from curation_helpers import read_records, stdlib_text, write_records

from data_pipeline.curation.dedup import run_dedup, shingles
from stagekit.io import sha256_file


def _jaccard(a: str, b: str) -> float:
    x, y = shingles(a, "word", 5), shingles(b, "word", 5)
    return len(x & y) / len(x | y)


def _corpus():
    a, b, c, d = (stdlib_text(n) for n in ("heapq.py", "bisect.py", "colorsys.py", "keyword.py"))
    lines = a.splitlines()
    lines[40] = lines[40] + "  # tweaked"
    lines[120] = "    pass"
    near = "\n".join(lines[:-3])  # edited and cut short: not an exact copy
    shouty = "  ".join(b.upper().split(" ")).replace("\n", "\r\n")
    return [
        {"id": "a", "text": a},
        {"id": "b", "text": b},
        {"id": "c", "text": c},
        {"id": "a-near", "text": near},
        {"id": "b-exact", "text": shouty},
        {"id": "d", "text": d},
    ]


def test_near_and_exact_duplicates_are_dropped_first_kept(make_recipe, tmp_path):
    docs = _corpus()
    # The planted near-duplicate is one by the true Jaccard; the distinct files are far apart.
    assert _jaccard(docs[0]["text"], docs[3]["text"]) > 0.9
    assert max(_jaccard(x["text"], y["text"]) for x in docs[:3] for y in docs[:3] if x is not y) < 0.2
    src = write_records(tmp_path / "in.jsonl", docs)
    manifest = run_dedup(make_recipe(), src, tmp_path / "out.jsonl")
    assert [r["id"] for r in read_records(tmp_path / "out.jsonl")] == ["a", "b", "c", "d"]
    assert manifest["drops"] == {"exact_duplicate": 1, "near_duplicate": 1}
    assert manifest["clusters"]["clusters_with_duplicates"] == 2
    assert {(e["kept"], e["dropped"], e["rule"]) for e in manifest["clusters"]["examples"]} == {
        ("a", "a-near", "near_duplicate"),
        ("b", "b-exact", "exact_duplicate"),
    }


def test_which_copy_stays_follows_input_order(make_recipe, tmp_path):
    docs = _corpus()
    reordered = [docs[3], docs[0], docs[1]]  # the edited copy now comes first and is the one kept
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


def test_deterministic(make_recipe, tmp_path):
    src = write_records(tmp_path / "in.jsonl", _corpus())
    run_dedup(make_recipe(), src, tmp_path / "one.jsonl")
    run_dedup(make_recipe(), src, tmp_path / "two.jsonl")
    assert sha256_file(tmp_path / "one.jsonl") == sha256_file(tmp_path / "two.jsonl")

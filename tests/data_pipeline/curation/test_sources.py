"""Sources: a seeded stdlib sample (The Stack stand-in) and local JSONL / Parquet / text files."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_helpers import STDLIB, read_records, stdlib_text, write_records

from data_pipeline.curation.sources import run_sources
from stagekit.io import StageError

NO_STDLIB = "data.curation.sources.stdlib.enabled=false"


def test_stdlib_sample_is_seeded_and_excludes_tests(make_recipe, tmp_path):
    recipe = make_recipe("data.curation.sources.stdlib.max_files=25")
    manifest = run_sources(recipe, tmp_path / "a.jsonl")
    rows = read_records(tmp_path / "a.jsonl")
    assert manifest["counts"]["out"] == len(rows) == 25 - sum(manifest["drops"].values())
    for r in rows:
        assert r["source"] == "stdlib" and r["id"] == f"stdlib:{r['path']}"
        rel = r["path"].split("/", 1)[1]
        assert "/test/" not in f"/{rel}" and "site-packages" not in rel
        assert r["text"] == (STDLIB / rel).read_text(encoding="utf-8")  # the file, unchanged
    run_sources(recipe, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    other = run_sources(
        make_recipe("data.curation.sources.stdlib.max_files=25", "seed=7"), tmp_path / "c.jsonl"
    )
    assert other["counts"]["out"] > 0 and read_records(tmp_path / "c.jsonl") != rows


def test_local_files(make_recipe, tmp_path):
    write_records(
        tmp_path / "in" / "a.jsonl", [{"content": "print(1)\n", "lang": "py"}, {"content": "x = 2\n"}]
    )
    pq.write_table(
        pa.table({"text": ["def f():\n    return 1\n", "y = 3\n"], "n": [1, 2]}),
        tmp_path / "in" / "b.parquet",
    )
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "one.md").write_text("# Loops\nA loop repeats.\n")
    (tmp_path / "notes" / "two.md").write_text("# Lists\nA list keeps order.\n")
    files = (
        f"data.curation.sources.files=[{{name: js, path: '{tmp_path}/in/*.jsonl', text_field: content}},"
        f" {{name: pq, path: '{tmp_path}/in/*.parquet'}},"
        f" {{name: md, path: '{tmp_path}/notes/*.md', max_records: 1}}]"
    )
    manifest = run_sources(make_recipe(NO_STDLIB, files), tmp_path / "out.jsonl")
    rows = read_records(tmp_path / "out.jsonl")
    assert [(r["source"], r["text"]) for r in rows] == [
        ("js", "print(1)\n"),
        ("js", "x = 2\n"),
        ("pq", "def f():\n    return 1\n"),
        ("pq", "y = 3\n"),
        ("md", "# Loops\nA loop repeats.\n"),
    ]
    assert rows[0]["lang"] == "py" and rows[2]["n"] == 1  # metadata passes through
    assert manifest["counts"]["per_source"] == {"js": 2, "md": 1, "pq": 2}


def test_source_errors(make_recipe, tmp_path):
    missing = f"data.curation.sources.files=[{{name: x, path: '{tmp_path}/none/*.jsonl'}}]"
    with pytest.raises(StageError, match=r"sources.files 'x': no file matches .*none/\*\.jsonl"):
        run_sources(make_recipe(NO_STDLIB, missing), tmp_path / "out.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": 3}\n')
    bad = f"data.curation.sources.files=[{{name: b, path: '{tmp_path}/bad.jsonl'}}]"
    with pytest.raises(StageError, match=r"bad\.jsonl: record 1 field 'text' is not a string"):
        run_sources(make_recipe(NO_STDLIB, bad), tmp_path / "out.jsonl")
    with pytest.raises(StageError, match="no documents found"):
        run_sources(make_recipe(NO_STDLIB), tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_hub_source_streams_a_local_dataset_through_datasets(make_recipe, tmp_path):
    """The cluster path (`datasets.load_dataset(name, streaming=True)`) on a local Parquet dataset, offline."""
    rows = [{"content": stdlib_text(n), "path": n} for n in ("colorsys.py", "keyword.py", "bisect.py")]
    data = tmp_path / "the-stack-mini" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:2]), data / "train-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), data / "train-00001.parquet")
    hub = f"{{name: stack, dataset: {tmp_path / 'the-stack-mini'}, text_field: content}}"
    recipe = make_recipe("data.curation.sources.stdlib.enabled=false", f"data.curation.sources.hub=[{hub}]")
    manifest = run_sources(recipe, tmp_path / "corpus.jsonl")
    # Reference: the Parquet rows as pyarrow reads them, in file order.
    expected = [r for f in sorted(data.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    got = read_records(tmp_path / "corpus.jsonl")
    assert [(r["text"], r["path"], r["source"]) for r in got] == [
        (r["content"], r["path"], "stack") for r in expected
    ]
    assert manifest["counts"]["per_source"] == {"stack": 3}

"""Stage plumbing: strict JSONL, atomic writes, manifests and freshness."""

from __future__ import annotations

import json

import pytest

from stagekit.io import StageError, atomic_path, is_fresh, read_jsonl, write_jsonl, write_manifest


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": 1, "text": "a"}\n\n{"id": 2, "text": \n')
    with pytest.raises(StageError, match=r"in\.jsonl:3: malformed JSON"):
        list(read_jsonl(path))


def test_missing_field_and_missing_file(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": 1}\n')
    with pytest.raises(StageError, match=r"in\.jsonl:1: record lacks required field\(s\) text"):
        list(read_jsonl(path, required=["text"]))
    with pytest.raises(StageError, match="input file not found"):
        list(read_jsonl(tmp_path / "nope.jsonl"))


def test_failed_write_leaves_previous_output(tmp_path):
    out = tmp_path / "out.jsonl"
    write_jsonl(out, [{"id": 1}])

    def records():
        yield {"id": 2}
        raise RuntimeError("killed mid-stage")

    with pytest.raises(RuntimeError):
        write_jsonl(out, records())
    assert [r["id"] for r in read_jsonl(out)] == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_atomic_directory_replace(tmp_path):
    target = tmp_path / "dir"
    for generation in (1, 2):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "f.txt").write_text(str(generation))
    assert (target / "f.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


def test_manifest_freshness(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, [{"id": 1, "text": "x"}])
    write_jsonl(out, [{"id": 1, "text": "x"}])
    kwargs = dict(stage="copy", version="1", params={"n": 3}, inputs=[src])
    manifest = write_manifest(out, counts={"in": 1, "out": 1}, **kwargs)
    assert (
        json.loads(out.with_name("out.jsonl.manifest.json").read_text())["output_sha256"]
        == manifest["output_sha256"]
    )
    assert is_fresh(out, **kwargs)
    assert not is_fresh(out, **{**kwargs, "params": {"n": 4}})
    write_jsonl(src, [{"id": 1, "text": "changed"}])
    assert not is_fresh(out, **kwargs)

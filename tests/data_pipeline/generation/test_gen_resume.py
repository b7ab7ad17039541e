"""kill -9 at random points of a streaming generate run (parts of 3 prompts), then the same command again:
no duplicate, no missing id, and the same records as an uninterrupted run."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from generation_helpers import REPO, minimal_recipe, read_ids

from data_pipeline.generation.runner import load_prompts, parts_dir
from data_pipeline.teachers import Sampling
from stagekit.io import read_manifest

N = 10
SAMPLING = Sampling(max_new_tokens=6, temperature=0.6, top_p=0.95, seed=1234)


def _cmd(tmp_path, prompts, output):
    return [
        sys.executable, str(REPO / "tests/data_pipeline/generation/generation_helpers.py"), "generate",
        "--recipe", str(minimal_recipe(tmp_path)), "--input", str(prompts), "--output", str(output),
        "--max-new-tokens", "6", "--batch-size", "1", "data.generation.chunk_size=3",
        "data.generation.teacher.threads=1", "data.generation.sampling.temperature=0.6", "seed=1234",
    ]  # fmt: skip


def _finished_lines(output) -> int:
    """Completed records so far: finished parts and journal lines."""
    directory = parts_dir(output)
    if not directory.is_dir():
        return 0
    return sum(p.read_bytes().count(b"\n") for p in directory.glob("part-*"))


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_has_every_id_once(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    # no explicit ids: the runner derives them from prompt + sampling
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Write one word about the number {i}."}) + "\n" for i in range(N))
    )
    expected = [r["id"] for r in load_prompts([prompts], SAMPLING)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    reference = tmp_path / "uninterrupted.jsonl"
    subprocess.run(
        _cmd(tmp_path, prompts, reference), cwd=REPO, env=env, check=True, stderr=subprocess.DEVNULL
    )

    output = tmp_path / "generations.jsonl"
    rng = random.Random(7)
    for target in sorted(rng.sample(range(1, N - 1), 2)):  # two kills, each after a random number of records
        proc = subprocess.Popen(_cmd(tmp_path, prompts, output), cwd=REPO, env=env, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and _finished_lines(output) < target:
            time.sleep(0.01)
        time.sleep(rng.random() * 0.3)  # land anywhere: mid-batch, mid-write, between parts
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not output.exists(), "a killed run must not leave a final output"
    done_before = _finished_lines(output)
    assert done_before >= 2

    subprocess.run(_cmd(tmp_path, prompts, output), cwd=REPO, env=env, check=True, stderr=subprocess.DEVNULL)
    assert read_ids(output) == expected  # every id once, in input order
    manifest = read_manifest(output)
    assert manifest["counts"]["done"] == N and manifest["counts"]["resumed"] >= 2
    assert not parts_dir(output).exists()
    drop = ("attempts",)  # bookkeeping, not content
    strip = lambda r: {k: v for k, v in r.items() if k not in drop}  # noqa: E731
    assert [strip(r) for r in _records(output)] == [strip(r) for r in _records(reference)]

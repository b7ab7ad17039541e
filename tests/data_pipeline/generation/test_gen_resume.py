"""kill -9 at an arbitrary point of a generate run, then the same command again: no duplicate, no missing id."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from generation_helpers import REPO, minimal_recipe, read_ids

from data_pipeline.generation.runner import journal_path, load_prompts
from data_pipeline.teachers import Sampling
from stagekit.io import read_manifest


@pytest.mark.slow
def test_kill_9_then_resume_has_every_id_once(tmp_path):
    prompts, output = tmp_path / "prompts.jsonl", tmp_path / "generations.jsonl"
    # no explicit ids: the runner derives them from prompt + sampling
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Write one word about the number {i}."}) + "\n" for i in range(8))
    )
    expected = [
        r["id"]
        for r in load_prompts([prompts], Sampling(max_new_tokens=8, temperature=0.6, top_p=0.95, seed=1234))
    ]
    cmd = [
        sys.executable, str(REPO / "tests/data_pipeline/generation/generation_helpers.py"), "generate",
        "--recipe", str(minimal_recipe(tmp_path)), "--input", str(prompts), "--output", str(output), "--max-new-tokens", "8", "--batch-size", "1",
        "data.generation.teacher.threads=1", "data.generation.sampling.temperature=0.6", "seed=1234",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    journal = journal_path(output)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not output.exists(), "a killed run must not leave a final output"
    done_before = {json.loads(line)["id"] for line in journal.read_text().splitlines() if line.endswith("}")}
    assert len(done_before) >= 3

    subprocess.run(cmd, cwd=REPO, env=env, check=True, stderr=subprocess.DEVNULL)
    assert read_ids(output) == expected  # every id once, in input order
    manifest = read_manifest(output)
    assert manifest["counts"]["resumed"] >= len(done_before) and manifest["counts"]["done"] == 8
    assert not journal.exists()

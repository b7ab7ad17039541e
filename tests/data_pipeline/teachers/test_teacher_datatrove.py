"""The datatrove path (`inference.runner: datatrove`): InferenceRunner with the `endpoint` server type against a
real `transformers serve`, local executor, 2 tasks. Same records as the in-process teacher at temperature 0;
kill -9 mid-run, then the same command: every id exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_pipeline.generation.runner import load_prompts, parts_dir, run_prompts
from data_pipeline.generation.stages import generate_stage, method_sampling
from data_pipeline.teachers.transformers_teacher import TransformersTeacher
from recipes import load_recipe

REPO = Path(__file__).resolve().parents[3]
N = 6


def _setup(tmp_path: Path, server) -> tuple[Path, list[str]]:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"Name a fruit that starts with {c}.", "method": "t"}) + "\n"
            for c in "ABCDEF"
        )
    )
    (tmp_path / "recipe.yaml").write_text(f"name: dt\nrun_dir: {tmp_path / 'run'}\n")
    overrides = [
        "data.generation.inference={runner: datatrove, server_type: endpoint, tasks: 2, records_per_chunk: 2}",
        f"data.generation.teacher.base_urls=[{server.url}]",
        f"data.generation.teacher.model={server.model}",
        "data.generation.sampling={max_new_tokens: 8, temperature: 0.0}",
    ]
    return prompts, overrides


def _records(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
def test_datatrove_endpoint_matches_in_process_teacher(server, tmp_path):
    prompts, overrides = _setup(tmp_path, server)
    recipe = load_recipe(tmp_path / "recipe.yaml", overrides)
    output = tmp_path / "gen.jsonl"
    manifest = generate_stage(recipe, [prompts], output)
    assert manifest["engine"] == "datatrove" and manifest["counts"]["done"] == N
    got = _records(output)
    sampling = method_sampling(recipe)
    teacher = TransformersTeacher(threads=1)
    try:
        reference, _ = run_prompts(
            load_prompts([prompts], sampling), teacher, sampling, batch_size=1, progress=False
        )
    finally:
        teacher.close()
    assert sorted(got) == sorted(r["id"] for r in reference)
    for ref in reference:
        r = got[ref["id"]]
        assert (r["completion"], r["finish_reason"], r["completion_tokens"]) == (
            ref["completion"],
            ref["finish_reason"],
            ref["completion_tokens"],
        )
        assert r["messages"] == ref["messages"] and r["method"] == "t" and r["sampling"] == ref["sampling"]
    assert not parts_dir(output).exists()


@pytest.mark.slow
def test_datatrove_resumes_after_kill_9_with_every_id_once(server, tmp_path):
    prompts, overrides = _setup(tmp_path, server)
    output = tmp_path / "gen.jsonl"
    cmd = [
        sys.executable, str(REPO / "tests/data_pipeline/generation/generation_helpers.py"), "generate",
        "--recipe", str(tmp_path / "recipe.yaml"), "--input", str(prompts), "--output", str(output), *overrides,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = parts_dir(output) / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(p.stat().st_size for p in checkpoints.rglob("chunk_*.jsonl")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not output.exists()

    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids = [json.loads(line)["id"] for line in output.read_text().splitlines()]
    expected = [
        r["id"]
        for r in load_prompts([prompts], method_sampling(load_recipe(tmp_path / "recipe.yaml", overrides)))
    ]
    assert sorted(ids) == sorted(expected) and len(ids) == N

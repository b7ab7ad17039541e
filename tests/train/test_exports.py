"""Checkpoints as models: a step export is a transformers model equal to that step's checkpoint, `init_from:
pretrain@N` starts from exactly step N, and select_best exports the step with the lowest held-out loss as scored
independently by transformers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from train_testkit import new_run

from recipes import RecipeError, load_recipe
from stagekit.io import read_manifest
from train import plan_stage, train_stage
from train.data import validation_batches, validation_sequences
from train.metrics import read_metrics
from train.trainer import build_model, stage_is_fresh

CANDIDATES = [3, 6, 9, 12]
CHAIN = {
    # checkpoints at 8, 16, 24, all kept, so step 16's saved weights are the reference for its export
    "pretrain": {"export_steps": [16], "keep_last": 3},
    # A learning rate warming up to far too high for finetuning, so the held-out loss turns up and the best step
    # is not the last. Without document masking the plain causal transformers model scores the same loss.
    "finetune": {
        "init_from": "pretrain@16",
        "max_steps": 12,
        "lr": 3e-2,
        "warmup_steps": 12,
        "export_every": 3,
        "select_best": True,
        "loss_spike_factor": 0.0,
        "document_masking": False,
        "eval_every": 0,
        "checkpoint_every": 6,
    },
}


@pytest.fixture(scope="module")
def chain(tmp_path_factory, data_template):
    recipe = load_recipe(new_run(tmp_path_factory.mktemp("chain"), data_template, **CHAIN))
    train_stage(recipe, "pretrain")
    train_stage(recipe, "finetune")
    return recipe


def checkpoint_weights(recipe, stage: str, step: int) -> dict:
    return torch.load(recipe.run_path / stage / "checkpoints" / f"step-{step}" / "pytorch_model.bin")


def test_a_step_export_is_a_transformers_model_equal_to_that_checkpoint(chain):
    from transformers import AutoModelForCausalLM

    export = chain.run_path / "pretrain" / "exports" / "step-16"
    hf = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    reference = checkpoint_weights(chain, "pretrain", 16)
    final = checkpoint_weights(chain, "pretrain", 24)
    assert not torch.equal(reference["norm.weight"], final["norm.weight"])  # step 16 is not the last step
    ours = build_model(plan_stage(chain, "finetune")).state_dict()  # init_from: pretrain@16
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name
    torch.testing.assert_close(hf.model.norm.weight, reference["norm.weight"], rtol=0, atol=0)
    manifest = read_manifest(export)
    val_16 = next(
        r["val_loss"] for r in read_metrics(chain.run_path / "pretrain" / "metrics.jsonl") if r["step"] == 16
    )
    assert (manifest["step"], manifest["val_loss"], manifest["counts"]["steps"]) == (16, val_16, 16)
    assert read_manifest(chain.run_path / "pretrain" / "export")["step"] == 24
    # finetune depends on the step export (a new pretrain run invalidates it), and is fresh while it is unchanged
    finetune = read_manifest(chain.run_path / "finetune" / "export")
    assert str(export.with_name("step-16.manifest.json")) in finetune["inputs"]
    assert stage_is_fresh(plan_stage(chain, "pretrain")) and stage_is_fresh(plan_stage(chain, "finetune"))


def held_out_loss(recipe, model_dir) -> float:
    """Mean next-token loss of a transformers model on the finetune stage's validation windows."""
    from transformers import AutoModelForCausalLM

    plan = plan_stage(recipe, "finetune")
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    val = validation_sequences(plan.val_dir, plan.section.seq_len, "val")
    total = count = 0.0
    with torch.no_grad():
        for batch in validation_batches(val, plan.section.eval_sequences, micro_batch=4, world=1, rank=0):
            logits = hf(batch.input_ids).logits
            total += float(F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), reduction="sum"))
            count += batch.labels.numel()
    return total / count


def test_select_best_exports_the_step_with_the_lowest_held_out_loss(chain):
    exports = chain.run_path / "finetune" / "exports"
    assert sorted(int(p.name.split("-")[1]) for p in exports.iterdir() if p.is_dir()) == CANDIDATES
    losses = {step: held_out_loss(chain, exports / f"step-{step}") for step in CANDIDATES}
    best = min(losses, key=losses.get)
    assert best != CANDIDATES[-1], f"the test needs a run whose last step is not the best: {losses}"
    manifest = read_manifest(chain.run_path / "finetune" / "export")
    selection = manifest["selection"]
    assert selection["candidates"] == pytest.approx({str(s): v for s, v in losses.items()}, rel=1e-5)
    assert manifest["step"] == selection["selected_step"] == best
    assert (chain.run_path / "finetune" / "export" / "model.safetensors").read_bytes() == (
        exports / f"step-{best}" / "model.safetensors"
    ).read_bytes()


def test_init_from_a_step_that_is_never_exported_is_a_recipe_error(make_run):
    with pytest.raises(
        RecipeError,
        match=r"finetune\.init_from: pretrain@20 is never exported; add 20 to pretrain\.export_steps",
    ):
        load_recipe(make_run("never", finetune={"init_from": "pretrain@20"}))
    with pytest.raises(RecipeError, match=r"export_steps \[30\] lie outside \[1, max_steps=24\]"):
        load_recipe(make_run("outside", pretrain={"export_steps": [30]}))

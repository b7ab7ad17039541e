"""The paper-sized recipes load, validate and dry-run here: meta-device model, FLOPs, batch layout, launch command."""

from __future__ import annotations

import pytest

from modeling import ModelConfig
from recipes import load_recipe
from train.__main__ import main

# (recipe, preset, tokens per step, launch config): Phi-1 Sec. 2.3 and the Cosmo-1B model card.
PAPER = [
    ("phi1", "phi1", 1024 * 2048, "deepspeed_zero2.yaml --num_processes 8"),
    ("phi1-small", "phi1-small", 1024 * 2048, "deepspeed_zero2.yaml --num_processes 8"),
    ("cosmo-1b", "cosmo-1b", 640 * 2048, "fsdp2.yaml --num_processes 160 --num_machines 20"),
]


@pytest.mark.parametrize(("name", "preset", "tokens_per_step", "launch"), PAPER)
def test_dry_run(tmp_path, capsys, name, preset, tokens_per_step, launch):
    assert main(["all", "--recipe", name, "--dry-run", f"run_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    config = ModelConfig.from_preset(preset)
    assert f"parameters:        {config.num_params():,} " in out
    assert f"tokens/step:       {tokens_per_step:,} = " in out
    assert launch in out
    stages = len(load_recipe(name).train.stages)
    for device in ("A100-40GB:", "A100-80GB:", "H100-80GB:"):  # the memory estimate's fit per device
        assert out.count(f"    {device} without checkpointing ") == stages, device
    assert out.count("  memory/GPU:        ") == stages
    assert not any(tmp_path.iterdir()), "a dry run must not write anything"


def test_phi1_dry_run_shows_the_papers_chain(tmp_path, capsys):
    """pretrain 36k steps exporting step 24k (phi-1-base), finetune from it, best of the 1k-step exports."""
    assert main(["all", "--recipe", "phi1", "--dry-run", f"run_dir={tmp_path}"]) == 0
    pretrain, finetune = capsys.readouterr().out.split("[finetune]")
    assert "  steps:             36,000 " in pretrain
    assert f"exports:           steps 24,000 -> {tmp_path}/pretrain/exports/step-N" in pretrain
    assert f"init: pretrain@24000 ({tmp_path}/pretrain/exports/step-24000)" in finetune
    assert "  steps:             6,000 " in finetune
    assert "steps 1,000, 2,000, 3,000, 4,000, 5,000, 6,000" in finetune and "lowest held-out loss" in finetune
    params = ModelConfig.from_preset("phi1").num_params()
    assert 1.3e9 < params < 1.45e9  # microsoft/phi-1: 1,418,270,720 parameters, "1.3B" in the paper
    assert f"parameters:        {params:,} " in pretrain and "paper:             1.3B (" in pretrain


def test_phi1_schedule_matches_the_paper():
    recipe = load_recipe("phi1")
    pre, fine = recipe.train.pretrain, recipe.train.finetune
    assert (pre.global_batch_size, pre.lr, pre.warmup_steps, pre.weight_decay, pre.max_steps) == (
        1024,
        1e-3,
        750,
        0.1,
        36000,
    )
    assert (fine.global_batch_size, fine.lr, fine.warmup_steps, fine.weight_decay, fine.max_steps) == (
        256,
        1e-4,
        50,
        0.01,
        6000,
    )
    assert pre.schedule == fine.schedule == "linear" and fine.init_from == "pretrain@24000"
    assert pre.export_steps == [24000] and fine.export_every == 1000 and fine.select_best
    assert (recipe.model.config().num_layers, recipe.model.config().hidden_size) == (24, 2048)


# The paper recipes' own data rules (their decontamination rule, classifier, mixtures) on a few documents:
# only the scale changes - the local teacher instead of a vLLM fleet, 20 stdlib files instead of The Stack.
FEW_DOCUMENTS = [
    "data.generation.teacher={backend: transformers, batch_size: 4, threads: 1}",
    "data.generation.sampling.max_new_tokens=48",
    "data.curation.executor={kind: inline}",
    "data.curation.sources.hub=[]",
    "data.curation.sources.stdlib={enabled: true, max_files: 20}",
    "data.curation.heuristics.synthetic.min_chars=20",
    "data.curation.heuristics.synthetic.drop_truncated=false",
    "data.curation.tokenizer.vocab_size=1024",
]
SCALE_DOWN = {
    "cosmo-1b": ["data.generation.cosmopedia.num_prompts=4"],
    "phi1": [
        "data.generation.code_textbook.num_prompts=2",
        "data.generation.code_exercises.num_prompts=6",
        "data.generation.code_exercises.max_new_tokens=160",
        "data.curation.classifier.sample_size=8",
        "data.curation.classifier.cv_folds=2",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCALE_DOWN))
def test_data_stages_on_a_few_documents(tmp_path, name):
    from data_pipeline.pipeline import run_data
    from stagekit.shards import ShardReader

    recipe = load_recipe(name, [f"run_dir={tmp_path}", *FEW_DOCUMENTS, *SCALE_DOWN[name]])
    manifests = run_data(recipe)
    decontaminated = [m for label, m in manifests.items() if label.endswith("/decontaminated")]
    assert decontaminated and all(
        m["params"]["rule"] == recipe.data.curation.decontamination.rule for m in decontaminated
    )
    for stage in ("pretrain", "finetune"):
        if getattr(recipe.data.curation.shards, stage):
            assert ShardReader(tmp_path / "data" / "shards" / stage / "train").num_tokens > 0

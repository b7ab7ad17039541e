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
    assert not any(tmp_path.iterdir()), "a dry run must not write anything"


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
    assert pre.schedule == fine.schedule == "linear" and fine.init_from == "pretrain"
    assert (recipe.model.config().num_layers, recipe.model.config().hidden_size) == (24, 2048)

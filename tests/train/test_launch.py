"""Launching: the accelerate command per recipe, the world-size check, and dry runs of the paper-sized models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_testkit import REPO

from modeling import ModelConfig
from recipes.training import LaunchSection
from stagekit.io import StageError
from train.__main__ import main
from train.launch import check_world_size, launch_command, node_identity


def test_launch_commands():
    recipe = Path("/r/recipe.yaml")
    plain = launch_command(LaunchSection(num_processes=2), recipe, "pretrain")
    assert plain[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert plain[plain.index("--num_processes") + 1] == "2"
    assert plain[-6:] == ["-m", "train", "--recipe", "/r/recipe.yaml", "--stage", "pretrain"]
    ds = launch_command(
        LaunchSection(
            accelerate_config="recipes/accelerate/deepspeed_zero2.yaml", num_processes=16, num_machines=2
        ),
        recipe,
        "finetune",
        ["--force"],
        node=("1", "10.0.0.1"),
    )
    assert ds[ds.index("--config_file") + 1] == str(REPO / "recipes/accelerate/deepspeed_zero2.yaml")
    assert "--multi_gpu" not in ds
    assert ds[ds.index("--machine_rank") + 1 :][:3] == ["1", "--main_process_ip", "10.0.0.1"]
    assert ds[-3:] == ["--stage", "finetune", "--force"]
    with pytest.raises(StageError, match="launch.accelerate_config: nope.yaml not found"):
        launch_command(LaunchSection(accelerate_config="nope.yaml"), recipe, "pretrain")


def test_multi_node_needs_the_node_identity(monkeypatch):
    for key in ("MACHINE_RANK", "SLURM_NODEID", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    launch = LaunchSection(num_processes=16, num_machines=2)
    with pytest.raises(StageError, match="MASTER_ADDR and MACHINE_RANK"):
        node_identity(launch)
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("MASTER_ADDR", "node-a")
    assert node_identity(launch) == ("1", "node-a")
    assert node_identity(LaunchSection()) is None


def test_world_size_check():
    check_world_size(2, 2, 2)
    with pytest.raises(
        StageError, match=r"runs 1 synchronised process\(es\) \(WORLD_SIZE=2\) but the recipe expects 2"
    ):
        check_world_size(1, 2, 2)  # N unsynchronised single-process copies
    with pytest.raises(StageError, match="expects 1"):
        check_world_size(2, 2, 1)


def test_torchrun_with_more_processes_than_the_recipe_expects_fails_before_training(make_run):
    recipe = make_run()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "train",
            "--recipe",
            str(recipe),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert (
        "error: world size mismatch: this job runs 2 synchronised process(es) (WORLD_SIZE=2) but the recipe "
        "expects 1" in result.stderr
    )
    assert not (recipe.parent / "run" / "pretrain" / "metrics.jsonl").exists()


@pytest.mark.parametrize(("preset", "vocab"), [("phi1", 51200), ("cosmo-1b", 32000)])
def test_dry_run_of_the_paper_models(tmp_path, capsys, preset, vocab):
    """Phi-1 pretraining (Sec. 2.3): 1024 x 2048 tokens per step over 8 GPUs with ZeRO-2, on the meta device."""
    args = [
        "--recipe",
        "tiny",
        "--dry-run",
        f"run_dir={tmp_path}",
        f"model.preset={preset}",
        "train.pretrain.global_batch_size=1024",
        "train.pretrain.micro_batch_size=8",
        "train.pretrain.seq_len=2048",
        "train.pretrain.max_steps=36000",
        "launch.num_processes=8",
        "launch.accelerate_config=recipes/accelerate/deepspeed_zero2.yaml",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    config = ModelConfig.from_preset(preset)
    assert config.vocab_size == vocab
    assert f"parameters:        {config.num_params():,} " in out
    assert f"FLOPs/token:       {config.flops_per_token(2048):,} " in out
    assert "tokens/step:       2,097,152 = 1024 sequences x 2048" in out
    assert "micro 8 x world 8 x accumulation 16" in out
    assert f"steps:             36,000 ({36000 * 2097152:,} tokens" in out
    assert "deepspeed_zero2.yaml --num_processes 8 --num_machines 1 -m train" in out


@pytest.mark.parametrize(
    "name", ["cpu_gloo", "ddp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3", "fsdp2"]
)
def test_accelerate_configs_load(name):
    """Every shipped config parses with accelerate's own loader; DeepSpeed ones point at a JSON of their stage."""
    import json

    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "recipes" / "accelerate" / f"{name}.yaml"))
    if name.startswith("deepspeed"):
        assert config.distributed_type.value == "DEEPSPEED"
        ds = json.loads((REPO / config.deepspeed_config["deepspeed_config_file"]).read_text())
        assert ds["zero_optimization"]["stage"] == int(name[-1])
        assert ds["train_micro_batch_size_per_gpu"] == "auto"  # the trainer fills it from the recipe
    elif name == "fsdp2":
        assert config.distributed_type.value == "FSDP" and config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Block"
    else:
        assert config.distributed_type.value == "MULTI_GPU" and not config.use_cpu

"""Both stages in process on real packed text: the loss falls, the export is a transformers checkpoint, finetune
starts from the pretrain export, fresh stages are skipped, and bad input fails before any compute."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from train_testkit import new_run, train_cli

from modeling import Transformer
from recipes import load_recipe, to_dict
from stagekit.io import read_manifest
from stagekit.shards import ShardReader
from train import plan_stage, train_stage
from train.__main__ import main
from train.data import PackedSequences, TrainBatches
from train.guard import TrainingDiverged
from train.metrics import read_metrics
from train.trainer import stage_is_fresh

KEYS = {
    "step",
    "loss",
    "lr",
    "grad_norm",
    "tokens",
    "tokens_per_s",
    "mfu",
    "memory_gb",
    "skipped",
    "elapsed_s",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_template):
    """pretrain (24 steps) then finetune (8 steps). Finetune runs without document masking so that the plain
    causal transformers model computes exactly the same loss as a reference."""
    path = new_run(tmp_path_factory.mktemp("trained"), data_template, finetune={"document_masking": False})
    recipe = load_recipe(path)
    return recipe, train_stage(recipe, "pretrain"), train_stage(recipe, "finetune")


def test_pretrain_loss_falls(trained):
    recipe, export, _ = trained
    records = read_metrics(recipe.run_path / "pretrain" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 25))
    assert all(KEYS <= r.keys() for r in records)
    assert [r["tokens"] for r in records] == [512 * r["step"] for r in records]  # 8 sequences x 64 tokens
    vocab = json.loads((export / "config.json").read_text())["vocab_size"]
    assert records[0]["loss"] == pytest.approx(math.log(vocab), abs=0.05)  # a 0.02-std init is near uniform
    losses = [r["loss"] for r in records]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.4
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert sorted(val) == [8, 16, 24] and val[24] < val[8] - 0.2
    manifest = read_manifest(export)
    assert manifest["counts"] == {"steps": 24, "tokens": 24 * 512, "sequences": 24 * 8}
    assert manifest["final_val_loss"] == val[24] and manifest["checkpoint"].endswith("step-24")


def test_export_is_a_transformers_llama_equal_to_the_last_checkpoint(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe, export, _ = trained
    hf = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ours = Transformer.from_pretrained(export).eval()
    checkpoint = torch.load(recipe.run_path / "pretrain" / "checkpoints" / "step-24" / "pytorch_model.bin")
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, checkpoint[name]), name
    tokenizer = AutoTokenizer.from_pretrained(export)
    text = "def add(a, b):\n    return a + b\n"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert tokenizer.decode(ids[0]) == text
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), rtol=1e-4, atol=1e-4)


def test_finetune_starts_from_the_pretrain_export(trained):
    """Step 1 of finetune = the pretrain export's loss on finetune's first batch, computed by transformers."""
    from transformers import AutoModelForCausalLM

    recipe, pretrain_export, finetune_export = trained
    plan = plan_stage(recipe, "finetune")
    assert plan.init_dir == pretrain_export
    hf = AutoModelForCausalLM.from_pretrained(pretrain_export, dtype=torch.float32).eval()
    sequences = PackedSequences(ShardReader(plan.train_dir), 64, seed=recipe.seed, shuffle=True)
    batches = TrainBatches(sequences, micro_batch=4, accumulation=2, world=1, rank=0)
    with torch.no_grad():
        losses = [
            F.cross_entropy(hf(b.input_ids).logits.flatten(0, 1), b.labels.flatten())
            for b in (batches.micro_batch(0, k) for k in range(2))
        ]
    first = read_metrics(recipe.run_path / "finetune" / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(float(sum(losses) / 2), abs=1e-4)
    assert str(pretrain_export.with_name("export.manifest.json")) in read_manifest(finetune_export)["inputs"]
    trained_weights = load_file(finetune_export / "model.safetensors")
    assert not torch.equal(
        trained_weights["model.norm.weight"],
        load_file(pretrain_export / "model.safetensors")["model.norm.weight"],
    )


def test_a_fresh_stage_is_skipped(trained, tmp_path):
    recipe, export, _ = trained
    manifest = export.with_name("export.manifest.json")
    before = manifest.stat().st_mtime_ns
    assert train_stage(recipe, "pretrain") == export
    assert manifest.stat().st_mtime_ns == before
    yaml_path = tmp_path / "r.yaml"
    yaml_path.write_text(json.dumps(to_dict(recipe)))
    # Bookkeeping keys keep the export fresh; a hyperparameter makes it stale.
    assert stage_is_fresh(plan_stage(load_recipe(yaml_path, ["train.pretrain.log_every=5"]), "pretrain"))
    assert not stage_is_fresh(plan_stage(load_recipe(yaml_path, ["train.pretrain.lr=1e-3"]), "pretrain"))


def test_divergence_stops_or_skips_but_never_trains_on(make_run):
    diverging = {"pretrain": {"lr": 30.0, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0}}
    recipe = load_recipe(make_run("stop", **diverging))
    with pytest.raises(TrainingDiverged, match=r"pretrain step \d+: loss [\d.]+ spiked above 3.0 x"):
        train_stage(recipe, "pretrain")
    assert not (recipe.run_path / "pretrain" / "export").exists()
    recipe = load_recipe(
        make_run("skip", **diverging),
        ["train.pretrain.loss_spike_policy=skip", "train.pretrain.max_skipped_steps=3"],
    )
    with pytest.raises(
        TrainingDiverged, match="4 consecutive steps skipped, more than train.pretrain.max_skipped_steps=3"
    ):
        train_stage(recipe, "pretrain")
    skipped = [r for r in read_metrics(recipe.run_path / "pretrain" / "metrics.jsonl") if r["skipped"]]
    assert [r["skipped"] for r in skipped] == [1, 2, 3] and all(r["grad_norm"] is None for r in skipped)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.pretrain.max_stepz=3"], r"unknown key 'train\.pretrain\.max_stepz'"),
        (
            ["train.pretrain.shards=/nonexistent/shards"],
            r"/nonexistent/shards/train/index\.json: shard index not found",
        ),
        (
            ["train.pretrain.global_batch_size=6"],
            r"global_batch_size \(6\) is not a multiple of micro_batch_size \(4\)",
        ),
        (
            ["launch.num_processes=3"],
            r"train\.pretrain\.global_batch_size \(8\) is not divisible by micro_batch_size \(4\) x world size \(3\) = 12",
        ),
        (
            ["train.pretrain.seq_len=512"],
            r"train\.pretrain\.seq_len \(512\) exceeds the model's max_seq_len \(128\)",
        ),
    ],
)
def test_bad_input_is_one_clear_error_before_compute(make_run, capsys, overrides, message):
    path = make_run()
    assert main(["--recipe", str(path), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert re.search(message, err[0])
    assert not (path.parent / "run" / "pretrain").exists()  # nothing was trained or written


def test_cli_exit_status_and_resume_without_checkpoint(make_run):
    path = make_run()
    result = train_cli("--recipe", str(path), "--resume")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("pretrain/checkpoints: no checkpoint to resume pretrain from")


def test_activation_checkpointing_lowers_measured_peak_memory_not_math():
    from train_testkit import SMALL_MODEL

    from modeling import ModelConfig
    from train.trainer import checkpoint_blocks

    config = ModelConfig.from_preset("tiny", vocab_size=256, **SMALL_MODEL)
    torch.manual_seed(0)
    plain = Transformer(config)
    recomputed = Transformer(config)
    recomputed.load_state_dict(plain.state_dict())
    checkpoint_blocks(recomputed)
    assert recomputed.state_dict().keys() == plain.state_dict().keys()
    ids = torch.randint(0, 256, (2, 33))
    positions = torch.cat([torch.arange(20), torch.arange(12)]).repeat(2, 1)
    for model in (plain, recomputed):
        logits = model(ids[:, :-1], position_ids=positions)
        F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0, msg=name)
    # Memory: two real AdamW steps of the tiny preset (4 x 512 tokens), each in a fresh process, peak RSS measured.
    from train.memory import measure_peak

    tiny = ModelConfig.from_preset("tiny")
    runs = [measure_peak(tiny, 4, 512, checkpointing=c, fused_loss=True) for c in (False, True)]
    assert runs[1]["losses"] == runs[0]["losses"]
    # Without recomputation each of the six blocks keeps its activations; with it only their inputs stay.
    assert runs[1]["peak_bytes"] < 0.6 * runs[0]["peak_bytes"], [r["peak_bytes"] / 2**20 for r in runs]


def test_a_checkpoint_of_another_run_is_not_resumed(make_run, capsys):
    from stagekit.io import StageError

    path = make_run(pretrain={"max_steps": 8, "eval_every": 0})
    train_stage(load_recipe(path), "pretrain")
    changed = ["train.pretrain.lr=1e-3", "train.pretrain.max_steps=10"]
    with pytest.raises(
        StageError,
        match=r"step-8 belongs to another run \(changed: train\.pretrain\.lr; train\.pretrain\.max_steps\); start",
    ):
        train_stage(load_recipe(path, [*changed, "train.pretrain.resume=require"]), "pretrain")
    capsys.readouterr()
    recipe = load_recipe(path, changed)  # resume: auto -> start over, with the reason on stderr
    train_stage(recipe, "pretrain")
    assert "(changed: train.pretrain.lr; train.pretrain.max_steps); starting over" in capsys.readouterr().err
    records = read_metrics(recipe.run_path / "pretrain" / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 11)) and records[0]["lr"] == pytest.approx(1e-3 / 4)

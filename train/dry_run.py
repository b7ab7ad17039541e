"""`--dry-run`: size a stage without data or compute (the model is built on the meta device)."""

from __future__ import annotations

import torch

from modeling import Transformer
from recipes import Recipe
from train.launch import launch_command, needs_launcher
from train.memory import describe as describe_memory
from train.plan import StagePlan, plan_stage
from train.trainer import FUSED_LOSS

# Parameter counts the papers state for a preset, printed beside ours (cited, not measured).
PAPER_PARAMS = {
    "phi1": "1.3B (Gunasekar et al. 2023, Sec. 2.3; microsoft/phi-1 holds 1.418B with embeddings)",
    "phi1-small": "350M (Gunasekar et al. 2023, Sec. 2.3)",
    "cosmo-1b": "1.8B (HuggingFaceTB/cosmo-1b model card)",
}


def describe_stage(recipe: Recipe, stage: str) -> str:
    plan = plan_stage(recipe, stage, need_data=False)
    section, config = plan.section, plan.model_config
    with torch.device("meta"):
        model = Transformer(config)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    flops = config.flops_per_token(section.seq_len)
    total_tokens = section.max_steps * plan.tokens_per_step
    if needs_launcher(recipe.launch):
        node = ("$MACHINE_RANK", "$MASTER_ADDR") if recipe.launch.num_machines > 1 else None
        command = " ".join(launch_command(recipe.launch, plan.out_dir / "recipe.yaml", stage, node=node))
    else:
        command = f"in process (python -m train --recipe {recipe.name} --stage {stage})"
    if plan.init_dir is not None and (plan.init_dir / "config.json").is_file():
        vocab_note = "from the init checkpoint"
    else:
        vocab_note = "from the shards" if plan.eot_id is not None else "preset; no shards yet"
    init = f"{section.init_from} ({plan.init_dir})" if plan.init_dir else f"random (seed {recipe.seed})"
    paper = PAPER_PARAMS.get(recipe.model.preset)
    lines = [
        f"[{stage}] init: {init}",
        f"  parameters:        {params:,} ({config.num_params(include_embeddings=False):,} non-embedding); "
        f"vocab {config.vocab_size:,} ({vocab_note})",
        *([f"  paper:             {paper}; block: {_block(config)}"] if paper else []),
        f"  FLOPs/token:       {flops:,} (training, seq_len {section.seq_len})",
        f"  tokens/step:       {plan.tokens_per_step:,} = {section.global_batch_size} sequences x {section.seq_len}",
        f"  batch layout:      micro {section.micro_batch_size} x world {plan.world_size} x accumulation "
        f"{plan.accumulation}",
        f"  steps:             {section.max_steps:,} ({total_tokens:,} tokens, {flops * total_tokens:.3e} FLOPs)",
        f"  schedule:          {section.schedule}, lr {section.lr:g}, warmup {section.warmup_steps}, "
        f"min {section.lr * section.min_lr_ratio:g}, weight decay {section.weight_decay:g}",
        f"  exports:           {_exports(plan)}",
        *describe_memory(plan, fused_loss=FUSED_LOSS),
        f"  launch:            {command}",
    ]
    return "\n".join(lines)


def _block(config) -> str:
    kind = "parallel attention + MLP" if config.parallel_block else "sequential attention, MLP"
    return (
        f"{kind}, {config.norm}, {config.mlp} MLP {config.intermediate_size:,}, rotary {config.rotary_dim}/"
        f"{config.head_dim} dims, bias {config.bias}, dropout attn {config.attn_dropout} / resid {config.resid_dropout}"
    )


def _exports(plan: StagePlan) -> str:
    """Which steps become loadable models, and what export/ holds."""
    section = plan.section
    steps = section.exported_steps()
    listed = f"steps {', '.join(f'{s:,}' for s in steps)} -> {plan.exports_dir}/step-N; " if steps else ""
    if section.select_best:
        return f"{listed}export/ = the one with the lowest held-out loss ({plan.val_dir})"
    return f"{listed}export/ = step {section.max_steps:,} (the last)"

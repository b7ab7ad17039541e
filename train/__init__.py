"""Training: the two Phi-1 stages (pretrain -> finetune) with accelerate, DeepSpeed or FSDP (see README.md).

Python entry points for orchestration:
    train_stage(recipe, stage, *, force=False) -> Path   # the stage's export dir (HF model + tokenizer)
    train_all(recipe, *, force=False) -> list[Path]      # recipe.train.stages in order
Each skips a stage whose export manifest is fresh, and launches `accelerate launch` itself when the
recipe's `launch` section asks for more than one process or an accelerate config.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from recipes import Recipe, to_dict
from stagekit.io import atomic_path
from train.launch import in_launched_job, launch_command, needs_launcher, node_identity, run_launcher
from train.plan import StagePlan, plan_stage
from train.trainer import run_stage, stage_is_fresh

__all__ = ["StagePlan", "plan_stage", "train_all", "train_stage"]


def train_stage(recipe: Recipe, stage: str, *, force: bool = False) -> Path:
    """Train one stage (or skip it when its export is fresh); returns runs/<recipe>/<stage>/export.

    force: retrain from scratch even when the export is fresh (existing checkpoints are dropped).
    Raises StageError for bad input (before any compute) or a failed run.
    """
    plan = plan_stage(recipe, stage)
    if not force and stage_is_fresh(plan):
        print(
            f"[train] {stage}: {plan.export_dir} is up to date (manifest matches); skipping", file=sys.stderr
        )
        return plan.export_dir
    if needs_launcher(recipe.launch) and not in_launched_job():
        recipe_file = write_recipe(recipe, plan)
        flags = ["--force"] if force else []
        cmd = launch_command(recipe.launch, recipe_file, stage, flags, node_identity(recipe.launch))
        run_launcher(cmd, recipe.launch, stage)
    else:
        run_stage(plan, force=force)
    return plan.export_dir


def train_all(recipe: Recipe, *, force: bool = False) -> list[Path]:
    return [train_stage(recipe, stage, force=force) for stage in recipe.train.stages]


def write_recipe(recipe: Recipe, plan: StagePlan) -> Path:
    """The resolved recipe (overrides applied) the launched ranks load: runs/<recipe>/<stage>/recipe.yaml."""
    path = plan.out_dir / "recipe.yaml"
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False), encoding="utf-8")
    return path.resolve()

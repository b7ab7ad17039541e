"""python -m train [all] --recipe NAME|PATH [--stage pretrain|finetune] [--resume] [--force] [--dry-run] [key=value ...]

`all` runs recipe.train.stages in order (pretrain, then finetune), each as its own launch per recipe.launch.
The same module runs each rank under `accelerate launch --config_file recipes/accelerate/<x>.yaml -m train ...`.
"""

from __future__ import annotations

import argparse
import sys

from recipes import load_recipe
from recipes.training import STAGES
from stagekit.cli import run_cli


def parse(argv: list[str]) -> tuple[bool, argparse.Namespace]:
    run_all = bool(argv) and argv[0] == "all"
    parser = argparse.ArgumentParser(
        prog="python -m train [all]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipe", default="tiny", help="recipe name (recipes/<name>.yaml) or path")
    parser.add_argument(
        "--stage", choices=STAGES, default="pretrain", help="the stage to train (without `all`)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint; alone it fails when there is none",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="retrain from scratch even when the export is fresh (drops the stage's checkpoints)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print parameters, FLOPs/token, tokens/step, exports, the memory estimate and the launch command; "
        "train nothing",
    )
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.pretrain.max_steps=20")
    return run_all, parser.parse_args(argv[1:] if run_all else argv)


def main(argv: list[str] | None = None) -> int:
    run_all, args = parse(list(sys.argv[1:] if argv is None else argv))
    return run_cli(lambda: run(run_all, args))


def run(run_all: bool, args: argparse.Namespace) -> None:
    recipe = load_recipe(args.recipe, args.overrides)
    stages = list(recipe.train.stages) if run_all else [args.stage]
    if args.resume:  # one stage must have a checkpoint; in `all` a stage without one starts fresh
        mode = "auto" if run_all else "require"
        recipe = load_recipe(args.recipe, [*args.overrides, *(f"train.{s}.resume={mode}" for s in stages)])
    if args.dry_run:
        from train.dry_run import describe_stage

        print("\n".join(describe_stage(recipe, stage) for stage in stages))
        return
    from train import train_stage

    for stage in stages:
        print(f"[train] {stage}: export at {train_stage(recipe, stage, force=args.force)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""`python -m data_pipeline all --recipe NAME`: the recipe's whole data half, generation then curation.

Each stage inside is skipped when its manifest says inputs and parameters are unchanged, so a re-run of
`make all` only redoes what changed. `data/pipeline.json` summarises every stage's counts and wall time.
"""

from __future__ import annotations

import argparse
import sys
import time

from data_pipeline.curation.plan import run_curation
from data_pipeline.generation.pipeline import print_plan, run_generation
from recipes import Recipe
from stagekit.cli import add_stage_args, data_dir, recipe_from_args
from stagekit.io import StageError, write_json


def run_data(recipe: Recipe, *, force: bool = False) -> dict[str, dict]:
    """Generation, then curation and tokenization; returns {stage label: manifest}."""
    started = time.time()
    manifests = {f"generation/{k}": v for k, v in run_generation(recipe, force=force).items()}
    manifests.update({f"curation/{k}": v for k, v in run_curation(recipe, force=force).items()})
    summary = {
        label: {
            "counts": m.get("counts", {}),
            "wall_seconds": m.get("wall_seconds"),
            "output": m.get("output"),
        }
        for label, m in manifests.items()
    }
    write_json(
        data_dir(recipe) / "pipeline.json",
        {"recipe": recipe.name, "stages": summary, "wall_seconds": round(time.time() - started, 1)},
    )
    return manifests


def _run(args: argparse.Namespace) -> None:
    recipe = recipe_from_args(args)
    if args.dry_run:
        if not print_plan(recipe):
            raise StageError(f"{recipe.name}: some generation method requests more prompts than it can build")
        return
    manifests = run_data(recipe, force=args.force)
    print(
        f"[data] {recipe.name}: {len(manifests)} stages up to date under {data_dir(recipe)}", file=sys.stderr
    )


def _configure(parser: argparse.ArgumentParser) -> None:
    add_stage_args(parser, inputs=False)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what generation would produce (requested vs buildable prompts, tokens, teacher-hours); "
        "run and write nothing",
    )
    parser.set_defaults(func=_run)


STAGES = {
    "all": ("every data stage of a recipe, in order: generation, curation, tokenizer, shards", _configure)
}

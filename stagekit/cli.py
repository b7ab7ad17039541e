"""Shared command-line shape of every data stage.

`python -m data_pipeline <stage> --input IN --output OUT [options]` standalone, or
`python -m data_pipeline <stage> --recipe tiny [key=value ...]`, where the recipe supplies parameters and
the default input/output paths under runs/<name>/data/.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from recipes import Recipe, RecipeError, load_recipe
from stagekit.io import StageError


def add_stage_args(parser: argparse.ArgumentParser, *, inputs: bool = True) -> None:
    if inputs:
        parser.add_argument("--input", nargs="+", type=Path, help="input JSONL file(s)")
    parser.add_argument("--output", type=Path, help="output path (a manifest is written beside it)")
    parser.add_argument("--recipe", help="recipe name (recipes/<name>.yaml) or path")
    parser.add_argument(
        "--force", action="store_true", help="re-run even if the manifest says the output is fresh"
    )
    parser.add_argument(
        "overrides", nargs="*", help="recipe overrides, key=value (e.g. data.generation.max_new_tokens=64)"
    )


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe named by --recipe (with overrides), or the built-in `tiny` defaults standalone."""
    return load_recipe(args.recipe or "tiny", args.overrides)


def data_dir(recipe: Recipe) -> Path:
    return recipe.run_path / "data"


def run_cli(action: Callable[[], object]) -> int:
    """Run a CLI action: bad input (StageError/RecipeError) prints one `error: ...` line and exits 2."""
    try:
        action()
    except (StageError, RecipeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

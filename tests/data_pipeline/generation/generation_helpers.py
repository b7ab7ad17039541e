"""Test helpers: a dispatcher over the generation STAGES (the same wiring as `python -m data_pipeline`),
runnable as a script for the kill -9 test."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_pipeline.generation.cli import STAGES
from recipes import RecipeError
from stagekit.io import StageError

REPO = Path(__file__).resolve().parents[3]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="generation")
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, (help_text, configure) in STAGES.items():
        configure(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (StageError, RecipeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def minimal_recipe(directory: Path) -> Path:
    """A recipe with only a name and run_dir: every generation key at its schema default, whatever tiny.yaml holds."""
    path = directory / "gen-recipe.yaml"
    path.write_text(f"name: gentest\nrun_dir: {directory / 'run'}\n")
    return path


def write_prompts(path: Path, n: int, prefix: str = "Name a colour") -> list[str]:
    ids = [f"p{i:03d}" for i in range(n)]
    path.write_text("".join(json.dumps({"id": i, "prompt": f"{prefix} (#{i})."}) + "\n" for i in ids))
    return ids


def read_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

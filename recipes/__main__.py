"""`python -m recipes describe` prints every recipe key; `python -m recipes show NAME` the resolved recipe."""

from __future__ import annotations

import argparse
import sys

import yaml

from recipes.config import RecipeError, describe, to_dict
from recipes.schema import Recipe, load_recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("describe", help="every key with its type, default and documentation")
    show = sub.add_parser("show", help="the resolved recipe (defaults filled in, overrides applied)")
    show.add_argument("recipe")
    show.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.cmd == "describe":
        print("\n".join(describe(Recipe)))
        return 0
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

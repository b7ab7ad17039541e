"""`python -m data_pipeline <stage> ...`: every data stage, standalone or from a recipe."""

from __future__ import annotations

import argparse
import sys

from stagekit.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    from data_pipeline.curation.cli import STAGES as CURATION
    from data_pipeline.generation.cli import STAGES as GENERATION
    from data_pipeline.pipeline import STAGES as PIPELINE

    parser = argparse.ArgumentParser(prog="python -m data_pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, (help_text, configure) in {**GENERATION, **CURATION, **PIPELINE}.items():
        configure(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    return run_cli(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())

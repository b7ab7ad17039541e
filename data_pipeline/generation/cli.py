"""Command-line stages of the generation half: `python -m data_pipeline <stage> ...`.

Convenience flags (--method, --teacher, --max-new-tokens, ...) are recipe overrides under
`data.generation`, so `generate --max-new-tokens 64` and `generate data.generation.sampling.max_new_tokens=64`
are the same run. Without --input/--output, a stage reads and writes the recipe's run directory.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from data_pipeline.generation.pipeline import run_generation
from data_pipeline.generation.stages import (
    METHODS,
    default_paths,
    exercises_stage,
    generate_stage,
    orca_records_stage,
    outlines_stage,
    prompts_stage,
    self_instruct_stage,
    textbooks_stage,
    topics_stage,
)
from recipes import Recipe
from stagekit.cli import add_stage_args, recipe_from_args
from stagekit.io import StageError

G = "data.generation"


def _load(args: argparse.Namespace, flags: dict[str, str]) -> Recipe:
    """The recipe with each given flag turned into a `key=value` override (JSON values are valid YAML)."""
    extra = [
        f"{key}={json.dumps(getattr(args, dest))}"
        for dest, key in flags.items()
        if getattr(args, dest) is not None
    ]
    args.overrides = [*extra, *args.overrides]
    return recipe_from_args(args)


def _report(manifest: dict) -> None:
    counts = ", ".join(f"{k}={v}" for k, v in manifest.get("counts", {}).items())
    drops = ", ".join(f"{k}={v}" for k, v in manifest.get("drops", {}).items() if v)
    print(f"{manifest['stage']}: {manifest['output']} ({counts}{'; dropped ' + drops if drops else ''})")


def _inputs(args: argparse.Namespace, default: list[Path], stage: str) -> list[Path]:
    if args.input:
        return list(args.input)
    missing = [p for p in default if not p.exists()]
    if missing:
        raise StageError(f"{stage}: no --input given and the recipe's {missing[0]} does not exist yet")
    return default


def _section_key(method: str) -> str:
    return f"{G}.{method.replace('-', '_')}"


# --- configure functions: one per stage ------------------------------------------------------------------------


def _prompts(parser: argparse.ArgumentParser) -> None:
    add_stage_args(parser)
    parser.add_argument(
        "--method", required=True, choices=METHODS, help="which published method's prompts to build"
    )
    parser.add_argument(
        "--num-prompts",
        type=int,
        help=f"overrides {G}.<method>.num_prompts (self-instruct: prompts_per_round)",
    )

    def run(args: argparse.Namespace) -> None:
        key = "prompts_per_round" if args.method == "self-instruct" else "num_prompts"  # prompts written
        recipe = _load(args, {"num_prompts": f"{_section_key(args.method)}.{key}"})
        output = args.output or default_paths(recipe)[f"prompts/{args.method}"]
        _report(prompts_stage(recipe, args.method, args.input, output, force=args.force))

    parser.set_defaults(func=run)


TEACHER_FLAGS = {
    "teacher": f"{G}.teacher.backend",
    "model": f"{G}.teacher.model",
    "base_url": f"{G}.teacher.base_urls",
    "batch_size": f"{G}.teacher.batch_size",
    "concurrency": f"{G}.teacher.concurrency",
    "retries": f"{G}.teacher.retries",
    "timeout": f"{G}.teacher.timeout_s",
}


def _add_teacher_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", choices=["transformers", "openai", "vllm"], help="teacher backend")
    parser.add_argument(
        "--model", help="model directory/GGUF (transformers, vllm) or served model name (openai)"
    )
    parser.add_argument(
        "--base-url", nargs="+", help="OpenAI-compatible base URL(s), e.g. http://host:8000/v1"
    )
    parser.add_argument("--batch-size", type=int, help="prompts per teacher call / per appended chunk")
    parser.add_argument("--concurrency", type=int, help="openai: requests in flight")
    parser.add_argument("--retries", type=int, help="openai: retries per request")
    parser.add_argument("--timeout", type=float, help="openai: per-request timeout (s)")


def _generate(parser: argparse.ArgumentParser) -> None:
    add_stage_args(parser)
    parser.add_argument(
        "--method", choices=METHODS, help="read/write that method's files and use its max_new_tokens"
    )
    _add_teacher_args(parser)
    parser.add_argument("--max-new-tokens", type=int, help=f"overrides {G}.sampling.max_new_tokens")
    parser.add_argument("--temperature", type=float, help=f"overrides {G}.sampling.temperature")
    parser.add_argument("--top-p", type=float, help=f"overrides {G}.sampling.top_p")

    def run(args: argparse.Namespace) -> None:
        flags = {
            **TEACHER_FLAGS,
            "temperature": f"{G}.sampling.temperature",
            "top_p": f"{G}.sampling.top_p",
            # an explicit length wins over the method's own
            "max_new_tokens": f"{_section_key(args.method)}.max_new_tokens"
            if args.method
            else f"{G}.sampling.max_new_tokens",
        }
        recipe = _load(args, flags)
        if not args.method and not (args.input and args.output):
            raise StageError("generate: give --input and --output, or --method to use the recipe's files")
        paths = default_paths(recipe)
        inputs = _inputs(args, [paths[f"prompts/{args.method}"]] if args.method else [], "generate")
        output = args.output or paths[f"generations/{args.method}"]
        _report(generate_stage(recipe, inputs, output, method=args.method, force=args.force))

    parser.set_defaults(func=run)


def _collector(stage: Callable, name: str, sources: Callable[[dict], list[Path]]) -> Callable:
    def configure(parser: argparse.ArgumentParser) -> None:
        add_stage_args(parser)

        def run(args: argparse.Namespace) -> None:
            recipe = _load(args, {})
            paths = default_paths(recipe)
            inputs = _inputs(args, [p for p in sources(paths) if p.exists()] or sources(paths)[:1], name)
            _report(stage(recipe, inputs, args.output or paths[name], force=args.force))

        parser.set_defaults(func=run)

    return configure


def _topics(parser: argparse.ArgumentParser) -> None:
    add_stage_args(parser)
    _add_teacher_args(parser)

    def run(args: argparse.Namespace) -> None:
        recipe = _load(args, TEACHER_FLAGS)
        given = recipe.data.generation.topics.documents
        inputs = _inputs(args, [Path(given)] if given else [], "topics")
        if not inputs:
            raise StageError(f"topics: give --input documents.jsonl (or set {G}.topics.documents)")
        _report(
            topics_stage(recipe, inputs, args.output or default_paths(recipe)["topics"], force=args.force)
        )

    parser.set_defaults(func=run)


def _expansion(kind: str, key: str) -> Callable[[argparse.ArgumentParser], None]:
    """`outlines` / `taxonomy`: the teacher expands the subject (or code topic) list once; `--count` sets `key`."""

    def configure(parser: argparse.ArgumentParser) -> None:
        add_stage_args(parser, inputs=False)
        _add_teacher_args(parser)
        parser.add_argument("--count", type=int, help=f"overrides {G}.outlines.{key}")

        def run(args: argparse.Namespace) -> None:
            recipe = _load(args, {**TEACHER_FLAGS, "count": f"{G}.outlines.{key}"})
            output = args.output or default_paths(recipe)[kind]
            _report(outlines_stage(recipe, kind, output, force=args.force))

        parser.set_defaults(func=run)

    return configure


def _self_instruct(parser: argparse.ArgumentParser) -> None:
    add_stage_args(parser)
    _add_teacher_args(parser)
    parser.add_argument("--num-instructions", type=int, help=f"overrides {G}.self_instruct.num_instructions")

    def run(args: argparse.Namespace) -> None:
        recipe = _load(args, {**TEACHER_FLAGS, "num_instructions": f"{G}.self_instruct.num_instructions"})
        output = args.output or default_paths(recipe)["self-instruct"]
        _report(self_instruct_stage(recipe, args.input, output, force=args.force))

    parser.set_defaults(func=run)


def _all(parser: argparse.ArgumentParser) -> None:
    add_stage_args(parser, inputs=False)

    def run(args: argparse.Namespace) -> None:
        if args.output:
            raise StageError(
                "generation: outputs go to the recipe's run directory; set run_dir=... instead of --output"
            )
        for manifest in run_generation(_load(args, {}), force=args.force).values():
            _report(manifest)

    parser.set_defaults(func=run)


STAGES: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "prompts": (
        "Build one method's prompt JSONL (Cosmopedia, Phi-1 CodeTextbook/CodeExercises, Self-Instruct, Orca).",
        _prompts,
    ),
    "topics": (
        "Cosmopedia topic discovery: embed, cluster, let the teacher name and rate topics, keep the useful.",
        _topics,
    ),
    "outlines": (
        "Cosmopedia course outlines: the teacher lists units of each subject, then sections of each unit (cached).",
        _expansion("outlines", "units"),
    ),
    "taxonomy": (
        "Phi-1 CodeTextbook taxonomy: the teacher lists Python sub-concepts of each code topic (cached).",
        _expansion("taxonomy", "concepts"),
    ),
    "generate": (
        "Run the teacher over a prompts JSONL (resumable; transformers, openai or vllm backend).",
        _generate,
    ),
    "exercises": (
        "Parse CodeExercises generations into (prompt, solution) pairs checked with ast.parse.",
        _collector(exercises_stage, "exercises", lambda p: [p["generations/code-exercises"]]),
    ),
    "textbooks": (
        "Collect Cosmopedia/CodeTextbook generations into {id, text} pretraining records.",
        _collector(
            textbooks_stage,
            "textbooks",
            lambda p: [p["generations/cosmopedia"], p["generations/code-textbook"]],
        ),
    ),
    "orca-records": (
        "Turn Orca generations into (system, user, response) explanation-tuning records.",
        _collector(orca_records_stage, "orca-records", lambda p: [p["generations/orca"]]),
    ),
    "self-instruct": (
        "Self-Instruct bootstrapping from the seed-task file with the teacher.",
        _self_instruct,
    ),
    "generation": ("Every generation stage the recipe enables, chained (what `make all` runs).", _all),
}

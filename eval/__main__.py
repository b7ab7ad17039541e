"""`python -m eval <command>`: score checkpoints and write the report.

  humaneval --model DIR | --samples FILE   HumanEval pass@k (generation + sandboxed execution)
  mbpp      --model DIR | --samples FILE   MBPP sanitized test, same machinery
  lm-eval   --model DIR [--tasks mmlu,arc_easy,arc_challenge] [--shots N] [--limit N]
  all       --recipe NAME                  every benchmark on the recipe's checkpoints (+ teacher/extra models)
  report    --recipe NAME                  runs/<name>/report.md + CSV/JSON + PNG plots
  ablation  --recipe NAME                  data ablation at matched compute: runs/<name>/ablation.md (+ plots)

Settings come from the recipe's `eval` section (default recipe: tiny), changed with key=value overrides such
as `eval.humaneval.limit=20`. Results go to runs/<recipe>/eval/<label>/ unless --output says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eval.generation import set_threads
from recipes.evaluation import LmEvalTask
from stagekit.cli import add_stage_args, recipe_from_args, run_cli
from stagekit.io import StageError

DEFAULT_SHOTS = {"mmlu": 5, "arc_easy": 0, "arc_challenge": 0}


def _label(args: argparse.Namespace) -> str:
    source = Path(args.model or args.samples)
    return args.label or (source.stem if args.samples else source.name)


def run_code(args: argparse.Namespace) -> None:
    from eval.code_eval import evaluate_code
    from eval.results import result_path

    recipe = recipe_from_args(args)
    set_threads(recipe.eval.threads)
    label = _label(args)
    output = args.output or result_path(recipe.run_path, label, args.command)
    manifest = evaluate_code(
        args.command, getattr(recipe.eval, args.command), output, model_dir=args.model, samples=args.samples,
        benchmarks_dir=recipe.benchmarks_path, backend=recipe.eval.generator, device=recipe.eval.device,
        seed=recipe.seed, label=label, force=args.force,
    )  # fmt: skip
    print(f"{output}: {manifest['metrics']}")


def run_lm_eval(args: argparse.Namespace) -> None:
    from eval.lm_eval_runner import evaluate_lm
    from eval.results import eval_dir

    recipe = recipe_from_args(args)
    set_threads(recipe.eval.threads)
    if args.tasks:
        names = [t.strip() for t in args.tasks.split(",") if t.strip()]
        unknown = sorted(set(names) - set(DEFAULT_SHOTS))
        if unknown:
            raise StageError(
                f"--tasks: unknown task(s) {', '.join(unknown)} (known: {', '.join(DEFAULT_SHOTS)})"
            )
        tasks = [
            LmEvalTask(n, DEFAULT_SHOTS[n] if args.shots is None else args.shots, args.limit) for n in names
        ]
    else:
        tasks = recipe.eval.lm_eval
    label = args.label or Path(args.model).name
    out_dir = args.output or eval_dir(recipe.run_path) / label
    manifests = evaluate_lm(
        args.model, tasks, out_dir, benchmarks_dir=recipe.benchmarks_path, batch_size=recipe.eval.lm_eval_batch_size,
        device=recipe.eval.device, seed=recipe.seed, label=label, force=args.force,
    )  # fmt: skip
    for name, manifest in manifests.items():
        print(f"{name}: {manifest['metrics']}")


def run_all(args: argparse.Namespace) -> None:
    from eval.suite import evaluate_recipe

    for label, manifests in evaluate_recipe(recipe_from_args(args), force=args.force).items():
        for name, manifest in manifests.items():
            print(f"{label} {name}: {manifest['metrics']}")


def run_report(args: argparse.Namespace) -> None:
    from eval.report import write_report

    recipe = recipe_from_args(args)
    write_report(recipe, force=args.force)
    print(recipe.run_path / "report.md")


def run_ablation(args: argparse.Namespace) -> None:
    from eval.ablation import run_ablation as run

    print(run(args.recipe or "ablation-tiny", args.overrides, force=args.force))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("humaneval", "mbpp"):
        p = sub.add_parser(name, help=f"{name} pass@k of a model directory or a samples file")
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--model", type=Path, help="Hugging Face model directory (weights + tokenizer)")
        source.add_argument(
            "--samples", type=Path, help="JSONL of {task_id, completion[, run]} to score without generating"
        )
        p.add_argument("--label", help="name of this model in results (default: the directory or file name)")
        add_stage_args(p, inputs=False)
        p.set_defaults(func=run_code)
    p = sub.add_parser("lm-eval", help="MMLU / ARC through lm-eval")
    p.add_argument("--model", type=Path, required=True, help="Hugging Face model directory")
    p.add_argument(
        "--tasks", help="comma-separated: mmlu, arc_easy, arc_challenge (default: the recipe's eval.lm_eval)"
    )
    p.add_argument("--shots", type=int, help="few-shot examples (default: mmlu 5, arc 0)")
    p.add_argument("--limit", type=int, help="first N documents per (sub)task")
    p.add_argument("--label", help="name of this model in results (default: the directory name)")
    add_stage_args(p, inputs=False)
    p.set_defaults(func=run_lm_eval)
    for name, func, text in (
        ("all", run_all, "every benchmark on the recipe's models"),
        ("report", run_report, "write report.md"),
        ("ablation", run_ablation, "train and score the recipe's data-ablation arms; write ablation.md"),
    ):
        p = sub.add_parser(name, help=text)
        add_stage_args(p, inputs=False)
        p.set_defaults(func=func)
    args = parser.parse_args(argv)
    return run_cli(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())

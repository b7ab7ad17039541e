"""Command-line entry points of the curation stages (registered in `python -m data_pipeline`).

Each stage takes --input/--output explicitly, or defaults them from the recipe's plan for a mixture
component (`--component code`: curation/code/heuristics.jsonl -> curation/code/dedup.jsonl, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from data_pipeline.curation import plan as planning
from data_pipeline.curation.classifier import run_annotate, run_edu_filter, run_train_classifier
from data_pipeline.curation.decontaminate import run_decontaminate
from data_pipeline.curation.dedup import run_dedup
from data_pipeline.curation.executor import Submitted
from data_pipeline.curation.heuristics import run_heuristics
from data_pipeline.curation.humaneval_study import run_humaneval_study
from data_pipeline.curation.mixture import run_shards
from data_pipeline.curation.sources import run_sources
from data_pipeline.curation.tokenizer import run_tokenizer
from recipes import Recipe
from recipes.curation import MixtureComponent
from stagekit.cli import add_stage_args, recipe_from_args
from stagekit.io import StageError


def _report(stage: str, manifest: dict) -> None:
    summary = {
        "output": manifest.get("output"),
        "counts": manifest.get("counts"),
        "drops": manifest.get("drops"),
    }
    print(f"[{stage}] {json.dumps(summary)}", file=sys.stderr)


def _component(
    recipe: Recipe, args: argparse.Namespace, *, classified: bool = False
) -> planning.ComponentPlan:
    plans = planning.component_plans(recipe)
    name = args.component or next((n for n, p in plans.items() if p.classify or not classified), None)
    if name not in plans:
        wanted = "an edu_filter component" if classified and args.component is None else f"component '{name}'"
        raise StageError(
            f"recipe {recipe.name}: no {wanted} in data.curation.shards (known: {', '.join(plans)})"
        )
    return plans[name]


def _single_input(args: argparse.Namespace) -> Path | None:
    if args.input and len(args.input) != 1:
        raise StageError("this stage takes exactly one --input")
    return args.input[0] if args.input else None


def _chain_stage(step: str, run: Callable[..., dict], *, classified: bool = False, extra=None):
    """A stage of a component's chain: paths from --input/--output or the plan for --component."""

    def main(args: argparse.Namespace) -> None:
        recipe = recipe_from_args(args)
        plan = None if (args.input and args.output) else _component(recipe, args, classified=classified)
        input = _single_input(args) or plan.input_of(step)
        output = args.output or plan.path(step)
        kwargs = extra(args, recipe, plan) if extra else {}
        try:
            _report(step, run(recipe, input, output, force=args.force, **kwargs))
        except Submitted as e:
            print(f"[{step}] {e}", file=sys.stderr)

    def configure(parser: argparse.ArgumentParser) -> None:
        add_stage_args(parser)
        parser.add_argument("--component", help="mixture component whose chain paths are the defaults")
        if step == "heuristics":
            parser.add_argument(
                "--profile", choices=["code", "synthetic"], help="rule set (default: the component's)"
            )
        if step == "edu":
            parser.add_argument(
                "--classifier", type=Path, help="saved classifier directory (edu-classifier output)"
            )
        parser.set_defaults(func=main)

    return configure


def _heuristics_extra(args, recipe, plan) -> dict:
    return {"profile": args.profile or (plan.component.profile if plan else "code")}


def _edu_extra(args, recipe, plan) -> dict:
    classifier = args.classifier or (plan or _component(recipe, args, classified=True)).path("classifier")
    return {"classifier": classifier}


def _sources(args: argparse.Namespace) -> None:
    recipe = recipe_from_args(args)
    _report("sources", run_sources(recipe, args.output, force=args.force))


def _tokenizer(args: argparse.Namespace) -> None:
    recipe = recipe_from_args(args)
    plans = planning.component_plans(recipe)
    inputs = args.input or list(dict.fromkeys(p.final for p in plans.values()))
    _report(
        "tokenizer",
        run_tokenizer(recipe, inputs, args.output or planning.tokenizer_dir(recipe), force=args.force),
    )


def _shards(args: argparse.Namespace) -> None:
    recipe = recipe_from_args(args)
    if args.input:  # standalone: each file is a component of weight 1 named after the file
        pairs = [(MixtureComponent(name=Path(p).stem, path=str(p)), Path(p)) for p in args.input]
    else:
        plans = planning.component_plans(recipe)
        comps = getattr(recipe.data.curation.shards, args.stage)
        pairs = [(plans[c.name].component, plans[c.name].final) for c in comps]
    tokenizer = args.tokenizer or planning.tokenizer_dir(recipe)
    output = args.output or planning.shards_dir(recipe, args.stage)
    try:
        _report("shards", run_shards(recipe, args.stage, pairs, tokenizer, output, force=args.force))
    except Submitted as e:
        print(f"[shards] {e}", file=sys.stderr)


def _curate(args: argparse.Namespace) -> None:
    recipe = recipe_from_args(args)
    try:
        manifests = planning.run_curation(recipe, force=args.force)
    except Submitted as e:
        print(f"[curate] {e}", file=sys.stderr)
        return
    for label, manifest in manifests.items():
        _report(label, manifest)


def _simple(func, *, inputs: bool, extra: Callable[[argparse.ArgumentParser], None] | None = None):
    def configure(parser: argparse.ArgumentParser) -> None:
        add_stage_args(parser, inputs=inputs)
        if extra:
            extra(parser)
        parser.set_defaults(func=func)

    return configure


def _shards_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", choices=["pretrain", "finetune"], default="pretrain", help="which mixture")
    parser.add_argument("--tokenizer", type=Path, help="HF tokenizer directory (default: data/tokenizer)")


STAGES = {
    "sources": ("Collect the raw code corpus (stdlib / local files / HF datasets) as JSONL.", _simple(_sources, inputs=False)),
    "heuristics": ("Rule-based quality filters with per-rule drop counts.", _chain_stage("heuristics", run_heuristics, extra=_heuristics_extra)),
    "dedup": ("Exact + near-duplicate removal on datatrove's MinHash blocks (signatures, buckets, clusters, filter).", _chain_stage("dedup", run_dedup)),
    "edu-annotate": ("Teacher yes/no educational-value labels for a sample (Phi-1 Sec. 2.1).", _chain_stage("annotations", run_annotate, classified=True)),
    "edu-classifier": ("Random forest on embeddings of the annotations; saved with CV metrics.", _chain_stage("classifier", run_train_classifier, classified=True)),
    "edu-filter": ("Score documents with the saved classifier and keep the educational ones.", _chain_stage("edu", run_edu_filter, classified=True, extra=_edu_extra)),
    "decontaminate": ("Drop documents containing benchmark items (n-gram overlap); contamination report.", _chain_stage("decontaminated", run_decontaminate)),
    "humaneval-study": ("Phi-1 Sec. 5.2: exercises vs HumanEval (AST match rate, embeddings); table; pruning.", _chain_stage("humaneval", run_humaneval_study)),
    "tokenizer": ("Train the byte-level BPE tokenizer (or copy a local one) in HF format.", _simple(_tokenizer, inputs=True)),
    "shards": ("Tokenize a weighted mixture into packed train/val token shards.", _simple(_shards, inputs=True, extra=_shards_args)),
    "curate": ("Run every curation stage of the recipe (skipping fresh ones).", _simple(_curate, inputs=False)),
}  # fmt: skip

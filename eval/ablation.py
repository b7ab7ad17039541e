"""`python -m eval ablation --recipe NAME` (= `make ablation`): the same model trained on different data at
matched compute, scored with the same harness, reported with bootstrap intervals (eval/ablation_report.py).

1. data: `data_pipeline.pipeline.run_data` once for the recipe - one generation pass, one curation pass (every
   source of `data.curation.shards` curated), one tokenizer trained on the union of the sources.
2. held-out split: each source an arm reads is split by a hash of the document id into train/held-out JSONL
   (runs/<r>/ablation/sources/<source>/). A hash of the id, not a shuffle, so a document held out of the raw
   code is held out of the edu-filtered code too and no arm trains on another source's held-out documents.
3. arm shards: `data_pipeline.curation.mixture.run_shards` packs each arm's mixture (each phase's, for phased
   arms) from the train splits into runs/<r>/ablation/shards/<arm>[-phaseN]/, sharing one token cache.
4. training: `train.train_stage` on the recipe with per-arm overrides only - run_dir, seed, the stage's shards
   and phases (the overrides are written to each run's `arm.json`, so `python -m train --recipe R <overrides>`
   repeats a run by hand). Everything else (model, tokenizer, steps, batch, schedule) is the recipe's.
5. scoring: bits per byte of HumanEval/MBPP canonical solutions and of each source's held-out documents
   (eval/bpb.py), per item, into each checkpoint's eval/bpb.jsonl; optionally the recipe's pass@k.
Every step is skipped when its manifest says inputs and parameters are unchanged, so a killed run resumes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import yaml

from data_pipeline.curation.plan import component_plans, tokenizer_dir
from recipes import Recipe, load_recipe, resolve_recipe_path
from recipes.ablation import Arm, ArmComponent
from recipes.config import load_yaml
from recipes.curation import MixtureComponent
from stagekit.io import (
    StageError,
    atomic_path,
    fingerprint,
    is_fresh,
    read_jsonl,
    write_jsonl,
    write_manifest,
)

VERSION = "1"
# Recipe sections an `ablation.scale` recipe supplies (data mixtures and metrics stay the ablation recipe's).
SCALED_SECTIONS = ("model", "train", "launch", "data.generation")


@dataclass(frozen=True)
class Run:
    """One arm trained with one seed."""

    arm: Arm
    seed: int
    recipe: Recipe
    overrides: tuple[str, ...]  # what makes this run's recipe differ from the ablation recipe

    @property
    def labels(self) -> list[str]:
        """The training stages scored (pretrain, plus finetune when ablation.finetune)."""
        return list(self.recipe.train.stages)


def ablation_dir(recipe: Recipe) -> Path:
    return recipe.run_path / "ablation"


# ---- recipes ------------------------------------------------------------------------------------------------


def scale_overrides(recipe_ref: str | Path, overrides: list[str]) -> list[str]:
    """Overrides taking model/train/launch/generation/curation settings from the `ablation.scale` recipe."""
    scale = load_recipe(recipe_ref, overrides).ablation.scale
    if not scale:
        return []
    source = load_yaml(resolve_recipe_path(scale))
    out = []
    for dotted in SCALED_SECTIONS:
        node = source
        for part in dotted.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        out.append(f"{dotted}={json.dumps(node)}")
    curation = source.get("data", {}).get("curation", {})
    out += [f"data.curation.{k}={json.dumps(v)}" for k, v in curation.items() if k != "shards"]
    return out


def load_ablation(recipe_ref: str | Path, overrides: list[str]) -> tuple[Recipe, list[str]]:
    """The ablation recipe (scale applied) and the overrides that produce it from the file."""
    overrides = [*scale_overrides(recipe_ref, overrides), *overrides]
    recipe = load_recipe(recipe_ref, overrides)
    if not recipe.ablation.arms:
        raise StageError(f"{resolve_recipe_path(recipe_ref)}: ablation.arms is empty; nothing to compare")
    return recipe, overrides


def shard_dirs(recipe: Recipe, arm: Arm) -> list[Path]:
    base = ablation_dir(recipe) / "shards"
    return (
        [base / arm.name]
        if not arm.phases
        else [base / f"{arm.name}-phase{i + 1}" for i in range(len(arm.phases))]
    )


def arm_overrides(recipe: Recipe, arm: Arm, seed: int) -> list[str]:
    """The only keys in which an arm's training recipe differs from the ablation recipe: where it runs, its
    seed and its data."""
    stage = recipe.ablation.stage
    dirs = shard_dirs(recipe, arm)
    out = [
        f"run_dir={ablation_dir(recipe) / arm.name / f'seed-{seed}'}",
        f"seed={seed}",
        f"train.{stage}.shards={dirs[0]}",
    ]
    if arm.phases:
        phases = [{"until_step": p.until_step, "shards": str(d)} for p, d in zip(arm.phases, dirs)]
        out.append(f"train.{stage}.phases={json.dumps(phases)}")
    stages = [stage, "finetune"] if recipe.ablation.finetune else [stage]
    out.append(f"train.stages={json.dumps(stages)}")
    if recipe.ablation.finetune:  # every arm finetunes on the same shared CodeExercises shards
        out.append(f"train.finetune.shards={recipe.run_path / 'data' / 'shards' / 'finetune'}")
    return out


def plan_runs(recipe_ref: str | Path, overrides: list[str]) -> tuple[Recipe, list[Run]]:
    recipe, overrides = load_ablation(recipe_ref, overrides)
    runs = []
    for (
        seed
    ) in recipe.ablation.seeds:  # seed-major: a stopped run leaves whole seeds, each a complete comparison
        for arm in recipe.ablation.arms:
            extra = arm_overrides(recipe, arm, seed)
            runs.append(Run(arm, seed, load_recipe(recipe_ref, [*overrides, *extra]), tuple(extra)))
    return recipe, runs


# ---- data ---------------------------------------------------------------------------------------------------


def sources_used(recipe: Recipe) -> list[str]:
    names = {c.source for arm in recipe.ablation.arms for mix in arm.mixtures for c in mix}
    names |= {c.random_keep_like for arm in recipe.ablation.arms for mix in arm.mixtures for c in mix} - {""}
    return sorted(names)


def id_hash(doc_id: str, seed: int) -> float:
    """A document's position in [0, 1): held out when below heldout_fraction, whatever set it is in."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_source(recipe: Recipe, name: str, curated: Path, *, force: bool = False) -> dict[str, Path]:
    """{train, heldout} JSONL of one curated source (skipped when both manifests are fresh)."""
    out_dir = ablation_dir(recipe) / "sources" / name
    paths = {split: out_dir / f"{split}.jsonl" for split in ("train", "heldout")}
    params = {"source": name, "heldout_fraction": recipe.ablation.heldout_fraction, "seed": recipe.seed}
    fresh = all(
        is_fresh(p, stage="ablation.split", version=VERSION, params=params, inputs=[curated])
        for p in paths.values()
    )
    if fresh and not force:
        return paths
    started = time.time()
    records = list(read_jsonl(curated, required=("id", "text")))
    position = [id_hash(str(r["id"]), recipe.seed) for r in records]
    # A small source with no document under the fraction holds out its lowest one, so it is still scored.
    cut = max(params["heldout_fraction"], min(position, default=1.0) + 1e-12)
    splits = {
        "train": [r for r, p in zip(records, position) if p >= cut],
        "heldout": [r for r, p in zip(records, position) if p < cut],
    }
    if not splits["heldout"] or len(splits["train"]) < 2:
        raise StageError(
            f"{curated}: source '{name}' splits into {len(splits['train'])} train / {len(splits['heldout'])} held-out "
            "documents; need >= 2 and >= 1 (change ablation.heldout_fraction or generate more documents)"
        )
    for split, path in paths.items():
        write_jsonl(path, splits[split])
        counts = {"in": sum(map(len, splits.values())), "out": len(splits[split])}
        write_manifest(
            path,
            stage="ablation.split",
            version=VERSION,
            params=params,
            inputs=[curated],
            counts=counts,
            started=started,
        )
    return paths


def keep_share(recipe: Recipe, name: str) -> float:
    """Share of documents the edu filter kept in component `name`: edu.jsonl over its input (dedup.jsonl)."""
    plan = component_plans(recipe).get(name)
    if plan is None or not plan.classify:
        raise StageError(
            f"ablation.arms: random_keep_like '{name}' is not an edu_filter component of data.curation.shards"
        )
    kept = sum(1 for _ in read_jsonl(plan.path("edu")))
    total = sum(1 for _ in read_jsonl(plan.input_of("edu")))
    return kept / total


def text_chars(path: Path) -> int:
    """Characters of `text` in a train split."""
    return sum(len(r["text"]) for r in read_jsonl(path))


def mixture_pairs(
    recipe: Recipe, mixture: list[ArmComponent], splits: dict
) -> list[tuple[MixtureComponent, Path]]:
    """run_shards' (component, file) pairs for one arm mixture, reading the sources' train splits."""
    plans = component_plans(recipe)
    for comp in mixture:
        if comp.source not in plans:
            raise StageError(
                f"ablation.arms: source '{comp.source}' is not a data.curation.shards component ({', '.join(plans)})"
            )
    weights = {
        c.source: c.weight * (keep_share(recipe, c.random_keep_like) if c.random_keep_like else 1.0)
        for c in mixture
    }
    shares = {c.source: c.share for c in mixture if c.share is not None}
    if shares:
        # Characters the fixed components put in the mixture; each shared source is repeated so that it holds
        # `share` of the total: w_i * chars_i = share_i * rest / (1 - sum(shares)).
        rest = sum(weights[s] * text_chars(splits[s]["train"]) for s in weights if s not in shares)
        for source, share in shares.items():
            chars = text_chars(splits[source]["train"])
            if not chars:
                raise StageError(
                    f"ablation.arms: source '{source}' has no training text to give share {share}"
                )
            weights[source] = share * rest / ((1 - sum(shares.values())) * chars)
    pairs = []
    for comp in mixture:
        path = splits[comp.source]["train"]
        profile = plans[comp.source].component.profile
        component = MixtureComponent(
            name=comp.source, path=str(path), weight=weights[comp.source], profile=profile, curate=False
        )
        pairs.append((component, path))
    return pairs


def prepare_data(recipe: Recipe, *, force: bool = False) -> dict[str, dict[str, Path]]:
    """Shared data (generation, curation, tokenizer), source splits and every arm's shards."""
    from data_pipeline.curation.mixture import run_shards
    from data_pipeline.pipeline import run_data

    run_data(recipe, force=force)
    plans = component_plans(recipe)
    unknown = [s for s in sources_used(recipe) if s not in plans]
    if unknown:
        raise StageError(
            f"ablation.arms: unknown source(s) {unknown}; known data.curation.shards components: {', '.join(plans)}"
        )
    splits = {
        name: split_source(recipe, name, plans[name].final, force=force) for name in sources_used(recipe)
    }
    for arm in recipe.ablation.arms:
        for mixture, out in zip(arm.mixtures, shard_dirs(recipe, arm)):
            pairs = mixture_pairs(recipe, mixture, splits)
            run_shards(recipe, recipe.ablation.stage, pairs, tokenizer_dir(recipe), out, force=force)
    return splits


def copy_tokenizer(recipe: Recipe, run: Run) -> None:
    """The trainer reads <run_dir>/data/tokenizer; every arm gets the one shared tokenizer."""
    source, target = tokenizer_dir(recipe), run.recipe.run_path / "data" / "tokenizer"
    if target.is_dir() and fingerprint(target) == fingerprint(source):
        return
    with atomic_path(target) as tmp:
        shutil.copytree(source, tmp)


# ---- scoring ------------------------------------------------------------------------------------------------


def item_sets(recipe: Recipe, splits: dict[str, dict[str, Path]]) -> dict[str, list]:
    """{set name: [bpb.Item]}: code benchmarks' canonical solutions and each source's held-out documents."""
    from transformers import AutoTokenizer

    from eval.bpb import document_item, problem_item
    from eval.problems import load_problems

    cfg = recipe.ablation
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(recipe))
    sets = {}
    for bench in cfg.benchmarks:
        problems = load_problems(bench, recipe.benchmarks_path, cfg.benchmark_limit)
        sets[bench] = [
            problem_item(tokenizer, p["task_id"], p["prompt"], p["canonical_solution"]) for p in problems
        ]
    for name in cfg.heldout_sources or sorted(splits):
        if name not in splits:
            raise StageError(
                f"ablation.heldout_sources: '{name}' is not a source any arm reads ({', '.join(splits)})"
            )
        docs = read_jsonl(splits[name]["heldout"], required=("id", "text"))
        sets[f"heldout/{name}"] = [
            document_item(tokenizer, str(d["id"]), d["text"], cfg.max_doc_tokens) for d in docs
        ]
    return sets


def score_checkpoint(
    recipe: Recipe,
    model_dir: Path,
    out_dir: Path,
    sets: dict[str, list],
    inputs: list[Path],
    *,
    force: bool = False,
) -> Path:
    """Per-item bits-per-byte records of one checkpoint: out_dir/bpb.jsonl (+ manifest with per-set summaries)."""
    from eval.bpb import load_model, score_items, score_records, summarize
    from eval.generation import resolve_device

    output = out_dir / "bpb.jsonl"
    params = {
        "sets": {k: [i.id for i in v] for k, v in sets.items()},
        "max_doc_tokens": recipe.ablation.max_doc_tokens,
    }
    all_inputs = [model_dir, *inputs]
    if not force and is_fresh(
        output, stage="ablation.bpb", version=VERSION, params=params, inputs=all_inputs
    ):
        return output
    started = time.time()
    model = load_model(model_dir, resolve_device(recipe.eval.device))
    records, summary = [], {}
    for name, items in sets.items():
        scores = score_items(model, items, desc=f"bpb[{name}]")
        records += score_records(scores, name)
        summary[name] = summarize(scores)
    write_jsonl(output, records)
    write_manifest(
        output,
        stage="ablation.bpb",
        version=VERSION,
        params=params,
        inputs=all_inputs,
        counts={"items": len(records)},
        started=started,
        extra={"summary": summary},
    )
    return output


def pass_at_k(recipe: Recipe, run: Run, label: str, model_dir: Path, *, force: bool = False) -> None:
    """The recipe's own HumanEval/MBPP harness (eval.code_eval) on one checkpoint, for models that can pass tests."""
    from eval.code_eval import evaluate_code
    from eval.results import result_path

    for bench in ("humaneval", "mbpp"):
        cfg = getattr(recipe.eval, bench)
        if cfg.enabled:
            evaluate_code(
                bench, cfg, result_path(run.recipe.run_path, label, bench), model_dir=model_dir,
                benchmarks_dir=recipe.benchmarks_path, backend=recipe.eval.generator, device=recipe.eval.device,
                seed=run.seed, label=label, force=force,
            )  # fmt: skip


# ---- the whole experiment -----------------------------------------------------------------------------------


def train_run(recipe: Recipe, run: Run, *, force: bool = False) -> None:
    from train import train_stage

    copy_tokenizer(recipe, run)
    write_run_record(run)
    for stage in run.labels:
        train_stage(run.recipe, stage, force=force)


def write_run_record(run: Run) -> None:
    """arm.json: which arm and seed this run is, and the overrides that make its recipe (a manual rerun)."""
    path = run.recipe.run_path / "arm.json"
    record = {"arm": run.arm.name, "seed": run.seed, "overrides": list(run.overrides)}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def train_and_score(recipe: Recipe, run: Run, sets: dict[str, list], inputs: list[Path], force: bool) -> None:
    """One run: train its stages, then score each export (bits per byte; pass@k when the recipe asks)."""
    from eval.generation import set_threads

    train_run(recipe, run, force=force)
    set_threads(recipe.eval.threads)
    for label in run.labels:
        model_dir = run.recipe.run_path / label / "export"
        score_checkpoint(recipe, model_dir, run.recipe.run_path / "eval" / label, sets, inputs, force=force)
        if recipe.ablation.pass_at_k:
            pass_at_k(recipe, run, label, model_dir, force=force)


def run_ablation(recipe_ref: str | Path, overrides: list[str], *, force: bool = False) -> Path:
    """Data, every arm x seed trained and scored, then the report; returns runs/<recipe>/ablation.md."""
    from eval.ablation_report import write_report

    started = time.time()
    recipe, runs = plan_runs(recipe_ref, overrides)
    splits = prepare_data(recipe, force=force)
    sets = item_sets(recipe, splits)
    inputs = [p["heldout"] for p in splits.values()]
    workers = min(recipe.ablation.parallel_runs, len(runs))

    def done(i: int, run: Run) -> None:
        print(
            f"[ablation] {i}/{len(runs)} done: arm {run.arm.name}, seed {run.seed}",
            file=sys.stderr,
            flush=True,
        )

    if workers == 1:
        for i, run in enumerate(runs, 1):
            train_and_score(recipe, run, sets, inputs, force)
            done(i, run)
    else:
        # Runs are independent (own run_dir, seed and data), so they only share the cores. spawn: a fresh
        # interpreter per worker, no forked torch thread pools or tokenizer state.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            jobs = {pool.submit(train_and_score, recipe, run, sets, inputs, force): run for run in runs}
            for i, job in enumerate(as_completed(jobs), 1):
                if (error := job.exception()) is not None:
                    # Stop the queued runs; finished ones keep their manifests, so a rerun resumes after them.
                    pool.shutdown(cancel_futures=True)
                    raise error
                done(i, jobs[job])
    with atomic_path(ablation_dir(recipe) / "recipe.yaml") as tmp:
        tmp.write_text(yaml.safe_dump({"recipe": str(recipe_ref), "overrides": overrides}), encoding="utf-8")
    return write_report(recipe, runs, wall_seconds=time.time() - started)

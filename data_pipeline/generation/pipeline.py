"""Every generation stage a recipe enables, chained, with one shared teacher (built only if needed).

topics (if topics.documents)            -> generation/topics.jsonl   (seeds Cosmopedia when its seeds are unset)
outlines (if outlines.units > 0)        -> generation/outlines.jsonl (course-outline seeds for Cosmopedia)
taxonomy (if outlines.concepts > 0)     -> generation/taxonomy.jsonl (extra CodeTextbook topics)
self-instruct (if num_instructions > 0) -> generation/self_instruct.jsonl (queries for Orca when unset)
prompts + generate per method with num_prompts > 0
                                        -> generation/prompts/<method>.jsonl, generation/generations/<method>.jsonl
textbooks (Cosmopedia + CodeTextbook)   -> generation/textbooks.jsonl  (pretraining text)
exercises (CodeExercises)               -> generation/exercises.jsonl  (finetuning pairs)
orca-records (Orca)                     -> generation/orca.jsonl
"""

from __future__ import annotations

import dataclasses
import functools

from data_pipeline.generation.seeds import ExtractStore
from data_pipeline.generation.stages import (
    TEXTBOOK_METHODS,
    build_space,
    default_paths,
    exercises_stage,
    generate_stage,
    method_sampling,
    method_section,
    orca_records_stage,
    outlines_stage,
    prompts_stage,
    seed_sources,
    self_instruct_stage,
    textbooks_stage,
    topics_stage,
)
from data_pipeline.teachers import build_teacher
from recipes import Recipe

PROMPT_METHODS = ("cosmopedia", "code-textbook", "code-exercises", "orca")


def run_generation(recipe: Recipe, *, force: bool = False) -> dict[str, dict]:
    """Run the recipe's generation stages; returns {output name: manifest} (names as in `default_paths`)."""
    gen = recipe.data.generation
    paths = default_paths(recipe)
    teacher = functools.cache(lambda: build_teacher(gen.teacher))
    manifests: dict[str, dict] = {}
    try:
        if gen.topics.documents:
            manifests["topics"] = topics_stage(
                recipe, [gen.topics.documents], paths["topics"], force=force, teacher=teacher
            )
            if not gen.cosmopedia.seeds:
                recipe = _with(recipe, cosmopedia={"seeds": str(paths["topics"])})
        for kind, count, name, key in (  # teacher expansions, then wired into their method's prompt space
            ("outlines", gen.outlines.units, "cosmopedia", "outlines"),
            ("taxonomy", gen.outlines.concepts, "code_textbook", "taxonomy"),
        ):
            section = getattr(gen, name)
            if count > 0 and section.num_prompts > 0:
                manifests[kind] = outlines_stage(recipe, kind, paths[kind], force=force, teacher=teacher)
                if not getattr(section, key):
                    recipe = _with(recipe, **{name: {key: str(paths[kind])}})
        if gen.self_instruct.num_instructions > 0:
            manifests["self-instruct"] = self_instruct_stage(
                recipe, None, paths["self-instruct"], force=force, teacher=teacher
            )
            if not gen.orca.queries:
                recipe = _with(recipe, orca={"queries": str(paths["self-instruct"])})
        for method in PROMPT_METHODS:
            if method_section(recipe, method).num_prompts <= 0:
                continue
            prompts, generations = paths[f"prompts/{method}"], paths[f"generations/{method}"]
            manifests[f"prompts/{method}"] = prompts_stage(recipe, method, None, prompts, force=force)
            manifests[f"generations/{method}"] = generate_stage(
                recipe, [prompts], generations, method=method, force=force, teacher=teacher
            )
        textbook_inputs = [
            paths[f"generations/{m}"] for m in TEXTBOOK_METHODS if f"generations/{m}" in manifests
        ]
        if textbook_inputs:
            manifests["textbooks"] = textbooks_stage(recipe, textbook_inputs, paths["textbooks"], force=force)
        if "generations/code-exercises" in manifests:
            manifests["exercises"] = exercises_stage(
                recipe, [paths["generations/code-exercises"]], paths["exercises"], force=force
            )
        if "generations/orca" in manifests:
            manifests["orca-records"] = orca_records_stage(
                recipe, [paths["generations/orca"]], paths["orca-records"], force=force
            )
    finally:
        if teacher.cache_info().currsize:
            teacher().close()
    return manifests


def capacity(recipe: Recipe, method: str) -> tuple[int | None, str]:
    """Distinct prompts `method` can build from the recipe's sources, and how that was counted. Local sources are
    scanned (as `prompts` would); streamed Hub sources count max_records documents, unbounded without it."""
    corpus = recipe.data.generation.corpus
    sources = seed_sources(recipe)
    local = dataclasses.replace(sources, hub=[])
    key = "corpus" if not corpus.use_curation_sources else "curation"
    scanned = (
        _with(recipe, corpus={"use_curation_sources": False, "sources": local}) if sources.hub else recipe
    )
    extracts = ExtractStore()
    try:
        space, _ = build_space(scanned, method, None, extracts)
    finally:
        extracts.close()
    uses_corpus = getattr(method_section(recipe, method), "use_corpus", False)
    if not uses_corpus or not sources.hub:
        return space.size, "counted"
    if any(h.max_records <= 0 for h in sources.hub):
        return (
            None,
            f"unbounded: streams {', '.join(h.dataset for h in sources.hub)} ({key} hub, no max_records)",
        )
    documents = sum(h.max_records for h in sources.hub)
    per_document = corpus.extracts_per_document or 1
    bound = "<=" if corpus.extracts_per_document else ">="
    estimate = space.size + documents * per_document * space.parts[-1].per_seed
    return estimate, f"{bound} local + {documents:,} hub documents x {per_document} extract(s)"


def plan(recipe: Recipe) -> list[dict]:
    """Per enabled method: requested vs buildable prompts, expected tokens and teacher-hours (the data dry-run)."""
    gen = recipe.data.generation
    rows = []
    for method in PROMPT_METHODS:
        cfg = method_section(recipe, method)
        if cfg.num_prompts <= 0:
            continue
        buildable, how = capacity(recipe, method)
        fill = method_sampling(recipe, method).max_new_tokens * gen.dry_run.completion_fill
        tokens = cfg.num_prompts * (cfg.mean_completion_tokens or fill)
        rows.append(
            {
                "method": method,
                "requested": cfg.num_prompts,
                "buildable": buildable,
                "how": how,
                "ok": buildable is None or buildable >= cfg.num_prompts or cfg.allow_repeats,
                "expected_tokens": int(tokens),
                "teacher_hours": tokens / gen.dry_run.tokens_per_s / 3600,
            }
        )
    return rows


def print_plan(recipe: Recipe) -> bool:
    """Print `plan` as a table; True when every method can build what it requests."""
    gen = recipe.data.generation
    rows = plan(recipe)
    print(
        f"generation plan ({recipe.name}): expected tokens = prompts x <method>.mean_completion_tokens (else "
        f"max_new_tokens x dry_run.completion_fill = {gen.dry_run.completion_fill}); teacher-hours at {gen.dry_run.tokens_per_s:,.0f} "
        "generated tokens/s per server (dry_run.tokens_per_s)"
    )
    print(
        f"  {'method':15} {'requested':>12} {'buildable':>14} {'expected tokens':>16} {'teacher-hours':>14}  note"
    )
    for r in rows:
        buildable = "unbounded" if r["buildable"] is None else f"{r['buildable']:,}"
        flag = "" if r["ok"] else "  NOT BUILDABLE: raise the sources or lower num_prompts"
        print(
            f"  {r['method']:15} {r['requested']:>12,} {buildable:>14} {r['expected_tokens']:>16,} "
            f"{r['teacher_hours']:>14,.1f}  {r['how']}{flag}"
        )
    if gen.self_instruct.num_instructions > 0:
        print(
            f"  self-instruct: bootstraps {gen.self_instruct.num_instructions:,} tasks (teacher rounds, not counted)"
        )
    return all(r["ok"] for r in rows)


def _with(recipe: Recipe, **sections: dict) -> Recipe:
    """A copy of the recipe with some generation method fields replaced (chaining one stage into the next)."""
    gen = recipe.data.generation
    changed = {name: dataclasses.replace(getattr(gen, name), **fields) for name, fields in sections.items()}
    data = dataclasses.replace(recipe.data, generation=dataclasses.replace(gen, **changed))
    return dataclasses.replace(recipe, data=data)

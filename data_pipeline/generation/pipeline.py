"""Every generation stage a recipe enables, chained, with one shared teacher (built only if needed).

topics (if topics.documents)            -> generation/topics.jsonl   (seeds Cosmopedia when its seeds are unset)
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

from data_pipeline.generation.stages import (
    TEXTBOOK_METHODS,
    default_paths,
    exercises_stage,
    generate_stage,
    method_section,
    orca_records_stage,
    prompts_stage,
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


def _with(recipe: Recipe, **sections: dict) -> Recipe:
    """A copy of the recipe with some generation method fields replaced (chaining one stage into the next)."""
    gen = recipe.data.generation
    changed = {name: dataclasses.replace(getattr(gen, name), **fields) for name, fields in sections.items()}
    data = dataclasses.replace(recipe.data, generation=dataclasses.replace(gen, **changed))
    return dataclasses.replace(recipe, data=data)

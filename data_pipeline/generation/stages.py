"""The generation stages as plain functions: (recipe, inputs, output) -> manifest dict.

Each one skips its work when `is_fresh` says the output already matches its inputs and parameters
(unless force=True), writes its output atomically and a manifest beside it. The CLI (`cli.py`) and
the recipe orchestration (`pipeline.py`) only call these.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from data_pipeline.generation import code_exercises, code_textbook, cosmopedia, orca, self_instruct, topics
from data_pipeline.generation.runner import (
    finish_output,
    journal_path,
    load_prompts,
    quality_stats,
    run_prompts,
)
from data_pipeline.generation.sources import (
    DEFAULT_CODE_TOPICS,
    DEFAULT_SEED_TASKS,
    DEFAULT_TOPICS,
    read_lines,
)
from data_pipeline.teachers import Sampling, Teacher, build_teacher
from recipes import Recipe, to_dict
from stagekit.cli import data_dir
from stagekit.io import StageError, is_fresh, read_jsonl, read_manifest, write_jsonl, write_manifest

VERSION = "1"
METHODS = ("cosmopedia", "code-textbook", "code-exercises", "self-instruct", "orca")
TEXTBOOK_METHODS = ("cosmopedia", "code-textbook")
TeacherFactory = Callable[[], Teacher]


def generation_dir(recipe: Recipe) -> Path:
    return data_dir(recipe) / "generation"


def default_paths(recipe: Recipe) -> dict[str, Path]:
    """Where the recipe orchestration writes; later stages read textbooks/exercises/orca from here."""
    root = generation_dir(recipe)
    paths = {
        "topics": root / "topics.jsonl",
        "self-instruct": root / "self_instruct.jsonl",
        "textbooks": root / "textbooks.jsonl",
        "exercises": root / "exercises.jsonl",
        "orca-records": root / "orca.jsonl",
    }
    for method in METHODS:
        paths[f"prompts/{method}"] = root / "prompts" / f"{method}.jsonl"
        paths[f"generations/{method}"] = root / "generations" / f"{method}.jsonl"
    return paths


def method_section(recipe: Recipe, method: str):
    if method not in METHODS:
        raise StageError(f"unknown generation method '{method}' (known: {', '.join(METHODS)})")
    return getattr(recipe.data.generation, method.replace("-", "_"))


def method_sampling(recipe: Recipe, method: str | None = None) -> Sampling:
    """The recipe's sampling, with a method's own max_new_tokens when it sets one."""
    s = recipe.data.generation.sampling
    own = getattr(method_section(recipe, method), "max_new_tokens", 0) if method else 0
    return Sampling(
        max_new_tokens=own or s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        seed=recipe.seed,
        stop=tuple(s.stop),
    )


def _skip(output: Path, stage: str, params: dict, inputs: list[Path], force: bool) -> dict | None:
    if not force and is_fresh(output, stage=stage, version=VERSION, params=params, inputs=inputs):
        print(f"{stage}: {output} is up to date (use --force to redo)", file=sys.stderr)
        return read_manifest(output)
    return None


class _OwnedTeacher:
    """Builds the recipe's teacher on first use, and closes it at the end only if it built it."""

    def __init__(self, recipe: Recipe, factory: TeacherFactory | None) -> None:
        self.factory, self.owned, self.teacher = factory, factory is None, None
        self.section = recipe.data.generation.teacher

    def __enter__(self) -> _OwnedTeacher:
        return self

    def get(self) -> Teacher:
        if self.teacher is None:
            self.teacher = self.factory() if self.factory else build_teacher(self.section)
        return self.teacher

    def __exit__(self, *exc) -> None:
        if self.owned and self.teacher is not None:
            self.teacher.close()


def _teacher_params(recipe: Recipe) -> dict:
    t = recipe.data.generation.teacher
    return {
        "backend": t.backend,
        "model": t.model,
        "dtype": t.dtype,
    }  # what changes the text, not how it is fetched


# --- prompts --------------------------------------------------------------------------------------------------


SOURCE_KEYS = {
    "cosmopedia": "seeds",
    "code-textbook": "topics",
    "code-exercises": "topics",
    "self-instruct": "seed_tasks",
    "orca": "queries",
}
DEFAULT_SOURCES = {
    "cosmopedia": DEFAULT_TOPICS,
    "code-textbook": DEFAULT_CODE_TOPICS,
    "code-exercises": DEFAULT_CODE_TOPICS,
    "self-instruct": DEFAULT_SEED_TASKS,
    "orca": DEFAULT_SEED_TASKS,
}


def _method_source(recipe: Recipe, method: str, inputs: list[Path] | None) -> Path:
    """A method's seed file: --input, else the recipe key, else the file shipped in this package."""
    if inputs:
        if len(inputs) != 1:
            raise StageError(f"{method}: expected one --input seed file, got {len(inputs)}")
        return Path(inputs[0])
    return Path(getattr(method_section(recipe, method), SOURCE_KEYS[method]) or DEFAULT_SOURCES[method])


def prompts_stage(
    recipe: Recipe, method: str, inputs: list[Path] | None, output: Path, *, force: bool = False
) -> dict:
    """Build `method`'s prompt records from its seed file (`inputs`, else the recipe's, else the shipped one)."""
    cfg = method_section(recipe, method)
    if method != "self-instruct" and cfg.num_prompts <= 0:
        key = f"data.generation.{method.replace('-', '_')}.num_prompts"
        raise StageError(f"prompts --method {method}: {key} is 0; set it (e.g. {key}=8 or --num-prompts 8)")
    source = _method_source(recipe, method, inputs)
    params = {"method": method, "section": to_dict(cfg), "seed": recipe.seed}
    if (done := _skip(output, "prompts", params, [source], force)) is not None:
        return done
    started = time.time()
    if method == "cosmopedia":
        seeds = cosmopedia.load_seeds(source)
        records = cosmopedia.build(
            seeds, cfg.audiences, cfg.formats, cfg.num_prompts, recipe.seed, cfg.extract_chars
        )
    elif method == "code-textbook":
        seeds = read_lines(source)
        records = code_textbook.build(seeds, cfg.audiences, cfg.num_prompts, recipe.seed)
    elif method == "code-exercises":
        seeds = read_lines(source)
        records = code_exercises.build(seeds, cfg.num_prompts, recipe.seed)
    elif method == "self-instruct":
        seeds = self_instruct.load_seed_tasks(source)
        records = self_instruct.round_one_prompts(seeds, cfg, recipe.seed)
    else:
        seeds = orca.load_queries(source)
        records = orca.build(seeds, cfg.num_prompts, recipe.seed, cfg.system_messages)
    write_jsonl(output, records)
    return write_manifest(
        output,
        stage="prompts",
        version=VERSION,
        params=params,
        inputs=[source],
        counts={"seeds": len(seeds), "prompts": len(records)},
        started=started,
    )


# --- generate -------------------------------------------------------------------------------------------------


def generate_stage(
    recipe: Recipe,
    inputs: list[Path],
    output: Path,
    *,
    method: str | None = None,
    force: bool = False,
    teacher: TeacherFactory | None = None,
) -> dict:
    """Run the teacher over prompt JSONL file(s); resumable (see runner). `method` picks its max_new_tokens."""
    gen = recipe.data.generation
    sampling = method_sampling(recipe, method)
    params = {"teacher": _teacher_params(recipe), "sampling": sampling.to_dict()}
    if (done := _skip(output, "generate", params, inputs, force)) is not None:
        return done
    if force:
        journal_path(output).unlink(missing_ok=True)
    started = time.time()
    prompts = load_prompts(inputs, sampling)  # bad input fails before the teacher loads
    with _OwnedTeacher(recipe, teacher) as owned:
        records, stats = run_prompts(
            prompts,
            owned.get(),
            sampling,
            batch_size=gen.teacher.batch_size,
            journal=journal_path(output),
            desc=f"generate {output.stem}",
        )
        name = owned.get().name
    print(f"generate {output}: {stats.summary()}", file=sys.stderr)
    finish_output(output, records, stats, gen.allow_failed_fraction)
    seconds = max(stats.seconds, 1e-9)
    manifest = write_manifest(
        output,
        stage="generate",
        version=VERSION,
        params=params,
        inputs=inputs,
        counts={
            "prompts": stats.total,
            "done": stats.done,
            "failed": stats.failed,
            "retried": stats.retried,
            "resumed": stats.resumed,
            "prompt_tokens": sum(
                r["prompt_tokens"] for r in records
            ),  # the whole output, resumed part included
            "completion_tokens": sum(r["completion_tokens"] for r in records),
        },
        drops={"failed": stats.failed},
        started=started,
        extra={
            "teacher": name,
            "quality": quality_stats(records),
            "throughput": {  # this run only
                "prompts_per_s": round((stats.total - stats.resumed) / seconds, 3),
                "tokens_per_s": round(stats.completion_tokens / seconds, 2),
                "seconds": round(stats.seconds, 2),
            },
        },
    )
    journal_path(output).unlink(missing_ok=True)
    return manifest


# --- collection stages ------------------------------------------------------------------------------------------


def _read_all(inputs: list[Path]) -> list[dict]:
    return [r for path in inputs for r in read_jsonl(path, required=("id", "completion"))]


def textbooks_stage(recipe: Recipe, inputs: list[Path], output: Path, *, force: bool = False) -> dict:
    """Textbook-like generations (Cosmopedia, CodeTextbook) -> {id, text, method, ...} for pretraining."""
    min_chars = recipe.data.generation.min_text_chars
    params = {"min_text_chars": min_chars}
    if (done := _skip(output, "textbooks", params, inputs, force)) is not None:
        return done
    started, generations = time.time(), _read_all(inputs)
    kept, drops = [], {"generation_error": 0, "too_short": 0}
    meta = ("method", "topic", "audience", "format", "seed_kind", "teacher", "finish_reason")
    for r in generations:
        text = r["completion"].strip()
        if r.get("error"):
            drops["generation_error"] += 1
        elif len(text) < min_chars:
            drops["too_short"] += 1
        else:
            kept.append({"id": r["id"], "text": text, **{k: r[k] for k in meta if k in r}})
    write_jsonl(output, kept)
    return write_manifest(
        output,
        stage="textbooks",
        version=VERSION,
        params=params,
        inputs=inputs,
        counts={"in": len(generations), "out": len(kept)},
        drops=drops,
        started=started,
    )


def exercises_stage(recipe: Recipe, inputs: list[Path], output: Path, *, force: bool = False) -> dict:
    """CodeExercises generations -> {id, text, prompt, solution, entry_point} pairs checked with ast.parse."""
    params = {"parser": "ast"}
    if (done := _skip(output, "exercises", params, inputs, force)) is not None:
        return done
    started, generations = time.time(), _read_all(inputs)
    kept, drops = code_exercises.parse_generations(generations)
    write_jsonl(output, kept)
    return write_manifest(
        output,
        stage="exercises",
        version=VERSION,
        params=params,
        inputs=inputs,
        counts={"in": len(generations), "out": len(kept)},
        drops=dict(drops),
        started=started,
    )


def orca_records_stage(recipe: Recipe, inputs: list[Path], output: Path, *, force: bool = False) -> dict:
    """Orca generations -> (system, user, response) records for explanation tuning."""
    if (done := _skip(output, "orca-records", {}, inputs, force)) is not None:
        return done
    started, generations = time.time(), _read_all(inputs)
    missing = next((r["id"] for r in generations if "system" not in r or "user" not in r), None)
    if missing is not None:
        raise StageError(
            f"orca-records: generation {missing} has no system/user fields (not built by prompts --method orca)"
        )
    kept, drops = orca.explanation_records(generations)
    write_jsonl(output, kept)
    return write_manifest(
        output,
        stage="orca-records",
        version=VERSION,
        params={},
        inputs=inputs,
        counts={"in": len(generations), "out": len(kept)},
        drops=dict(drops),
        started=started,
    )


# --- teacher-in-the-loop stages ---------------------------------------------------------------------------------


def topics_stage(
    recipe: Recipe,
    inputs: list[Path],
    output: Path,
    *,
    force: bool = False,
    teacher: TeacherFactory | None = None,
) -> dict:
    """Cosmopedia topic discovery over document JSONL(s) -> seed records {topic, extract, cluster, score}."""
    cfg = recipe.data.generation.topics
    sampling = replace(method_sampling(recipe), max_new_tokens=cfg.max_new_tokens)
    params = {
        "section": to_dict(cfg),
        "seed": recipe.seed,
        "teacher": _teacher_params(recipe),
        "sampling": sampling.to_dict(),
    }
    if (done := _skip(output, "topics", params, inputs, force)) is not None:
        return done
    started = time.time()
    documents = [r for path in inputs for r in read_jsonl(path, required=("text",))]
    with _OwnedTeacher(recipe, teacher) as owned:
        seeds, clusters, drops = topics.discover(
            documents,
            owned.get(),
            sampling,
            cfg,
            seed=recipe.seed,
            batch_size=recipe.data.generation.teacher.batch_size,
        )
    write_jsonl(output, seeds)
    return write_manifest(
        output,
        stage="topics",
        version=VERSION,
        params=params,
        inputs=inputs,
        counts={
            "documents": len(documents),
            "clusters": len(clusters),
            "topics": len({s["topic"] for s in seeds}),
            "seeds": len(seeds),
        },
        drops=dict(drops),
        started=started,
        extra={"clusters": clusters},
    )


def self_instruct_stage(
    recipe: Recipe,
    inputs: list[Path] | None,
    output: Path,
    *,
    force: bool = False,
    teacher: TeacherFactory | None = None,
) -> dict:
    """Self-Instruct bootstrapping from the seed-task file -> new tasks {instruction, instances, is_classification}."""
    cfg = recipe.data.generation.self_instruct
    if cfg.num_instructions <= 0:
        raise StageError(
            "self-instruct: data.generation.self_instruct.num_instructions is 0; set it (or --num-instructions)"
        )
    source = _method_source(recipe, "self-instruct", inputs)
    sampling = method_sampling(recipe, "self-instruct")
    params = {
        "section": to_dict(cfg),
        "seed": recipe.seed,
        "teacher": _teacher_params(recipe),
        "sampling": sampling.to_dict(),
    }
    if (done := _skip(output, "self-instruct", params, [source], force)) is not None:
        return done
    started = time.time()
    seeds = self_instruct.load_seed_tasks(source)
    with _OwnedTeacher(recipe, teacher) as owned:
        tasks, drops = self_instruct.bootstrap(
            seeds,
            owned.get(),
            sampling,
            cfg,
            seed=recipe.seed,
            batch_size=recipe.data.generation.teacher.batch_size,
        )
    write_jsonl(output, tasks)
    return write_manifest(
        output,
        stage="self-instruct",
        version=VERSION,
        params=params,
        inputs=[source],
        counts={
            "seed_tasks": len(seeds),
            "new_tasks": len(tasks),
            "classification": sum(t["is_classification"] for t in tasks),
        },
        drops=dict(drops),
        started=started,
    )

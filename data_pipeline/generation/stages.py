"""The generation stages as plain functions: (recipe, inputs, output) -> manifest dict.

Each one skips its work when `is_fresh` says the output already matches its inputs and parameters
(unless force=True), writes its output atomically and a manifest beside it. The CLI (`cli.py`) and
the recipe orchestration (`pipeline.py`) only call these.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from data_pipeline.curation.sources import iter_sources
from data_pipeline.generation import (
    code_exercises,
    code_textbook,
    cosmopedia,
    orca,
    outlines,
    self_instruct,
    topics,
)
from data_pipeline.generation.diversity import DiversityMeter
from data_pipeline.generation.runner import (
    count_prompts,
    finish_output,
    input_files,
    parts_dir,
    run_stream,
    stream_prompts,
)
from data_pipeline.generation.seeds import ExtractStore
from data_pipeline.generation.sources import (
    DEFAULT_CODE_TOPICS,
    DEFAULT_PERSONAS,
    DEFAULT_SEED_TASKS,
    DEFAULT_TOPICS,
    read_lines,
)
from data_pipeline.generation.space import Space
from data_pipeline.teachers import Sampling, Teacher, build_teacher
from recipes import Recipe, to_dict
from recipes.curation import SourcesConfig
from stagekit.cli import data_dir
from stagekit.io import StageError, is_fresh, read_jsonl, read_manifest, write_jsonl, write_manifest

VERSION = "2"
PROMPT_NEAR_THRESHOLD = 0.95  # Jaccard on 5-word shingles: templated prompts share their template, not more
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
        "outlines": root / "outlines.jsonl",
        "taxonomy": root / "taxonomy.jsonl",
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


def seed_sources(recipe: Recipe) -> SourcesConfig:
    corpus = recipe.data.generation.corpus
    return recipe.data.curation.sources if corpus.use_curation_sources else corpus.sources


def build_space(
    recipe: Recipe, method: str, inputs: list[Path] | None, extracts: ExtractStore
) -> tuple[Space, Path]:
    """`method`'s prompt space over its configured sources (corpus extracts go to `extracts`), and its seed file."""
    gen, cfg = recipe.data.generation, method_section(recipe, method)
    source = _method_source(recipe, method, inputs)
    if getattr(cfg, "use_corpus", False):
        extracts.add_documents(iter_sources(seed_sources(recipe), recipe.seed, Counter()), gen.corpus)
    if method == "cosmopedia":
        seeds = cosmopedia.load_seeds(source, extracts)
        if cfg.outlines:
            seeds += cosmopedia.load_seeds(cfg.outlines, extracts)
        personas = read_lines(cfg.personas or DEFAULT_PERSONAS) if cfg.use_personas else None
        return cosmopedia.space(
            seeds, extracts, cfg.audiences, cfg.formats, cfg.extract_chars, personas
        ), source
    if method == "code-textbook":
        names = read_lines(source) + (outlines.taxonomy_topics(cfg.taxonomy) if cfg.taxonomy else [])
        return code_textbook.space(names, cfg.audiences, extracts, gen.corpus.extract_chars), source
    if method == "code-exercises":
        return code_exercises.space(read_lines(source)), source
    return orca.space(orca.load_queries(source), cfg.system_messages), source


def prompts_stage(
    recipe: Recipe, method: str, inputs: list[Path] | None, output: Path, *, force: bool = False
) -> dict:
    """Build `method`'s prompt records from its sources, streamed to `output` in the seeded permutation order;
    the manifest records the capacity and the measured diversity."""
    gen, cfg = recipe.data.generation, method_section(recipe, method)
    key = f"data.generation.{method.replace('-', '_')}.num_prompts"
    if method != "self-instruct" and cfg.num_prompts <= 0:
        raise StageError(f"prompts --method {method}: {key} is 0; set it (e.g. {key}=8 or --num-prompts 8)")
    source = _method_source(recipe, method, inputs)
    params = {"method": method, "section": to_dict(cfg), "seed": recipe.seed}
    if getattr(cfg, "use_corpus", False):
        params["corpus"] = {
            **to_dict(gen.corpus),
            "sources": to_dict(seed_sources(recipe)),
            "python": sys.version,
        }
    expansions = [Path(p) for p in (getattr(cfg, "outlines", ""), getattr(cfg, "taxonomy", "")) if p]
    if getattr(cfg, "use_personas", False):
        expansions.append(Path(cfg.personas or DEFAULT_PERSONAS))
    if (done := _skip(output, "prompts", params, [source, *expansions], force)) is not None:
        return done
    started = time.time()
    if method == "self-instruct":
        seeds = self_instruct.load_seed_tasks(source)
        count = write_jsonl(output, self_instruct.round_one_prompts(seeds, cfg, recipe.seed))
        return write_manifest(
            output, stage="prompts", version=VERSION, params=params, inputs=[source],
            counts={"seeds": len(seeds), "prompts": count}, started=started,
        )  # fmt: skip
    extracts = ExtractStore()
    try:
        space, source = build_space(recipe, method, inputs, extracts)
        meter = DiversityMeter(PROMPT_NEAR_THRESHOLD, gen.diversity_sample)
        records = space.take(cfg.num_prompts, recipe.seed, key=key, allow_repeats=cfg.allow_repeats)
        bar = tqdm(
            records, total=cfg.num_prompts, desc=f"prompts {method}", unit="prompt", dynamic_ncols=True
        )
        write_jsonl(output, (meter.add(r["messages"][-1]["content"]) or r for r in bar))
    finally:
        extracts.close()
    return write_manifest(
        output,
        stage="prompts",
        version=VERSION,
        params=params,
        inputs=[source, *expansions],
        counts={
            "capacity": space.size,
            "extract_seeds": len(extracts),
            "corpus_documents": extracts.documents,
        },
        drops=dict(extracts.drops),
        started=started,
        extra={"diversity": meter.result("prompts")},
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
    """Run the teacher over prompt JSONL file(s) or shard directories, streamed in parts; resumable (see runner)."""
    gen = recipe.data.generation
    sampling = method_sampling(recipe, method)
    params = {"teacher": _teacher_params(recipe), "sampling": sampling.to_dict()}
    files = input_files(inputs)
    if (done := _skip(output, "generate", params, files, force)) is not None:
        return done
    workdir = parts_dir(output)
    if force and workdir.exists():
        shutil.rmtree(workdir)
    started = time.time()
    if gen.inference.runner == "datatrove":
        from data_pipeline.generation.engine import run_datatrove

        stats, name = run_datatrove(recipe, files, workdir, sampling)
    else:
        # One validating pass first: bad input fails before the teacher loads, and the bar knows the total.
        total = count_prompts(files)
        with _OwnedTeacher(recipe, teacher) as owned:
            stats = run_stream(
                stream_prompts(files, sampling),
                owned.get(),
                sampling,
                workdir,
                batch_size=gen.teacher.batch_size,
                chunk_size=gen.chunk_size,
                desc=f"generate {output.stem}",
                total=total,
            )
            name = owned.get().name
    print(f"generate {output}: {stats.summary()}", file=sys.stderr)
    tokens, quality = finish_output(output, workdir, stats, gen.allow_failed_fraction, gen.diversity_sample)
    seconds = max(stats.seconds, 1e-9)
    manifest = write_manifest(
        output,
        stage="generate",
        version=VERSION,
        params=params,
        inputs=files,
        counts={
            "prompts": stats.total,
            "done": stats.done,
            "failed": stats.failed,
            "retried": stats.retried,
            "resumed": stats.resumed,
            **tokens,  # the whole output, resumed part included
        },
        drops={"failed": stats.failed},
        started=started,
        extra={
            "teacher": name,
            "engine": gen.inference.runner,
            "quality": quality,
            "throughput": {  # this run only
                "prompts_per_s": round((stats.total - stats.resumed) / seconds, 3),
                "tokens_per_s": round(stats.completion_tokens / seconds, 2),
                "seconds": round(stats.seconds, 2),
            },
        },
    )
    shutil.rmtree(workdir)
    return manifest


# --- collection stages ------------------------------------------------------------------------------------------


def _stream(inputs: list[Path], counts: Counter) -> Iterator[dict]:
    """Generation records of every input file or shard directory, counted as they pass."""
    for path in input_files(inputs):
        for r in read_jsonl(path, required=("id", "completion")):
            counts["in"] += 1
            yield r


def _collect(output: Path, records: Iterator[dict], counts: Counter) -> None:
    counts["out"] = write_jsonl(output, records)


def textbooks_stage(recipe: Recipe, inputs: list[Path], output: Path, *, force: bool = False) -> dict:
    """Textbook-like generations (Cosmopedia, CodeTextbook) -> {id, text, method, ...} for pretraining."""
    min_chars = recipe.data.generation.min_text_chars
    params = {"min_text_chars": min_chars}
    if (done := _skip(output, "textbooks", params, inputs, force)) is not None:
        return done
    started, counts, drops = time.time(), Counter(), Counter(generation_error=0, too_short=0)
    meta = (
        "method",
        "topic",
        "audience",
        "format",
        "level",
        "style",
        "seed_kind",
        "teacher",
        "finish_reason",
    )

    def kept() -> Iterator[dict]:
        for r in _stream(inputs, counts):
            text = r["completion"].strip()
            if r.get("error"):
                drops["generation_error"] += 1
            elif len(text) < min_chars:
                drops["too_short"] += 1
            else:
                yield {"id": r["id"], "text": text, **{k: r[k] for k in meta if k in r}}

    _collect(output, kept(), counts)
    return write_manifest(
        output,
        stage="textbooks",
        version=VERSION,
        params=params,
        inputs=inputs,
        counts=dict(counts),
        drops=dict(drops),
        started=started,
    )


def exercises_stage(recipe: Recipe, inputs: list[Path], output: Path, *, force: bool = False) -> dict:
    """CodeExercises generations -> {id, text, prompt, solution, entry_point} pairs checked with ast.parse."""
    params = {"parser": "ast"}
    if (done := _skip(output, "exercises", params, inputs, force)) is not None:
        return done
    started, counts, drops = time.time(), Counter(), Counter()
    _collect(output, code_exercises.parse_generations(_stream(inputs, counts), drops), counts)
    return write_manifest(
        output,
        stage="exercises",
        version=VERSION,
        params=params,
        inputs=inputs,
        counts=dict(counts),
        drops=dict(drops),
        started=started,
    )


def orca_records_stage(recipe: Recipe, inputs: list[Path], output: Path, *, force: bool = False) -> dict:
    """Orca generations -> (system, user, response) records for explanation tuning."""
    if (done := _skip(output, "orca-records", {}, inputs, force)) is not None:
        return done
    started, counts, drops = time.time(), Counter(), Counter()

    def checked() -> Iterator[dict]:
        for r in _stream(inputs, counts):
            if "system" not in r or "user" not in r:
                raise StageError(
                    f"orca-records: generation {r['id']} has no system/user fields (not built by prompts --method orca)"
                )
            yield r

    _collect(output, orca.explanation_records(checked(), drops), counts)
    return write_manifest(
        output,
        stage="orca-records",
        version=VERSION,
        params={},
        inputs=inputs,
        counts=dict(counts),
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
    started, counts = time.time(), Counter()

    def documents() -> Iterator[dict]:
        return (r for path in inputs for r in read_jsonl(path, required=("text",)))

    with _OwnedTeacher(recipe, teacher) as owned:
        seeds, clusters, drops = topics.discover(
            documents,
            owned.get(),
            sampling,
            cfg,
            counts,
            seed=recipe.seed,
            batch_size=recipe.data.generation.teacher.batch_size,
        )
        write_jsonl(output, seeds)  # atomic; streamed as the assignment pass goes
    kept = [c for c in clusters if c["kept"]]
    return write_manifest(
        output,
        stage="topics",
        version=VERSION,
        params=params,
        inputs=inputs,
        counts={
            "documents": counts["documents"],
            "clusters": len(clusters),
            "kept_clusters": len(kept),
            "topics": len({c["topic"] for c in kept}),
            "seeds": counts["assigned"],
        },
        drops={
            **{f"{rule}_clusters": n for rule, n in drops.items()},
            **{rule: counts[rule] for rule in ("in_dropped_cluster", "over_per_topic", "empty_text")},
        },
        started=started,
        extra={"clusters": clusters},
    )


def outlines_stage(
    recipe: Recipe, kind: str, output: Path, *, force: bool = False, teacher: TeacherFactory | None = None
) -> dict:
    """Teacher-expanded seeds, built once and cached: `kind` "outlines" (Cosmopedia course outlines, subject ->
    units -> sections) or "taxonomy" (Python sub-concepts of each CodeTextbook topic). See `outlines`."""
    gen = recipe.data.generation
    cfg = gen.outlines
    count = cfg.units if kind == "outlines" else cfg.concepts
    if count <= 0:
        key = "units" if kind == "outlines" else "concepts"
        raise StageError(f"{kind}: data.generation.outlines.{key} is 0; set it (e.g. outlines.{key}=8)")
    source = Path(
        (cfg.subjects or DEFAULT_TOPICS)
        if kind == "outlines"
        else (gen.code_textbook.topics or DEFAULT_CODE_TOPICS)
    )
    sampling = replace(method_sampling(recipe), max_new_tokens=cfg.max_new_tokens)
    shape = (
        {"units": cfg.units, "sections": cfg.sections} if kind == "outlines" else {"concepts": cfg.concepts}
    )
    params = {**shape, "teacher": _teacher_params(recipe), "sampling": sampling.to_dict()}
    if (done := _skip(output, kind, params, [source], force)) is not None:
        return done
    started = time.time()
    run = {"batch_size": gen.teacher.batch_size, "journal": output}
    with _OwnedTeacher(recipe, teacher) as owned:
        if kind == "outlines":
            records, drops = outlines.course_outlines(
                read_lines(source), cfg.units, cfg.sections, owned.get(), sampling, **run
            )
        else:
            records, drops = outlines.concept_taxonomy(
                read_lines(source), cfg.concepts, owned.get(), sampling, **run
            )
    if not records:
        raise StageError(
            f"{kind}: the teacher's answers held no list items ({dict(drops)}); use a stronger teacher or raise "
            "data.generation.outlines.max_new_tokens"
        )
    write_jsonl(output, records)
    for journal in output.parent.glob(f"{output.name}.*.partial"):
        journal.unlink()
    return write_manifest(
        output, stage=kind, version=VERSION, params=params, inputs=[source],
        counts={"subjects": len(read_lines(source)), "seeds": len(records)}, drops=dict(drops), started=started,
    )  # fmt: skip


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

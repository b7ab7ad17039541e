"""Cosmopedia prompts (Ben Allal et al. 2024, "Cosmopedia: how to create large-scale synthetic data").

A prompt asks the teacher for one of five formats (two textbook styles, blog post, wikiHow article,
story) for one of four audiences, about a seed: a topic, a curated course outline, or a web/code
extract (cut to ~1000 characters). Style instructions are concrete per audience and per format, and
every prompt forbids the openers and boilerplate Cosmopedia found the teacher overusing.
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.generation.seeds import ExtractStore
from data_pipeline.generation.sources import DEFAULT_TOPICS, chat, read_lines
from data_pipeline.generation.space import Part, Space
from stagekit.io import StageError, read_jsonl_numbered

AUDIENCES = {
    "young_children": (
        "for young children (ages 5 to 10). Use short sentences and simple everyday words, explain every idea "
        "with familiar things such as toys, pets, snacks or the playground, and avoid technical terms, formulas "
        "and jargon entirely."
    ),
    "high_school": (
        "for high school students. Use relatable examples, define each new term the first time it appears, "
        "show one worked example, and keep the mathematics at high-school level."
    ),
    "college": (
        "for college students. Be rigorous and precise, develop each concept in depth before moving on, use the "
        "correct terminology, and include worked examples, derivations or short proofs where they help."
    ),
    "researchers": (
        "for researchers and professionals in the field. Assume expert background, use technical vocabulary "
        "without definitions, discuss subtleties, open questions and the state of current work critically."
    ),
}

FORMATS = {
    "textbook_academic": (
        "a textbook course unit",
        "Write in an academic, professional tone. Cover the concepts thoroughly rather than listing them, and "
        "make the text applicable with specific, practical examples (calculations, dates, code or experiments).",
    ),
    "textbook_narrative": (
        "a textbook section written as a narrative",
        "Explain the ideas through an engaging narrative arc that follows a question from puzzle to "
        "understanding, while staying accurate and teaching the concepts step by step.",
    ),
    "blog_post": (
        "an engaging blog post",
        "Write in a lively, conversational voice with concrete examples and practical takeaways, as an expert "
        "who enjoys explaining the subject.",
    ),
    "wikihow": (
        "a wikiHow-style how-to article",
        "Give numbered steps; for each step explain what to do, how, and why it matters, and add key tips and "
        "common mistakes to avoid.",
    ),
    "story": (
        "a short story",
        "Teach the ideas through characters, dialogue and events in which the knowledge matters to the plot; "
        "the lesson should come out of what happens, not from a lecture.",
    ),
}

ANTI_BOILERPLATE = (
    'Do not start with "Once upon a time", "Have you ever...", "Imagine" or a greeting, do not add a title, '
    "an introduction or a table of contents, and do not use images. Begin directly with the content."
)


FOCUS = {
    # Cosmopedia limited half of its extract prompts to the extract's own topic, to keep them on the seed.
    False: "going beyond it to teach the underlying ideas",
    True: "staying strictly within the topic of the extract and not drifting to neighbouring subjects",
}


def _subject(seed: dict, what: str, extract_chars: int, focused: bool = False) -> str:
    topic = seed.get("topic", "").strip()
    if seed.get("extract"):
        extract = seed["extract"].strip()[:extract_chars]
        source = f'a document about "{topic}"' if topic else "a web page or code file"
        return (
            f'Here is an extract from {source}:\n\n"""\n{extract}\n"""\n\n'
            f"Write {what} related to this extract, {FOCUS[focused]}"
        )
    if seed.get("outline"):
        outline = seed["outline"].strip()
        return f'Here is the outline of a course on "{topic}":\n\n{outline}\n\nWrite {what} covering this outline'
    return f'Write {what} about "{topic}"'


def build_prompt(
    seed: dict,
    audience: str,
    fmt: str,
    extract_chars: int = 1000,
    focused: bool = False,
    persona: str | None = None,
) -> str:
    what, style = FORMATS[fmt]
    reader = (
        f" The reader is {persona}: draw the examples and situations from their world." if persona else ""
    )
    return f"{_subject(seed, what, extract_chars, focused)} {AUDIENCES[audience]}{reader}\n\n{style}\n\n{ANTI_BOILERPLATE}"


def space(
    seeds: list[dict],
    extracts: ExtractStore,
    audiences: list[str],
    formats: list[str],
    extract_chars: int = 1000,
    personas: list[str] | None = None,
) -> Space:
    """Topic/outline seeds x audiences x formats [x (no persona + `personas`)], then extract seeds x audiences x
    formats x {open, focused}. Personas (PersonaHub, Ge et al. 2024) only cross the topic/outline seeds: a
    persona's dozen words against a 1000-character extract would make near-identical prompts."""
    seeds = dedupe_seeds([s for s in seeds if not s.get("extract")])

    def record(seed: dict, audience: int, fmt: int, focused: bool, persona: str | None = None) -> dict:
        kind = "extract" if seed.get("extract") else "outline" if seed.get("outline") else "topic"
        a, f = audiences[audience], formats[fmt]
        return {
            "method": "cosmopedia",
            "messages": chat(build_prompt(seed, a, f, extract_chars, focused, persona)),
            "topic": seed.get("topic", ""),
            "audience": a,
            "format": f,
            "seed_kind": kind,
            **({"focused": focused} if kind == "extract" else {}),
            **({"persona": persona} if persona else {}),
        }

    cells = (len(audiences), len(formats))
    readers = [None, *dict.fromkeys(personas or [])]  # the plain prompt stays one of the cells
    topical = (
        Part(
            (len(seeds), *cells, len(readers)),
            lambda d: record(seeds[d[0]], d[1], d[2], False, readers[d[3]]),
        )
        if personas
        else Part((len(seeds), *cells), lambda d: record(seeds[d[0]], d[1], d[2], False))
    )
    return Space(
        [
            topical,
            Part((len(extracts), *cells, 2), lambda d: record(extracts[d[0]], d[1], d[2], bool(d[3]))),
        ]
    )


def dedupe_seeds(seeds: list[dict]) -> list[dict]:
    """Topic/outline seeds with repeats (case-insensitive topic + outline) removed, first occurrence kept."""
    unique, seen = [], set()
    for s in seeds:
        key = (s.get("topic", "").strip().lower(), s.get("outline") or "")
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


def load_seeds(path: str | Path | None, extracts: ExtractStore) -> list[dict]:
    """Seeds from a .txt topic list or a JSONL of {topic?, extract | text?, outline?} (e.g. the topics stage).

    Extract seeds are streamed into `extracts` (on disk); the topic/outline seeds are returned.
    """
    path = Path(path or DEFAULT_TOPICS)
    if path.suffix == ".txt":
        return [{"topic": topic} for topic in read_lines(path)]
    seeds, n = [], 0
    for lineno, record in read_jsonl_numbered(path):
        topic, extract, outline = (
            record.get("topic"),
            record.get("extract", record.get("text")),
            record.get("outline"),
        )
        if not any(isinstance(v, str) and v.strip() for v in (topic, extract)):
            raise StageError(
                f"{path}:{lineno}: a Cosmopedia seed needs a 'topic' or an 'extract' (or 'text') string"
            )
        n += 1
        if extract:
            extracts.add({"extract": extract, "topic": topic or "", "code": False})
        else:
            seeds.append({"topic": topic or "", "outline": outline or ""})
    if not n:
        raise StageError(f"{path}: no seed records")
    return seeds

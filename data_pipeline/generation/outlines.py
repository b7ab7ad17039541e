"""Teacher-expanded outlines and taxonomies: a short list of subjects grown, once, into many prompt seeds.

- Cosmopedia course outlines (Ben Allal et al. 2024: seeds from "curated educational sources" such as course
  outlines, broken into units and sections): the teacher lists `units` units of a course on each subject, then
  `sections` sections of each unit; every (subject, unit) becomes an outline seed {topic, outline} that
  Cosmopedia crosses with its audiences and formats.
- A Python-concept taxonomy for Phi-1 CodeTextbook (Gunasekar et al. 2023, sec. 2.2: diversity from
  constraining topics): the teacher lists `concepts` sub-concepts of each code topic; each becomes a topic
  "<topic>: <concept>", which CodeTextbook crosses with the other topics (pairs), audiences, levels and styles.

Both run through the resumable runner (a killed run keeps its journals, `<output>.*.partial`) and are cached as
a stage output with a manifest: a recipe run builds them once and reuses them while the subjects, teacher and
settings are unchanged.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from data_pipeline.generation.runner import run_prompts
from data_pipeline.teachers.base import Sampling, Teacher
from stagekit.io import read_jsonl_numbered

# "1. Item", "2) Item", "- Item", "* Item", "• Item"; markdown bold and a trailing colon or description cut off.
LIST_ITEM = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*\u2022])\s+(.+?)\s*$")
MAX_ITEM_CHARS = 100  # a longer "item" is a sentence of prose, not a unit or concept name


def parse_list(text: str, limit: int) -> list[str]:
    """Up to `limit` distinct list items of a teacher answer (case-insensitive), in order; prose lines ignored."""
    items, seen = [], set()
    for line in text.splitlines():
        match = LIST_ITEM.match(line)
        if not match:
            continue
        item = match.group(1).replace("**", "").split(":")[0].strip(" .*\"'")
        if 3 <= len(item) <= MAX_ITEM_CHARS and item.lower() not in seen:
            seen.add(item.lower())
            items.append(item)
    return items[:limit]


def unit_prompt(subject: str, units: int) -> str:
    return (
        f'List the {units} units of a university course on "{subject}", in teaching order. Reply with a numbered '
        "list only, one short unit title per line."
    )


def section_prompt(subject: str, unit: str, sections: int) -> str:
    return (
        f'In a university course on "{subject}", list the {sections} sections of the unit "{unit}", in teaching '
        "order. Reply with a numbered list only, one short section title per line."
    )


def concept_prompt(topic: str, concepts: int) -> str:
    return (
        f'List {concepts} distinct Python programming concepts that a textbook chapter on "{topic}" must teach. '
        "Reply with a numbered list only, one concept name of at most six words per line."
    )


def expand(
    prompts: list[str],
    limit: int,
    teacher: Teacher,
    sampling: Sampling,
    *,
    batch_size: int,
    journal: Path,
    desc: str,
) -> list[list[str]]:
    """The teacher's list for each distinct prompt (parsed, at most `limit` items); a failed request gives an empty
    list. `journal` keeps finished answers under ids hashed from the prompt, so a killed run resumes with exactly
    the answers to the prompts it asks again (the stage removes the journals once its output is written)."""
    records = [{"prompt": p} for p in prompts]
    answers, _ = run_prompts(records, teacher, sampling, batch_size=batch_size, journal=journal, desc=desc)
    return [[] if a.get("error") else parse_list(a["completion"], limit) for a in answers]


def course_outlines(
    subjects: list[str],
    units: int,
    sections: int,
    teacher: Teacher,
    sampling: Sampling,
    *,
    batch_size: int,
    journal: Path,
) -> tuple[list[dict], Counter]:
    """Outline seeds {topic: "<subject>: <unit>", subject, unit, outline: numbered sections}; drops per rule.
    `journal`: the path prefix of the two rounds' journals."""
    subjects = list(dict.fromkeys(subjects))
    unit_lists = expand(
        [unit_prompt(s, units) for s in subjects], units, teacher, sampling, batch_size=batch_size,
        journal=journal.with_name(journal.name + ".units.partial"), desc="outline units",
    )  # fmt: skip
    pairs = [(s, u) for s, found in zip(subjects, unit_lists) for u in found]
    section_lists = expand(
        [section_prompt(s, u, sections) for s, u in pairs], sections, teacher, sampling, batch_size=batch_size,
        journal=journal.with_name(journal.name + ".sections.partial"), desc="outline sections",
    )  # fmt: skip
    drops = Counter(subject_without_units=sum(not found for found in unit_lists))
    seeds = []
    for (subject, unit), found in zip(pairs, section_lists):
        if not found:
            drops["unit_without_sections"] += 1
            continue
        outline = "\n".join(f"{i}. {title}" for i, title in enumerate(found, 1))
        seeds.append({"topic": f"{subject}: {unit}", "subject": subject, "unit": unit, "outline": outline})
    return seeds, drops


def concept_taxonomy(
    topics: list[str], concepts: int, teacher: Teacher, sampling: Sampling, *, batch_size: int, journal: Path
) -> tuple[list[dict], Counter]:
    """Taxonomy records {topic: "<topic>: <concept>", parent, concept}; drops per rule."""
    topics = list(dict.fromkeys(topics))
    lists = expand(
        [concept_prompt(t, concepts) for t in topics], concepts, teacher, sampling, batch_size=batch_size,
        journal=journal.with_name(journal.name + ".concepts.partial"), desc="concepts",
    )  # fmt: skip
    records = [
        {"topic": f"{t}: {c}", "parent": t, "concept": c} for t, found in zip(topics, lists) for c in found
    ]
    return records, Counter(topic_without_concepts=sum(not found for found in lists))


def taxonomy_topics(path: str | Path) -> list[str]:
    """The `topic` of every record of a taxonomy JSONL (the taxonomy stage output), in order."""
    return [str(r["topic"]) for _, r in read_jsonl_numbered(path, required=("topic",))]

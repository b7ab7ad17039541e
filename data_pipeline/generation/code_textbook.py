"""Phi-1 CodeTextbook prompts (Gunasekar et al. 2023, "Textbooks Are All You Need", sec. 2.2).

Phi-1 had GPT-3.5 write Python textbook sections that interleave natural-language explanation with
code, and forced diversity by constraining the topic and the target audience of each section.
"""

from __future__ import annotations

from itertools import combinations

from data_pipeline.generation.seeds import ExtractStore
from data_pipeline.generation.sources import chat
from data_pipeline.generation.space import Part, Space

# Phi-1 constrains topic and target audience; these add the "difficulty" and "style" knobs of its
# follow-ups (phi-1.5, Li et al. 2023), each changing what the section must contain, not only a word.
LEVELS = {
    "introductory": "Assume no prior knowledge of the topic and keep every example under ten lines.",
    "intermediate": "Assume the reader knows basic Python syntax; show a realistic example that combines the idea "
    "with functions and data structures.",
    "advanced": "Assume a fluent Python programmer; cover edge cases, performance trade-offs and how the idea is "
    "implemented or used in the standard library.",
}
STYLES = {
    "worked_examples": "Teach mainly through worked examples, each followed by a sentence on what it shows.",
    "socratic": "Pose a question before each example and answer it with the example.",
    "build_up": "Build one small program step by step, extending it after each explanation.",
    "compare": "Contrast a naive solution with a better one and explain the difference.",
}


def subjects(topics: list[str]) -> list[str]:
    """The topics, then every unordered pair of them: Phi-1's combinations of concepts."""
    topics = list(dict.fromkeys(topics))
    return topics + [f"{a}, combined with {b}" for a, b in combinations(topics, 2)]


def build_prompt(
    topic: str, audience: str, level: str = "introductory", style: str = "worked_examples", code: str = ""
) -> str:
    seed = (
        f'Here is code from a Python source file:\n\n"""\n{code}\n"""\n\n'
        f"Write a section of a Python textbook for {audience} that teaches the concepts this code relies on."
        if code
        else f'Write a section of a Python textbook on "{topic}" for {audience}.'
    )
    return (
        f"{seed}\n\n{LEVELS[level]} {STYLES[style]}\n\n"
        "Alternate short explanations with small, self-contained, runnable Python examples in ```python blocks; "
        "every example should print or assert its result, and the text around it should say what it shows and "
        "why it works. Build from the simplest case to a realistic use, and point out one common mistake.\n\n"
        "Do not add a title or an introduction and do not greet the reader: begin directly with the explanation."
    )


def space(
    topics: list[str], audiences: list[str], extracts: ExtractStore, extract_chars: int = 1000
) -> Space:
    """(topics + topic pairs) x audiences x levels x styles, then code extracts x levels x styles.

    An extract is ~200 words against an audience's 2-4, so prompts differing only in audience would be
    near-identical (Jaccard > 0.95): each extract gets one audience, in rotation."""
    names, levels, styles = subjects(topics), list(LEVELS), list(STYLES)

    def record(topic: str, audience: int, level: int, style: int, code: str = "") -> dict:
        a, lv, st = audiences[audience], levels[level], styles[style]
        return {
            "method": "code-textbook",
            "messages": chat(build_prompt(topic, a, lv, st, code[:extract_chars])),
            "topic": topic,
            "audience": a,
            "level": lv,
            "style": st,
            "seed_kind": "extract" if code else "topic",
        }

    def from_extract(d: list[int]) -> dict:
        code = extracts[extracts.code[d[0]]]["extract"]
        return record("", d[0] % len(audiences), d[1], d[2], code=code)

    return Space(
        [
            Part(
                (len(names), len(audiences), len(levels), len(styles)), lambda d: record(names[d[0]], *d[1:])
            ),
            Part((len(extracts.code), len(levels), len(styles)), from_extract),
        ]
    )

"""Phi-1 CodeTextbook prompts (Gunasekar et al. 2023, "Textbooks Are All You Need", sec. 2.2).

Phi-1 had GPT-3.5 write Python textbook sections that interleave natural-language explanation with
code, and forced diversity by constraining the topic and the target audience of each section.
"""

from __future__ import annotations

from data_pipeline.generation.sources import chat, sample_indices


def build_prompt(topic: str, audience: str) -> str:
    return (
        f'Write a section of a Python textbook on "{topic}" for {audience}.\n\n'
        "Alternate short explanations with small, self-contained, runnable Python examples in ```python blocks; "
        "every example should print or assert its result, and the text around it should say what it shows and "
        "why it works. Build from the simplest case to a realistic use, and point out one common mistake.\n\n"
        "Do not add a title or an introduction and do not greet the reader: begin directly with the explanation."
    )


def build(topics: list[str], audiences: list[str], num_prompts: int, seed: int) -> list[dict]:
    """`num_prompts` distinct (topic, audience) prompts sampled from the cross product, fixed by `seed`."""
    topics = list(dict.fromkeys(topics))
    records = []
    for index in sample_indices(len(topics) * len(audiences), num_prompts, seed):
        topic, audience = topics[index // len(audiences)], audiences[index % len(audiences)]
        records.append(
            {
                "method": "code-textbook",
                "messages": chat(build_prompt(topic, audience)),
                "topic": topic,
                "audience": audience,
            }
        )
    return records

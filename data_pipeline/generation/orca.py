"""Orca explanation tuning (Mukherjee et al. 2023, "Orca: Progressive Learning from Complex Explanation
Traces of GPT-4", sec. 3.1).

Orca pairs each user query with one of 16 system messages that ask the teacher to explain its
reasoning (step by step, as to a child, justify each step, ...) and trains on the resulting
(system, user, response) triples. The messages below are written for this repo in that spirit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from data_pipeline.generation.sources import chat
from data_pipeline.generation.space import Part, Space
from stagekit.io import StageError, read_jsonl_numbered

SYSTEM_MESSAGES = [
    "",  # Orca also keeps some queries without a system message
    "You are a helpful assistant. Answer thoroughly enough that the reader needs no other source.",
    "You are a patient tutor. Work through the problem step by step and explain why each step follows.",
    "You are a teacher talking to a ten-year-old. Explain the answer with simple words and a familiar example.",
    "Think the task through carefully before answering: first restate what is asked, then reason, then answer.",
    "You are an expert who justifies every claim. After the answer, explain the evidence or rule behind it.",
    "When the task offers options, say which one is correct and explain why each of the others is wrong.",
    "Break the task into smaller parts, solve each part, and show how the parts combine into the answer.",
    "You are a careful assistant. Give the answer first in one sentence, then a detailed explanation.",
    "Explain your reasoning as a numbered list of steps, each one short and checkable.",
    "You are a science communicator. Explain the idea behind the answer, not only the answer itself.",
    "Answer faithfully to the given instruction; if something is ambiguous, state your assumption and why.",
    "You are a code reviewer. When code is involved, explain what it does line by line before concluding.",
    "Solve the task, then double-check the result by a different route and say whether both agree.",
    "You are a mentor. Explain the answer and add one tip that helps with similar tasks in the future.",
    "Describe how you would approach the task as an expert would, then carry out that approach in detail.",
]


def query_text(record: dict) -> list[str]:
    """User messages of one query record: `prompt`, or `instruction` with each instance input (or none)."""
    if isinstance(record.get("prompt"), str):
        return [record["prompt"]]
    inputs = [i.get("input", "") for i in record.get("instances") or []] or [record.get("input", "")]
    return [record["instruction"] + (f"\n\n{inp}" if inp else "") for inp in inputs]


def load_queries(path: str | Path) -> list[str]:
    queries = []
    for lineno, record in read_jsonl_numbered(path):
        if not isinstance(record.get("prompt"), str) and not isinstance(record.get("instruction"), str):
            raise StageError(f"{path}:{lineno}: a query needs a 'prompt' or an 'instruction' string")
        queries.extend(query_text(record))
    if not queries:
        raise StageError(f"{path}: no queries")
    return list(dict.fromkeys(queries))


def space(queries: list[str], system_messages: list[str] | None = None) -> Space:
    """Every (query, system message) pair."""
    systems = system_messages or SYSTEM_MESSAGES

    def record(d: list[int]) -> dict:
        user, s = queries[d[0]], d[1]
        return {
            "method": "orca",
            "messages": chat(user, systems[s] or None),
            "system": systems[s],
            "user": user,
            "system_index": s,
        }

    return Space([Part((len(queries), len(systems)), record)])


def render_prompt(system: str, user: str) -> str:
    """Orca's training text up to the response: the system message (when any), then the user query."""
    head = f"### System:\n{system}\n\n" if system else ""
    return f"{head}### User:\n{user}\n\n### Assistant:\n"


def explanation_records(generations: Iterable[dict], drops: Counter) -> Iterator[dict]:
    """(system, user, response) triples with their `text`, streamed; failed or empty ones count in `drops`."""
    for r in generations:
        response = (r.get("completion") or "").strip()
        if r.get("error") or not response:
            drops["generation_error" if r.get("error") else "empty"] += 1
            continue
        prompt = render_prompt(r["system"], r["user"])
        yield {
            "id": r["id"],
            "method": "orca",
            "text": prompt + response,  # a mixture's mask_prompt trains on the response only
            "prompt": prompt,
            "system": r["system"],
            "user": r["user"],
            "response": response,
        }

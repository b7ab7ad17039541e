"""Phi-1 CodeExercises (Gunasekar et al. 2023, "Textbooks Are All You Need", sec. 2.2).

Each exercise is a Python function: signature and docstring (the prompt) followed by its body (the
solution), the HumanEval layout that Phi-1 finetunes on. Diversity is forced by giving every prompt
its own function name and topic. Completions are parsed back into (prompt, solution) pairs; a pair
is kept only if the code parses (`ast.parse`), has a docstring and a non-trivial body.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator

from data_pipeline.generation import code_textbook
from data_pipeline.generation.sources import chat
from data_pipeline.generation.space import Part, Space

VERBS = [
    "count", "find", "merge", "split", "sort", "filter", "group", "rotate", "flatten", "compress", "validate",
    "normalize", "parse", "encode", "decode", "summarize", "rank", "match", "reverse", "partition", "sum",
    "schedule", "simulate", "convert", "detect", "balance", "cluster", "dedupe", "diff", "estimate", "evaluate",
    "format", "index", "interleave", "invert", "label", "locate", "measure", "pack", "pair", "prune", "render",
    "resample", "score", "select", "shift", "tokenize", "trace", "transpose", "unpack",
]  # fmt: skip
NOUNS = [
    "intervals", "words", "digits", "pairs", "primes", "matrix", "brackets", "scores", "dates", "tokens",
    "anagrams", "paths", "coins", "ranges", "duplicates", "vowels", "peaks", "runs", "fractions", "grid",
    "palindromes", "tasks", "temperatures", "grades", "inventory", "accounts", "bits", "cells", "chunks",
    "columns", "commands", "coordinates", "cycles", "deadlines", "edges", "emails", "events", "filenames",
    "flights", "headers", "histogram", "hours", "invoices", "keys", "layers", "lines", "logs", "measurements",
    "messages", "moves", "nodes", "orders", "passwords", "permutations", "points", "polygons", "prices",
    "queues", "records", "routes", "rows", "segments", "sentences", "sequences", "sets", "shapes", "signals",
    "slots", "stacks", "students", "subarrays", "timestamps", "transactions", "trees", "triangles", "urls",
    "users", "versions", "votes", "weights",
]  # fmt: skip
LEVELS = {
    "easy": "It needs one loop or one comprehension.",
    "medium": "It needs a helper data structure such as a dict, a set or a heap.",
    "hard": "It needs an algorithmic idea such as recursion, dynamic programming or two pointers.",
}


def build_prompt(topic: str, name: str, level: str = "easy") -> str:
    return (
        f"Write a short Python exercise about {topic}. It is one function named `{name}` with type hints. "
        f"{LEVELS[level]} Its docstring states the task precisely and shows one example call with the expected "
        "result; the body then solves it using only the standard library.\n\n"
        "Reply with only the code, in a single ```python block."
    )


def space(topics: list[str]) -> Space:
    """function names (verb_noun) x (topics + topic pairs) x difficulty levels."""
    names = [f"{v}_{n}" for v in VERBS for n in NOUNS]
    subjects, levels = code_textbook.subjects(topics), list(LEVELS)

    def record(d: list[int]) -> dict:
        name, topic, level = names[d[0]], subjects[d[1]], levels[d[2]]
        return {
            "method": "code-exercises",
            "messages": chat(build_prompt(topic, name, level)),
            "topic": topic,
            "level": level,
            "entry_point": name,
        }

    return Space([Part((len(names), len(subjects), len(levels)), record)])


FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(```|\Z)", re.S)


class Rejected(ValueError):
    """A completion that does not yield an exercise; `args[0]` is the drop rule."""


def extract_code(text: str, truncated: bool = False) -> str:
    """The first fenced block defining a function, else bare code; only statements known to be complete.

    A block cut off by max_new_tokens (unclosed fence, or bare code of a truncated completion) keeps its
    longest parsable prefix, minus its last top-level statement unless a later line shows it had ended.
    """
    blocks = [(code, bool(closing)) for code, closing in FENCE.findall(text) if "def " in code]
    if blocks:
        code, complete = blocks[0]
    elif text.lstrip().startswith(("def ", "import ", "from ")):
        code, complete = text, not truncated
    else:
        raise Rejected("no_code")
    if complete:
        return code
    lines = code.splitlines(keepends=True)
    for end in range(len(lines), 0, -1):
        try:
            tree = ast.parse("".join(lines[:end]))
        except SyntaxError:
            continue
        if not tree.body:
            break
        # The last statement is complete only if a later line starts a new top-level statement.
        closed = any(line.strip() and not line[0].isspace() for line in lines[tree.body[-1].end_lineno :])
        keep = tree.body if closed else tree.body[:-1]
        if keep:
            return "".join(lines[: keep[-1].end_lineno])
        break
    raise Rejected("truncated")


def split_exercise(code: str, entry_point: str | None = None) -> tuple[str, str, str]:
    """(prompt, solution, function name): imports + signature + docstring, then the body."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise Rejected("syntax_error") from e
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    if not funcs:
        raise Rejected("no_function")
    func = next((f for f in funcs if f.name == entry_point), funcs[0])
    if ast.get_docstring(func) is None:
        raise Rejected("no_docstring")
    body = func.body[1:]
    trivial = all(
        isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
        for s in body
    )
    if trivial:
        raise Rejected("empty_body")
    lines = code.splitlines(keepends=True)
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom) and n.lineno < func.lineno]
    header = "".join("".join(lines[n.lineno - 1 : n.end_lineno]) for n in imports)
    start = min([func.lineno] + [d.lineno for d in func.decorator_list]) - 1
    prompt = (header + "\n\n" if header else "") + "".join(lines[start : func.body[0].end_lineno])
    solution = "".join(lines[func.body[0].end_lineno : func.end_lineno])
    prompt, solution = prompt if prompt.endswith("\n") else prompt + "\n", solution.rstrip() + "\n"
    try:
        ast.parse(prompt + solution)
    except SyntaxError as e:  # e.g. a body that only parsed thanks to lines outside the function
        raise Rejected("syntax_error") from e
    return prompt, solution, func.name


def parse_generations(records: Iterable[dict], drops: Counter) -> Iterator[dict]:
    """CodeExercises generation records -> exercise records {id, text, prompt, solution, entry_point, ...}, streamed;
    each rejected record counts in `drops` under its rule. Repeats are found by an 8-byte digest per exercise."""
    seen: set[bytes] = set()
    for r in records:
        try:
            if r.get("error"):
                raise Rejected("generation_error")
            code = extract_code(r["completion"], truncated=r.get("finish_reason") == "length")
            prompt, solution, name = split_exercise(code, r.get("entry_point"))
        except Rejected as e:
            drops[e.args[0]] += 1
            continue
        text = prompt + solution
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        if digest in seen:
            drops["duplicate"] += 1
            continue
        seen.add(digest)
        yield {
            "id": r["id"],
            "text": text,
            "prompt": prompt,
            "solution": solution,
            "entry_point": name,
            "topic": r.get("topic"),
            "method": "code-exercises",
            "teacher": r.get("teacher"),
        }

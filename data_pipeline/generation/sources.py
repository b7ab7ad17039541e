"""Seed files and the deterministic sampling every prompt builder shares."""

from __future__ import annotations

import random
from pathlib import Path

from data_pipeline.teachers.base import Messages
from stagekit.io import StageError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_TOPICS = PACKAGE_DIR / "data" / "topics.txt"
DEFAULT_CODE_TOPICS = PACKAGE_DIR / "data" / "code_topics.txt"
DEFAULT_PERSONAS = PACKAGE_DIR / "data" / "personas.txt"
DEFAULT_SEED_TASKS = PACKAGE_DIR / "seed_tasks.jsonl"


def read_lines(path: str | Path) -> list[str]:
    """Non-empty, non-comment lines of a text file (a topic list)."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: topics file not found")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    topics = [line for line in lines if line and not line.startswith("#")]
    if not topics:
        raise StageError(f"{path}: no topics in file (one per line expected)")
    return topics


def sample_indices(total: int, k: int, seed: int) -> list[int]:
    """k distinct indices of range(total) (all of them when k >= total), sorted, fixed by the seed."""
    return sorted(random.Random(seed).sample(range(total), min(k, total)))


def chat(user: str, system: str | None = None) -> Messages:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]

"""What every curation stage shares: recipe paths, the freshness check, and writing a filtered output
(one JSONL file, or a directory of JSONL shards, see corpus.py)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from data_pipeline.curation.corpus import OutputShards
from recipes import Recipe
from stagekit.cli import data_dir
from stagekit.io import StageError, is_fresh, read_manifest, write_manifest


def data_path(recipe: Recipe, path: str | Path) -> Path:
    """A recipe path: absolute as is, else relative to runs/<name>/data/."""
    path = Path(path)
    return path if path.is_absolute() else data_dir(recipe) / path


def curation_dir(recipe: Recipe) -> Path:
    return data_dir(recipe) / "curation"


def fresh(
    output: Path, *, stage: str, version: str, params: dict, inputs: list[Path], force: bool
) -> dict | None:
    """The existing manifest when `output` is up to date (and not forced), else None."""
    for p in inputs:
        if not Path(p).exists():
            raise StageError(f"{p}: input not found (stage {stage})")
    if not force and is_fresh(output, stage=stage, version=version, params=params, inputs=inputs):
        print(f"[{stage}] {output} is up to date (manifest matches); skipping", file=sys.stderr)
        return read_manifest(output)
    return None


class FilterWriter:
    """Writes kept records atomically (to a JSONL file, or a directory with one JSONL per shard of `input`)
    and counts drops per rule; keeping nothing is an error."""

    def __init__(self, stage: str, output: Path, started: float, input: Path):
        self.stage, self.output, self.started, self.input = stage, Path(output), started, input
        self.kept = 0
        self.seen = 0
        self.drops: Counter[str] = Counter()

    def write(self, decisions: Iterable[tuple[int, dict, str | None]]) -> None:
        """`decisions` yields (input shard index, record, rule that dropped it or None to keep)."""
        with OutputShards(self.output, self.input) as out:
            for shard, record, rule in decisions:
                self.seen += 1
                if rule is None:
                    out.file(shard).write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
                    self.kept += 1
                else:
                    self.drops[rule] += 1
            if self.seen == 0:
                raise StageError(f"[{self.stage}] the input is empty; nothing to write to {self.output}")
            if self.kept == 0:
                rules = ", ".join(f"{k}={v}" for k, v in self.drops.most_common())
                raise StageError(
                    f"[{self.stage}] every one of {self.seen} documents was dropped ({rules}); refusing to write an empty {self.output}"
                )

    def manifest(self, *, version: str, params: dict, inputs: list[Path], extra: dict | None = None) -> dict:
        return write_manifest(
            self.output,
            stage=self.stage,
            version=version,
            params=params,
            inputs=inputs,
            counts={"in": self.seen, "out": self.kept, "dropped": self.seen - self.kept},
            drops=dict(sorted(self.drops.items())),
            started=self.started,
            extra=extra,
        )

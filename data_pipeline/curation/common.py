"""What every curation stage shares: recipe paths, the freshness check, and writing a filtered output
(one JSONL file, or a directory of JSONL shards, see corpus.py)."""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from data_pipeline.curation.corpus import OutputShards
from data_pipeline.curation.executor import FilterWorker, filter_line, read_part, run_parts
from recipes import Recipe
from recipes.curation import ExecutorConfig
from stagekit.cli import data_dir
from stagekit.io import StageError, is_fresh, read_manifest, write_manifest


def data_path(recipe: Recipe, path: str | Path) -> Path:
    """A recipe path: absolute as is, else relative to runs/<name>/data/."""
    path = Path(path)
    return path if path.is_absolute() else data_dir(recipe) / path


def curation_dir(recipe: Recipe) -> Path:
    return data_dir(recipe) / "curation"


def work_dir(output: Path) -> Path:
    """Where a stage keeps its datatrove parts and logs: `_datatrove/<output stem>/` beside its output."""
    return Path(output).parent / "_datatrove" / Path(output).stem


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

    def run(
        self,
        worker: FilterWorker,
        executor: ExecutorConfig,
        *,
        resume: Callable[[], Any],
        batch_size: int = 64,
        observe: Callable[[Any, str | None], None] | None = None,
    ) -> None:
        """Filter the input with `worker` as datatrove tasks (inline: one task in this process). Each task
        writes the records it keeps; the driver reads only the results (`observe(result, rule)` sees each
        one and its verdict, in input order, for the stage's report) and assembles the output from the
        tasks' kept files."""
        parts = run_parts(self.input, worker, executor, work_dir(self.output), batch_size, ("text",), resume)
        for part in parts:
            for result in read_part(part / "results.jsonl"):
                rule = worker.verdict(result)
                if observe is not None:
                    observe(result, rule)
                self._count(rule)
        self._check()
        with OutputShards(self.output, self.input) as out:
            for shard in range(len(out.names) if out.directory else 1):
                for part in parts:  # tasks hold contiguous ranges: rank order is input order
                    if (piece := part / "kept" / f"{shard:05d}.jsonl").exists():
                        out.add_piece(shard, piece)
        shutil.rmtree(parts[0].parent)  # the kept files now live in the output; datatrove's logs stay
        with contextlib.suppress(OSError):
            parts[0].parent.parent.rmdir()  # inline runs leave no logs: no empty work directory either

    def write(self, decisions: Iterable[tuple[int, dict, str | None]]) -> None:
        """`decisions` yields (input shard index, record, rule that dropped it or None to keep)."""
        with OutputShards(self.output, self.input) as out:
            for shard, record, rule in decisions:
                if self._count(rule):
                    out.file(shard).write(filter_line(record))
            self._check()

    def _count(self, rule: str | None) -> bool:
        self.seen += 1
        if rule is None:
            self.kept += 1
        else:
            self.drops[rule] += 1
        return rule is None

    def _check(self) -> None:
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

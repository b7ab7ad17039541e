"""Per-document work, run inline or spread over datatrove executors (local multiprocess or Slurm).

A stage describes its per-document work as a `DocumentWorker` (a dataclass of plain parameters whose
`setup` loads heavy state once per process and whose `process` maps a batch of records to JSON-able
results). `run_parts` runs it as datatrove tasks (inline: one task in this process): task `rank` reads only
its own share of the input (a byte range of a JSONL file, or its own files of a directory of shards:
`corpus.task_records`, so reading costs N records in total, not tasks x N) and writes its part atomically,
by default one result line per record (`parts/<rank>.jsonl`); concatenated in rank order the parts are in
input order. Parts are keyed by the input's hash and the worker's parameters (`parts/spec.json`); a re-run
reuses the finished tasks (datatrove's completion markers) and runs only the ones that failed or were
killed, whose part was never renamed into place. A worker may write another kind of part (`write_part`:
the tokenizer writes a token shard directory per task). A `FilterWorker`'s task also writes the records it
keeps, so a filter stage's output is assembled from the tasks' files and its driver reads only the small
results (`common.FilterWriter.run`).

On Slurm the driver cannot wait: it submits the map job and a dependent one-task job that re-runs the
whole stage (`resume`), which finds the finished parts and writes the output; the driver raises
`Submitted`. This is how FineWeb/Cosmopedia scale datatrove pipelines; we only add the ordered merge.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

from datatrove.pipeline.base import PipelineStep
from tqdm import tqdm

from data_pipeline.curation.corpus import task_records
from recipes.curation import ExecutorConfig
from stagekit.io import StageError, atomic_path, fingerprint, write_json

FINISH_ONLY_ENV = "TEXTBOOKS_CURATION_FINISH_ONLY"
PARTS_FORMAT = 2  # 2: one result per line, tasks own byte ranges (1: {"i", "r"} lines, strided records)


class Submitted(StageError):
    """The stage was handed to Slurm; a dependent job writes the output (not a failure)."""


class DocumentWorker(abc.ABC):
    """Per-document work; subclasses are dataclasses of plain (picklable, JSON-able) parameters."""

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load heavy state (models, indexes) once per process."""

    def ready(self) -> DocumentWorker:
        """Run `setup` once per process (the driver may have needed the state already)."""
        if not self.__dict__.get("_ready"):
            self.setup()
            self._ready = True
        return self

    def __getstate__(self) -> dict:
        # Heavy state (underscored attributes) is rebuilt by `setup` in each task, never pickled to it.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    @abc.abstractmethod
    def process(self, records: list[dict]) -> list[Any]:
        """One JSON-serializable result per record, in order."""

    part_suffix = ".jsonl"  # "" for a worker whose part is a directory

    def write_part(self, tmp: Path, batches: Iterator[Batch]) -> None:
        """Write one task's results (batch by batch) to `tmp`, renamed to its part when this returns."""
        with open(tmp, "w", encoding="utf-8") as f:
            for batch in batches:
                f.writelines(json.dumps(result, ensure_ascii=False) + "\n" for result in batch.results)

    def fingerprint(self) -> dict:
        params = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        return json.loads(json.dumps({"worker": type(self).__qualname__, "params": params}, default=str))


class FilterWorker(DocumentWorker):
    """A worker whose result decides whether its record is kept. Each task writes the records it keeps
    itself (`kept/<input shard>.jsonl` beside `results.jsonl` in its part directory), so a stage's output
    is assembled from the tasks' files without the driver reading the corpus again (`FilterWriter.run`)."""

    part_suffix = ""

    def verdict(self, result: Any) -> str | None:
        """The rule that drops the record with this result, or None to keep it (default: the result)."""
        return result

    def write_part(self, tmp: Path, batches: Iterator[Batch]) -> None:
        (tmp / "kept").mkdir(parents=True)
        kept: dict[int, BinaryIO] = {}
        try:
            with open(tmp / "results.jsonl", "w", encoding="utf-8") as out:
                for batch in batches:
                    for (shard, record), result in zip(batch.records, batch.results):
                        out.write(json.dumps(result, ensure_ascii=False) + "\n")
                        if self.verdict(result) is None:
                            if shard not in kept:
                                kept[shard] = open(tmp / "kept" / f"{shard:05d}.jsonl", "wb")
                            kept[shard].write(filter_line(record))
        finally:
            for f in kept.values():
                f.close()


def filter_line(record: dict) -> bytes:
    """How a kept record is written to a filtered output (every path writes it the same way)."""
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


@dataclasses.dataclass
class Batch:
    """One batch of a task: its (input shard, record) pairs and the worker's result for each."""

    records: list[tuple[int, dict]]
    results: list[Any]


def batched(iterable, n: int) -> Iterator[list]:
    it = iter(iterable)
    while batch := list(islice(it, n)):
        yield batch


def read_part(path: Path) -> Iterator[Any]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def run_parts(
    path: str | Path,
    worker: DocumentWorker,
    executor: ExecutorConfig,
    work_dir: Path,
    batch_size: int,
    required: tuple[str, ...],
    resume: Callable[[], Any] | None,
) -> list[Path]:
    """Every task's finished part (`parts/<rank>` + the worker's part_suffix), in rank order; the tasks
    whose part is missing run first (inline: one task, in this process)."""
    if executor.logging_dir:  # one shared root (e.g. on a cluster filesystem): a subfolder per stage output
        tag = hashlib.sha256(str(Path(work_dir).resolve()).encode()).hexdigest()[:10]
        work_dir = Path(executor.logging_dir) / f"{Path(work_dir).name}-{tag}"
    parts_dir = Path(work_dir) / "parts"
    tasks = 1 if executor.kind == "inline" else executor.tasks
    spec = {
        "parts_format": PARTS_FORMAT,
        "input": str(path),
        "input_sha256": fingerprint(path),
        "tasks": tasks,
        **worker.fingerprint(),
    }
    names = [parts_dir / f"{rank:05d}{worker.part_suffix}" for rank in range(tasks)]
    spec_path = parts_dir / "spec.json"
    same = spec_path.is_file() and json.loads(spec_path.read_text(encoding="utf-8")) == spec
    if not (same and all(p.exists() for p in names)):
        if same and os.environ.get(FINISH_ONLY_ENV):  # the Slurm map job ran but some tasks failed
            missing = [p.name for p in names if not p.exists()]
            raise StageError(
                f"{parts_dir}: datatrove tasks did not finish (missing {missing}); see {parts_dir.parent}/logs"
            )
        if not same:  # other input or parameters: nothing here is reusable, completion markers included
            for stale in (parts_dir, parts_dir.parent / "logs"):
                if stale.exists():
                    shutil.rmtree(stale)
            parts_dir.mkdir(parents=True)
            write_json(spec_path, spec)
        for rank, part in enumerate(names):  # a task whose part is gone must run again
            if not part.exists():
                (parts_dir.parent / "logs" / "completions" / f"{rank:05d}").unlink(missing_ok=True)
        for leftover in parts_dir.glob(".*.tmp"):  # temporary files (or directories) of killed tasks
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        _run_map(
            MapStep(str(path), worker, str(parts_dir), batch_size, required),
            executor,
            parts_dir.parent,
            resume,
        )
        missing = [p.name for p in names if not p.exists()]
        if missing:
            raise StageError(
                f"{parts_dir}: datatrove tasks failed (missing {missing}); see {parts_dir.parent}/logs"
            )
    return names


def _run_map(step: MapStep, executor: ExecutorConfig, root: Path, resume: Callable[[], Any] | None) -> None:
    if executor.kind == "inline":
        step.run(rank=0, world_size=1)
        return
    if executor.kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        LocalPipelineExecutor(
            pipeline=[step],
            tasks=executor.tasks,
            workers=executor.workers,
            logging_dir=str(root / "logs"),
            skip_completed=True,  # a re-run redoes only the tasks that did not finish
        ).run()
        return
    from datatrove.executor import SlurmPipelineExecutor

    if resume is None:
        raise StageError("executor.kind=slurm needs a stage that can resume in a dependent job")
    common = slurm_options(executor)
    mapper = SlurmPipelineExecutor(
        pipeline=[step],
        tasks=executor.tasks,
        job_name=f"map-{step.name}",
        logging_dir=str(root / "logs"),
        skip_completed=True,
        **common,
    )
    finisher = SlurmPipelineExecutor(
        pipeline=[FinishStage(resume)],
        tasks=1,
        depends=mapper,
        job_name=f"finish-{step.name}",
        logging_dir=str(root / "finish-logs"),
        skip_completed=False,
        **common,
    )
    finisher.run()  # launches its dependency first
    raise Submitted(
        f"submitted Slurm jobs for {step.input}; the dependent job writes the output (logs: {root})"
    )


class MapStep(PipelineStep):
    """datatrove step: this task's share of the input through the worker, into its part."""

    type = "🧮 - MAP"

    def __init__(
        self, input: str, worker: DocumentWorker, parts_dir: str, batch_size: int, required: tuple[str, ...]
    ):
        super().__init__()
        self.name = type(worker).__name__
        self.input, self.worker, self.parts_dir = input, worker, parts_dir
        self.batch_size, self.required = batch_size, required

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        self.worker.ready()
        mine = task_records(self.input, rank, world_size, self.required)
        with atomic_path(Path(self.parts_dir) / f"{rank:05d}{self.worker.part_suffix}") as tmp:
            self.worker.write_part(tmp, self._batches(mine))
        return None

    def _batches(self, records: Iterator[tuple[int, dict]]) -> Iterator[Batch]:
        with tqdm(desc=self.name, unit="doc", dynamic_ncols=True) as bar:
            for batch in batched(records, self.batch_size):
                with self.track_time(unit="batch"):
                    results = self.worker.process([r for _, r in batch])
                self.stat_update("documents", value=len(batch))
                bar.update(len(batch))
                yield Batch(batch, results)


class FinishStage(PipelineStep):
    """datatrove step for the dependent Slurm job: re-run the stage, which now finds its parts complete."""

    name = "finish stage"
    type = "🏁 - FINISH"

    def __init__(self, resume: Callable[[], Any]):
        super().__init__()
        self.resume = resume

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        os.environ[FINISH_ONLY_ENV] = "1"
        self.resume()
        return None


def slurm_options(executor: ExecutorConfig) -> dict:
    """The SlurmPipelineExecutor arguments every curation job shares, from `data.curation.executor.slurm_*`."""
    return {
        "time": executor.slurm_time,
        "partition": executor.slurm_partition,
        "cpus_per_task": executor.slurm_cpus_per_task,
        "mem_per_cpu_gb": executor.slurm_mem_per_cpu_gb,
        "venv_path": executor.slurm_venv_path or None,
        "sbatch_args": dict(executor.slurm_sbatch_args),
    }

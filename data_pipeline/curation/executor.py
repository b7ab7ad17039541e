"""Per-document work, run inline or spread over datatrove executors (local multiprocess or Slurm).

A stage describes its per-document work as a `DocumentWorker` (a dataclass of plain parameters whose
`setup` loads heavy state once per process and whose `process` maps a batch of records to JSON-able
results). `map_documents` yields `(record, result)` in input order whichever way it ran:

- inline: this process, batch by batch;
- local / slurm: datatrove tasks; task `rank` reads only its own contiguous byte range of the input
  (split at line boundaries, so reading costs N records in total, not tasks x N) and writes its results,
  one JSON line per record, to `parts/<rank>.jsonl` atomically. Concatenated in rank order the parts are
  in input order, so the driver streams the input beside them (no per-document state) and the output is
  byte-identical to the inline run. Parts are keyed by the input's sha256 and the worker's parameters
  (`parts/spec.json`); a re-run reuses the finished tasks (datatrove's completion markers) and runs only
  the ones that failed or were killed, whose part was never renamed into place.

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
from itertools import chain, islice
from pathlib import Path
from typing import Any

from datatrove.pipeline.base import PipelineStep
from tqdm import tqdm

from recipes.curation import ExecutorConfig
from stagekit.io import StageError, atomic_path, read_jsonl, read_jsonl_numbered, sha256_file, write_json

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

    def fingerprint(self) -> dict:
        params = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        return json.loads(json.dumps({"worker": type(self).__qualname__, "params": params}, default=str))


def batched(iterable, n: int) -> Iterator[list]:
    it = iter(iterable)
    while batch := list(islice(it, n)):
        yield batch


def map_documents(
    path: str | Path,
    worker: DocumentWorker,
    executor: ExecutorConfig,
    *,
    work_dir: Path,
    batch_size: int = 64,
    desc: str = "",
    required: tuple[str, ...] = ("text",),
    resume: Callable[[], Any] | None = None,
) -> Iterator[tuple[dict, Any]]:
    """Yield (record, worker result) for every record of the JSONL `path`, in input order."""
    path = Path(path)
    records = read_jsonl(path, required)
    if executor.kind == "inline":
        worker.ready()
        with tqdm(desc=desc or type(worker).__name__, unit="doc", dynamic_ncols=True) as bar:
            for batch in batched(records, batch_size):
                results = worker.process(batch)
                yield from zip(batch, results)
                bar.update(len(batch))
        return
    parts = _datatrove_parts(path, worker, executor, work_dir, batch_size, required, resume)
    results = chain.from_iterable(parts)
    missing = object()
    for i, record in enumerate(records):
        result = next(results, missing)
        if result is missing:
            raise StageError(f"{work_dir}: datatrove parts end before record {i} of {path}")
        yield record, result
    if next(results, missing) is not missing:
        raise StageError(f"{work_dir}: datatrove parts hold more results than {path} has records")


def _read_part(path: Path) -> Iterator[Any]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def byte_range(path: Path, rank: int, world_size: int) -> tuple[int, int]:
    """Task `rank`'s share of the file: [start, end) cut at the first line start after each even split."""
    size = path.stat().st_size

    def cut(k: int) -> int:
        target = size * k // world_size
        if target == 0 or k >= world_size:
            return target
        with open(path, "rb") as f:
            f.seek(target - 1)
            f.readline()  # a line running over the cut belongs to the task before it
            return f.tell()

    return cut(rank), cut(rank + 1)


def read_jsonl_range(path: Path, start: int, end: int, required: tuple[str, ...]) -> Iterator[dict]:
    """Records of the lines starting in [start, end); bad input raises read_jsonl's `file:line` error."""
    with open(path, "rb") as f:
        f.seek(start)
        while f.tell() < end:
            line = f.readline()
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not (isinstance(record, dict) and all(k in record for k in required)):
                # Rare path: re-read from the top, which raises the message naming the line.
                for _ in read_jsonl_numbered(path, required):
                    pass
            yield record


def _datatrove_parts(path, worker, executor, work_dir, batch_size, required, resume) -> list[Iterator]:
    if executor.logging_dir:  # one shared root (e.g. on a cluster filesystem): a subfolder per stage output
        tag = hashlib.sha256(str(Path(work_dir).resolve()).encode()).hexdigest()[:10]
        work_dir = Path(executor.logging_dir) / f"{Path(work_dir).name}-{tag}"
    parts_dir = Path(work_dir) / "parts"
    spec = {
        "parts_format": PARTS_FORMAT,
        "input": str(path),
        "input_sha256": sha256_file(path),
        "tasks": executor.tasks,
        **worker.fingerprint(),
    }
    names = [parts_dir / f"{rank:05d}.jsonl" for rank in range(executor.tasks)]
    spec_path = parts_dir / "spec.json"
    same = spec_path.is_file() and json.loads(spec_path.read_text(encoding="utf-8")) == spec
    if not (same and all(p.is_file() for p in names)):
        if same and os.environ.get(FINISH_ONLY_ENV):  # the Slurm map job ran but some tasks failed
            missing = [p.name for p in names if not p.is_file()]
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
            if not part.is_file():
                (parts_dir.parent / "logs" / "completions" / f"{rank:05d}").unlink(missing_ok=True)
        for leftover in parts_dir.glob(".*.tmp"):  # temporary files of killed tasks
            leftover.unlink()
        _run_map(
            MapStep(str(path), worker, str(parts_dir), batch_size, required),
            executor,
            parts_dir.parent,
            resume,
        )
        missing = [p.name for p in names if not p.is_file()]
        if missing:
            raise StageError(
                f"{parts_dir}: datatrove tasks failed (missing {missing}); see {parts_dir.parent}/logs"
            )
    return [_read_part(p) for p in names]


def _run_map(step: MapStep, executor: ExecutorConfig, root: Path, resume: Callable[[], Any] | None) -> None:
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
    """datatrove step: this task's byte range of the input through the worker, into parts/<rank>.jsonl."""

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
        path = Path(self.input)
        mine = read_jsonl_range(path, *byte_range(path, rank, world_size), self.required)
        with (
            atomic_path(Path(self.parts_dir) / f"{rank:05d}.jsonl") as tmp,
            open(tmp, "w", encoding="utf-8") as f,
        ):
            for batch in batched(mine, self.batch_size):
                with self.track_time(unit="batch"):
                    results = self.worker.process(batch)
                f.writelines(json.dumps(result, ensure_ascii=False) + "\n" for result in results)
                self.stat_update("documents", value=len(batch))
        return None


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

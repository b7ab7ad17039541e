"""The generation runner: prompts in, one completion record per prompt out, resumable after kill -9.

Completed batches are appended to `<output>.partial` (one `os.write` of whole lines on an O_APPEND
descriptor, then fsync), so a killed run leaves at most a torn last line, which the next run cuts off
before continuing. Records already done (same id, sampling and teacher) are skipped; failures are
retried on the next run. When every prompt is done the output is written atomically in input order,
with its manifest, and the journal is removed: later stages never see a half-finished file.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import shutil
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_pipeline.generation.diversity import NearDuplicates
from data_pipeline.teachers.base import Completion, Messages, Sampling, Teacher
from stagekit.io import StageError, atomic_path, read_jsonl_numbered, sha256_text, write_jsonl

# Openers Cosmopedia's authors found overused by the teacher and asked it to avoid (quality stats only).
BANNED_OPENERS = (
    "once upon a time",
    "have you ever",
    "imagine ",
    "in today's",
    "welcome to",
    "title:",
    "sure",
)
PREFIX_CHARS = 40  # completions sharing their first 40 characters count as duplicate-prefix
GENERATION_NEAR_THRESHOLD = 0.8  # Jaccard on 5-word shingles: datatrove's and Cosmopedia's dedup threshold
_HEX16 = re.compile(r"[0-9a-f]{16}")


def to_messages(record: dict, where: str) -> Messages:
    """A record's conversation: its `messages`, or its `prompt` as one user turn."""
    if "messages" in record:
        messages = record["messages"]
        ok = (
            isinstance(messages, list)
            and messages
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            )
        )
        if not ok:
            raise StageError(
                f"{where}: 'messages' must be a non-empty list of {{role, content}} string objects"
            )
        return messages
    if isinstance(record.get("prompt"), str) and record["prompt"].strip():
        return [{"role": "user", "content": record["prompt"]}]
    raise StageError(f"{where}: record needs a non-empty 'prompt' string or a 'messages' list")


def prompt_id(messages: Messages, sampling: Sampling, repeat: int = 0) -> str:
    """Stable id of a (conversation, sampling) pair: the same prompt sampled differently is a new item, and so
    is a prompt's `repeat`-th pass (builders' allow_repeats)."""
    key = {
        "messages": messages,
        "sampling": _sampling_dict(sampling),
        **({"repeat": repeat} if repeat else {}),
    }
    return sha256_text(json.dumps(key, sort_keys=True))[:16]


@functools.lru_cache(maxsize=8)
def _sampling_dict(sampling: Sampling) -> dict:
    """`sampling.to_dict()` once per Sampling (read only here): dataclasses.asdict per prompt was ~7% of the client's
    profiled time against an instant server."""
    return sampling.to_dict()


def iter_prepared(records: Iterable[tuple[str, dict]], sampling: Sampling) -> Iterator[dict]:
    """Validate prompt records (each with its `where`, e.g. file:line) and give each an id, streamed."""
    for where, record in records:
        messages = to_messages(record, where)
        rid = (
            str(record["id"])
            if record.get("id") is not None
            else prompt_id(messages, sampling, record.get("repeat", 0))
        )
        yield {**record, "id": rid, "messages": messages, "_where": where}


def _unique(prompts: list[dict]) -> list[dict]:
    """The prompts without their `_where`; a repeated id names both places."""
    seen = {}
    for p in prompts:
        where = p.pop("_where")
        if p["id"] in seen:
            raise StageError(
                f"{where}: duplicate id {p['id']} (first at {seen[p['id']]}); give repeated prompts distinct ids"
            )
        seen[p["id"]] = where
    return prompts


def prepare(records: Iterable[tuple[str, dict]], sampling: Sampling) -> list[dict]:
    """Validate prompt records and give each an id; ids must be unique."""
    return _unique(list(iter_prepared(records, sampling)))


def input_files(paths: Iterable[str | Path]) -> list[Path]:
    """JSONL files, a directory standing for its sorted *.jsonl shards."""
    files = []
    for path in map(Path, paths):
        files.extend(sorted(path.glob("*.jsonl")) if path.is_dir() else [path])
    return files


def _located(paths: Iterable[str | Path]) -> Iterator[tuple[str, dict]]:
    for path in input_files(paths):
        for lineno, record in read_jsonl_numbered(path):
            yield f"{path}:{lineno}", record


def stream_prompts(paths: Iterable[str | Path], sampling: Sampling) -> Iterator[dict]:
    """Prompt records from JSONL files or shard directories, validated (errors name file:line), with ids."""
    return iter_prepared(_located(paths), sampling)


def count_prompts(paths: Iterable[str | Path]) -> int:
    """The prompt records of JSONL files or shard directories, each validated as `stream_prompts` does, without
    computing ids: a cheap first pass that fails on bad input before a teacher loads."""
    return sum(1 for where, record in _located(paths) if to_messages(record, where))


def load_prompts(paths: Iterable[str | Path], sampling: Sampling) -> list[dict]:
    """All prompt records of small files (tests, annotation); ids must be unique."""
    return _unique(list(stream_prompts(paths, sampling)))


def _read_journal(path: Path) -> list[dict]:
    """Records of an earlier, interrupted run; a torn last line (kill -9 mid-write) is cut off."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    records = []
    for lineno, line in enumerate(data[:end].splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise StageError(
                f"{path}:{lineno}: corrupt journal line ({e.msg}); delete it or use --force"
            ) from e
    return records


def _append(fd: int, records: list[dict]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def run_prompts(
    prompts: list[dict],
    teacher: Teacher,
    sampling: Sampling,
    *,
    batch_size: int = 8,
    journal: str | Path | None = None,
    desc: str = "generate",
    progress: bool = True,
) -> tuple[list[dict], RunStats]:
    """Complete prompt records ({id?, prompt | messages, ...metadata}) held in memory; returns output records in
    input order. With `journal`, finished batches are appended there and a re-run skips what it holds. Failed
    prompts come back with `error` set; nothing is dropped. (`run_stream` is the same on a stream, in parts.)
    """
    prompts = prepare(((f"prompt[{i}]", r) for i, r in enumerate(prompts)), sampling)
    stats = RunStats(total=len(prompts))
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress)
    try:
        ordered = _complete(prompts, teacher, sampling, batch_size, journal, stats, bar)
    finally:
        bar.close()
    return ordered, stats


def _complete(
    prompts: list[dict],
    teacher: Teacher,
    sampling: Sampling,
    batch_size: int,
    journal: str | Path | None,
    stats: RunStats,
    bar: tqdm,
) -> list[dict]:
    """One chunk: resume from its journal, complete the rest batch by batch, return its records in order."""
    base = sampling.to_dict()
    previous = {}
    for r in _read_journal(Path(journal)) if journal else []:
        if r.get("sampling") == base and r.get("teacher") == teacher.name:
            previous[r["id"]] = r
    results, todo = {}, []
    for p in prompts:
        old = previous.get(p["id"])
        if old is not None and not old.get("error"):
            results[p["id"]] = old
            stats.resumed += 1
        else:
            todo.append(p)
    bar.update(len(results))
    stats.retried += sum(1 for p in todo if p["id"] in previous)  # failed last time, tried again now
    started = time.time()
    fd = None
    if journal:
        Path(journal).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for i in range(0, len(todo), batch_size):
            batch = todo[i : i + batch_size]
            # A per-batch seed derived from its first id: reproducible, and distinct across batches.
            call = replace(sampling, seed=(sampling.seed + int(sha256_text(batch[0]["id"])[:8], 16)) % 2**31)
            completions = teacher.complete([p["messages"] for p in batch], call)
            out = [_output_record(p, c, teacher.name, base) for p, c in zip(batch, completions)]
            if fd is not None:
                _append(fd, out)
            for r in out:
                results[r["id"]] = r
                stats.retried += r["attempts"] > 1
                stats.completion_tokens += r["completion_tokens"]
            bar.update(len(batch))
            stats.seconds += time.time() - started
            started = time.time()
            bar.set_postfix(tok_s=f"{stats.completion_tokens / max(stats.seconds, 1e-9):.1f}", refresh=False)
    finally:
        if fd is not None:
            os.close(fd)
    stats.seconds += time.time() - started
    ordered = [results[p["id"]] for p in prompts]
    failed = sum(1 for r in ordered if r.get("error"))
    stats.failed += failed
    stats.done += len(ordered) - failed
    return ordered


def parts_dir(output: str | Path) -> Path:
    """Where `run_stream` keeps the finished parts and the journal of the part in progress."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


def _chunks(prompts: Iterator[dict], size: int) -> Iterator[list[dict]]:
    while chunk := list(itertools.islice(prompts, size)):
        yield chunk


def run_stream(
    prompts: Iterator[dict],
    teacher: Teacher,
    sampling: Sampling,
    workdir: Path,
    *,
    batch_size: int = 8,
    chunk_size: int = 10000,
    desc: str = "generate",
    progress: bool = True,
    total: int | None = None,
) -> RunStats:
    """Complete a stream of prepared prompts (`stream_prompts`) in parts of `chunk_size`, in O(chunk) memory.

    Part k (prompts k*chunk_size ...) is journaled to `workdir/part-k.jsonl.partial` and renamed to
    `part-k.jsonl` once every prompt in it succeeded; a re-run skips finished parts without reading them and
    resumes the journal of the others. Parts with failures stay journals (retried by the next run).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    stats = RunStats()
    bar = tqdm(total=total, desc=desc, unit="prompt", disable=not progress, dynamic_ncols=True)
    try:
        for k, chunk in enumerate(_chunks(prompts, chunk_size)):
            _unique(chunk)  # ids must be unique; across parts the merge checks
            stats.total += len(chunk)
            part = workdir / f"part-{k:05d}.jsonl"
            journal = part.with_name(part.name + ".partial")
            if part.is_file():
                journal.unlink(missing_ok=True)  # killed between the part's rename and the journal's removal
                stats.resumed += len(chunk)
                stats.done += len(chunk)
                bar.update(len(chunk))
                continue
            failed_before = stats.failed
            records = _complete(chunk, teacher, sampling, batch_size, journal, stats, bar)
            if stats.failed == failed_before:
                write_jsonl(part, records)  # atomic; the journal is only removed once the part exists
                journal.unlink()
    finally:
        bar.close()
    return stats


def iter_parts(workdir: Path) -> Iterator[dict]:
    """Every record of the parts in order; an unfinished part contributes its latest record per id."""
    for path in sorted(workdir.glob("part-*.jsonl*")):
        if path.suffix == ".partial":
            latest = {r["id"]: r for r in _read_journal(path)}
            yield from latest.values()
        else:
            yield from (json.loads(line) for line in path.open(encoding="utf-8"))


@dataclass
class RunStats:
    total: int = 0
    resumed: int = 0  # already done by an earlier run of the same command
    done: int = 0
    failed: int = 0
    retried: int = 0  # prompts that needed more than one request, or that failed in an earlier run
    completion_tokens: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.completion_tokens / self.seconds if self.seconds else 0.0
        return (
            f"{self.done} done ({self.resumed} from an earlier run), {self.failed} failed, {self.retried} retried, "
            f"{self.completion_tokens} tokens generated in {self.seconds:.1f}s ({rate:.1f} tokens/s)"
        )


def _output_record(prompt: dict, completion: Completion, teacher: str, sampling: dict) -> dict:
    return {
        **prompt,
        "method": prompt.get("method", "custom"),
        "completion": completion.text,
        "finish_reason": completion.finish_reason,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "teacher": teacher,
        "sampling": sampling,
        "attempts": completion.attempts,
        "error": completion.error,
    }


class QualityMeter:
    """Cheap signals of teacher trouble, streamed: truncation, boilerplate openers and empty outputs over every
    record; duplicate prefixes and near-duplicate generations (Jaccard >= 0.8) over the first `sample`."""

    def __init__(self, sample: int = 20000) -> None:
        self.sample, self.n, self.tokens = sample, 0, 0
        self.counts: Counter[str] = Counter()
        self.prefixes: set[str] = set()
        self.near = NearDuplicates(GENERATION_NEAR_THRESHOLD)

    def add(self, record: dict) -> None:
        if record.get("error"):
            return
        start = record["completion"].strip().lower()
        self.n += 1
        self.tokens += record["completion_tokens"]
        self.counts["hit_max_tokens"] += record["finish_reason"] == "length"
        self.counts["banned_opener"] += start.startswith(BANNED_OPENERS)
        self.counts["empty"] += not start
        if self.n <= self.sample:
            self.counts["duplicate_prefix"] += start[:PREFIX_CHARS] in self.prefixes
            self.prefixes.add(start[:PREFIX_CHARS])
            self.counts["near_duplicate"] += bool(start) and self.near.add(start)

    def result(self) -> dict:
        if not self.n:
            return {"completions": 0}
        checked = min(self.n, self.sample)
        shares = {k: round(self.counts[k] / self.n, 4) for k in ("hit_max_tokens", "banned_opener", "empty")}
        return {
            "completions": self.n,
            **shares,
            "duplicate_prefix": round(self.counts["duplicate_prefix"] / checked, 4),
            "near_duplicate_share": round(self.counts["near_duplicate"] / checked, 4),
            "near_duplicate_threshold": GENERATION_NEAR_THRESHOLD,
            "checked_for_duplicates": checked,
            "mean_completion_tokens": round(self.tokens / self.n, 1),
        }


def quality_stats(records: Iterable[dict], sample: int = 20000) -> dict:
    meter = QualityMeter(sample)
    for r in records:
        meter.add(r)
    return meter.result()


def finish_output(
    output: Path, workdir: Path, stats: RunStats, allow_failed_fraction: float, sample: int = 20000
) -> tuple[dict, dict]:
    """Merge the parts into `output` atomically, streaming, or stop (keeping the parts) when too many prompts
    failed. Returns (token counts, quality stats). Ids repeated across parts are an error (`RepeatedIds`)."""
    if stats.total and stats.failed / stats.total > allow_failed_fraction:
        first = next(r["error"] for r in iter_parts(workdir) if r.get("error"))
        raise StageError(
            f"generate: {stats.failed} of {stats.total} prompts failed after the teacher's retries "
            f"(first error: {first}); the {stats.done} completed are kept in {workdir}: re-run the same command "
            "to retry only the failed ones"
        )
    meter, ids = QualityMeter(sample), RepeatedIds(workdir / "ids")
    tokens = Counter()

    def records() -> Iterator[dict]:
        for r in iter_parts(workdir):
            meter.add(r)
            ids.add(int(r["id"], 16) if _HEX16.fullmatch(r["id"]) else int(sha256_text(r["id"])[:16], 16))
            tokens["prompt_tokens"] += r["prompt_tokens"]
            tokens["completion_tokens"] += r["completion_tokens"]
            yield r

    with atomic_path(output) as tmp:
        write_jsonl(tmp, records())
        if repeated := ids.count():
            raise StageError(
                f"generate: {repeated} prompt id(s) occur in more than one part of {workdir}; "
                "give repeated prompts distinct ids"
            )
    return dict(tokens), meter.result()


class RepeatedIds:
    """Counts repeated 64-bit ids in O(n / BUCKETS) memory: ids are spread over BUCKETS files on disk by their top
    bits (ids are hashes, so evenly), and each file is then checked alone. Holding every id in memory instead grew
    the peak RSS of a 1M-prompt run by ~8 bytes per prompt plus np.unique's copies (bench/README.md)."""

    BUCKETS, FLUSH = 64, 2048  # buffers hold at most 64 x 2048 ids (1 MiB)

    def __init__(self, directory: Path) -> None:
        shutil.rmtree(directory, ignore_errors=True)  # left by an earlier, failed merge
        directory.mkdir(parents=True)
        self.directory = directory
        self.buffers = [array("Q") for _ in range(self.BUCKETS)]

    def add(self, value: int) -> None:
        bucket = value >> 58  # the top 6 bits of 64
        self.buffers[bucket].append(value)
        if len(self.buffers[bucket]) >= self.FLUSH:
            self._flush(bucket)

    def _flush(self, bucket: int) -> None:
        with open(self.directory / f"{bucket:02d}.u64", "ab") as f:
            self.buffers[bucket].tofile(f)
        del self.buffers[bucket][:]

    def count(self) -> int:
        """How many ids repeat an earlier one."""
        repeated = 0
        for bucket in range(self.BUCKETS):
            self._flush(bucket)
            values = np.fromfile(self.directory / f"{bucket:02d}.u64", dtype=np.uint64)
            repeated += values.size - np.unique(values).size
        return repeated

"""The generation runner: prompts in, one completion record per prompt out, resumable after kill -9.

Completed batches are appended to `<output>.partial` (one `os.write` of whole lines on an O_APPEND
descriptor, then fsync), so a killed run leaves at most a torn last line, which the next run cuts off
before continuing. Records already done (same id, sampling and teacher) are skipped; failures are
retried on the next run. When every prompt is done the output is written atomically in input order,
with its manifest, and the journal is removed: later stages never see a half-finished file.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from data_pipeline.teachers.base import Completion, Messages, Sampling, Teacher
from stagekit.io import StageError, read_jsonl_numbered, sha256_text, write_jsonl

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


def journal_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".partial")


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


def prompt_id(messages: Messages, sampling: Sampling) -> str:
    """Stable id of a (conversation, sampling) pair: the same prompt sampled differently is a new item."""
    return sha256_text(json.dumps({"messages": messages, "sampling": sampling.to_dict()}, sort_keys=True))[
        :16
    ]


def prepare(records: Iterable[tuple[str, dict]], sampling: Sampling) -> list[dict]:
    """Validate prompt records (each with its `where`, e.g. file:line) and give each an id; ids must be unique."""
    prepared, seen = [], {}
    for where, record in records:
        messages = to_messages(record, where)
        rid = str(record["id"]) if record.get("id") is not None else prompt_id(messages, sampling)
        if rid in seen:
            raise StageError(
                f"{where}: duplicate id {rid} (first at {seen[rid]}); give repeated prompts distinct ids"
            )
        seen[rid] = where
        prepared.append({**record, "id": rid, "messages": messages})
    return prepared


def load_prompts(paths: Iterable[str | Path], sampling: Sampling) -> list[dict]:
    """Prompt records from JSONL files, validated (errors name file:line) and with ids."""
    located = ((f"{path}:{lineno}", record) for path in paths for lineno, record in read_jsonl_numbered(path))
    return prepare(located, sampling)


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
    """Complete prompt records ({id?, prompt | messages, ...metadata}); returns output records in input order.

    Records from `load_prompts` are already validated with file:line; others are checked here. With
    `journal`, finished batches are appended there and a re-run skips what it holds. Failed prompts come
    back with `error` set; nothing is dropped.
    """
    prompts = prepare(((f"prompt[{i}]", r) for i, r in enumerate(prompts)), sampling)
    stats = RunStats(total=len(prompts))
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
    stats.retried += sum(1 for p in todo if p["id"] in previous)  # failed last time, tried again now
    started = time.time()
    fd = None
    if journal:
        Path(journal).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    bar = tqdm(total=len(prompts), initial=stats.resumed, desc=desc, unit="prompt", disable=not progress)
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
            elapsed = time.time() - started
            bar.set_postfix(
                tok_s=f"{stats.completion_tokens / elapsed:.1f}" if elapsed else "-", refresh=False
            )
    finally:
        bar.close()
        if fd is not None:
            os.close(fd)
    stats.seconds = time.time() - started
    ordered = [results[p["id"]] for p in prompts]
    stats.failed = sum(1 for r in ordered if r.get("error"))
    stats.done = len(ordered) - stats.failed
    return ordered, stats


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


def quality_stats(records: list[dict]) -> dict:
    """Cheap signals of teacher trouble: truncation, boilerplate openers, near-duplicate outputs."""
    ok = [r for r in records if not r.get("error")]
    if not ok:
        return {"completions": 0}
    starts = [r["completion"].strip().lower() for r in ok]
    prefixes = Counter(s[:PREFIX_CHARS] for s in starts)
    return {
        "completions": len(ok),
        "hit_max_tokens": round(sum(r["finish_reason"] == "length" for r in ok) / len(ok), 4),
        "banned_opener": round(sum(s.startswith(BANNED_OPENERS) for s in starts) / len(ok), 4),
        "duplicate_prefix": round(sum(n - 1 for n in prefixes.values()) / len(ok), 4),
        "empty": round(sum(not s for s in starts) / len(ok), 4),
        "mean_completion_tokens": round(sum(r["completion_tokens"] for r in ok) / len(ok), 1),
    }


def finish_output(output: Path, records: list[dict], stats: RunStats, allow_failed_fraction: float) -> None:
    """Write the final output atomically, or stop (keeping the journal) when too many prompts failed.

    The caller removes the journal once the manifest is written too, so no kill loses finished work.
    """
    journal = journal_path(output)
    if stats.total and stats.failed / stats.total > allow_failed_fraction:
        first = next(r["error"] for r in records if r.get("error"))
        raise StageError(
            f"generate: {stats.failed} of {stats.total} prompts failed after the teacher's retries "
            f"(first error: {first}); the {stats.done} completed are kept in {journal}: re-run the same command "
            "to retry only the failed ones"
        )
    write_jsonl(output, records)

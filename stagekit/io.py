"""The stage contract's plumbing: strict JSONL reading, atomic writes, manifests, freshness checks.

Every stage (data, train export, eval) writes through `atomic_path`, so a killed process never leaves a
file a later stage would trust, and records what it did in `<output>.manifest.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class StageError(RuntimeError):
    """Bad input or a stage that cannot proceed; the message names the file/line or key."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_jsonl(path: str | Path, required: Iterable[str] = ()) -> Iterator[dict]:
    """Yield records; a malformed line or a record missing a required field raises `file:line: ...`."""
    for _, record in read_jsonl_numbered(path, required):
        yield record


def read_jsonl_numbered(path: str | Path, required: Iterable[str] = ()) -> Iterator[tuple[int, dict]]:
    """Like read_jsonl, with each record's line number, for checks that name `file:line` themselves."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: input file not found")
    required = tuple(required)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise StageError(
                    f"{path}:{lineno}: malformed JSON ({e.msg}); expected one JSON object per line"
                ) from e
            if not isinstance(record, dict):
                raise StageError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            missing = [k for k in required if k not in record]
            if missing:
                raise StageError(f"{path}:{lineno}: record lacks required field(s) {', '.join(missing)}")
            yield lineno, record


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`.

    On any exception the temporary file (or directory) is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # callers create a file or a directory at tmp themselves
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            with open(tmp_path, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp_path, path) if not path.is_dir() else _replace_dir(tmp_path, path)
    finally:
        if tmp_path.exists():
            _remove(tmp_path)


def _remove(p: Path) -> None:
    shutil.rmtree(p) if p.is_dir() else p.unlink()


def _replace_dir(tmp: Path, path: Path) -> None:
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        _remove(old)
    os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write records atomically; returns the count."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def manifest_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".manifest.json")


def fingerprint(path: str | Path) -> str:
    """The hash manifests record: a file's sha256, or the sha256 of a directory's sorted (name, sha256) listing."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
            h.update(f"{p.relative_to(path)}\0{sha256_file(p)}\n".encode())
        return h.hexdigest()
    return sha256_file(path)


def write_manifest(
    output: str | Path,
    *,
    stage: str,
    version: str,
    params: dict,
    inputs: Iterable[str | Path] = (),
    counts: dict | None = None,
    drops: dict | None = None,
    started: float | None = None,
    extra: dict | None = None,
) -> dict:
    """Write `<output>.manifest.json` describing how `output` was produced."""
    output = Path(output)
    manifest = {
        "stage": stage,
        "version": version,
        "params": params,
        "inputs": {str(p): fingerprint(p) for p in inputs},
        "counts": counts or {},
        "drops": drops or {},
        "output": str(output),
        "output_sha256": fingerprint(output) if output.exists() else None,
        "wall_seconds": round(time.time() - started, 3) if started else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if extra:
        manifest.update(extra)
    write_json(manifest_path(output), manifest)
    return manifest


def read_manifest(output: str | Path) -> dict | None:
    path = manifest_path(output)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def is_fresh(
    output: str | Path, *, stage: str, version: str, params: dict, inputs: Iterable[str | Path]
) -> bool:
    """True when `output` exists, is unchanged since its manifest, and was made from the same inputs+params.

    This is how `make all` reuses finished stages: comparing the manifest, not timestamps.
    """
    output = Path(output)
    manifest = read_manifest(output)
    if manifest is None or not output.exists():
        return False
    same_params = json.loads(json.dumps(params, default=str)) == manifest.get("params")
    return (
        manifest.get("stage") == stage
        and manifest.get("version") == version
        and same_params
        and manifest.get("inputs") == {str(p): fingerprint(p) for p in inputs}
        and manifest.get("output_sha256") == fingerprint(output)
    )

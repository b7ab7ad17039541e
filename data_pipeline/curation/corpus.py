"""Stage inputs and outputs: one JSONL file, or a directory of JSONL/Parquet shards.

A directory's shards are its `*.jsonl` and `*.parquet` files, sorted by name. Records are numbered by
shard (its index in that order), and a directory output has one JSONL shard per input shard, of the same
name (suffix `.jsonl`), so the output's layout does not depend on how many tasks ran. An output path ending
in `.jsonl` is one file (all shards concatenated in order); any other output path is a directory.

A datatrove task reads only its share: a single JSONL file is cut into byte ranges at line starts (all
tasks together parse it once), a directory's shards are dealt to the tasks in contiguous blocks.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from stagekit.io import StageError, atomic_path, read_jsonl, read_jsonl_numbered

SHARD_SUFFIXES = (".jsonl", ".parquet")


def input_shards(path: str | Path) -> list[Path]:
    """The shard files of an input: the file itself, or a directory's JSONL/Parquet files sorted by name."""
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix in SHARD_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise StageError(f"{path}: no *.jsonl or *.parquet shards in this directory")
        return files
    if not path.is_file():
        raise StageError(f"{path}: input file not found")
    return [path]


def is_directory_output(path: str | Path) -> bool:
    return Path(path).suffix != ".jsonl"


def output_names(input: str | Path) -> list[str]:
    """Name of each input shard's output shard (a directory output's files)."""
    names = [p.stem + ".jsonl" for p in input_shards(input)]
    if len(set(names)) != len(names):
        raise StageError(f"{input}: two shards share a name once their suffix is .jsonl ({sorted(names)})")
    return names


def parquet_rows(path: Path, required: tuple[str, ...] = ()) -> Iterator[dict]:
    """Rows of a Parquet file as dicts, streamed by record batch; a missing column names the file."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise StageError(f"{path}: not a readable Parquet file ({e})") from e
    missing = [k for k in required if k not in table.schema_arrow.names]
    if missing:
        raise StageError(
            f"{path}: no column {', '.join(missing)} (columns: {', '.join(table.schema_arrow.names)})"
        )
    for batch in table.iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def read_shard(path: Path, required: tuple[str, ...] = ()) -> Iterator[dict]:
    return parquet_rows(path, required) if path.suffix == ".parquet" else read_jsonl(path, required)


def read_input(path: str | Path, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """(shard index, record) of every record of the input, in order."""
    for i, shard in enumerate(input_shards(path)):
        for record in read_shard(shard, required):
            yield i, record


def task_records(
    path: str | Path, rank: int, world_size: int, required: tuple[str, ...] = ()
) -> Iterator[tuple[int, dict]]:
    """(shard index, record) of task `rank`'s share of the input, in input order."""
    path = Path(path)
    shards = input_shards(path)
    if not path.is_dir() and path.suffix != ".parquet":
        yield from ((0, r) for r in read_jsonl_range(path, *byte_range(path, rank, world_size), required))
        return
    k = len(shards)
    for i in range(rank * k // world_size, (rank + 1) * k // world_size):
        yield from ((i, r) for r in read_shard(shards[i], required))


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


class OutputShards:
    """Writes JSONL lines to one file, or to a directory with one file per input shard, atomically.

    Lines arrive shard by shard in input order (`file(shard)` moves on); on success every input shard has
    its output file, empty when nothing of it was kept, and the file or directory is renamed into place.
    """

    def __init__(self, output: str | Path, input: str | Path):
        self.output = Path(output)
        self.directory = is_directory_output(output)
        self.names = output_names(input) if self.directory else []
        self._shard: int | None = None
        self._file: BinaryIO | None = None

    def __enter__(self) -> OutputShards:
        self._atomic = atomic_path(self.output)
        self._tmp = self._atomic.__enter__()
        if self.directory:
            self._tmp.mkdir()
        else:
            self._file = open(self._tmp, "wb")
        return self

    def file(self, shard: int) -> BinaryIO:
        """The open output for records of input shard `shard` (shards must not go backwards)."""
        if self.directory and shard != self._shard:
            self._open(shard)
        return self._file

    def add_piece(self, shard: int, piece: Path) -> None:
        """Append a finished file of shard `shard`'s lines; an output file's first piece is moved into place
        rather than copied (one task's output, or a directory shard, which comes from one task)."""
        out = self.file(shard)
        if out.tell() == 0:
            out.close()
            target = self._tmp / self.names[shard] if self.directory else self._tmp
            shutil.move(piece, target)  # replaces the empty file
            self._file = open(target, "ab")
            return
        with open(piece, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)

    def _open(self, shard: int) -> None:
        if self._shard is not None and shard < self._shard:
            raise StageError(f"{self.output}: shard {shard} arrived after shard {self._shard}")
        if self._file is not None:
            self._file.close()
        self._shard = shard
        self._file = open(self._tmp / self.names[shard], "wb")

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._file is not None:
            self._file.close()
        if exc_type is None and self.directory:
            for name in self.names:
                (self._tmp / name).touch()  # shards with nothing kept stay in the layout, empty
        self._atomic.__exit__(exc_type, exc, tb)

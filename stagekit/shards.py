"""Packed token shards: flat binary token files plus a document-boundary index, memory-mapped for training.

Layout of a shard directory (one per split, e.g. runs/<recipe>/data/shards/pretrain/train/):

    shard-00000.bin        raw tokens, uint16 when vocab_size <= 65536 else uint32, little-endian
    shard-00000.docs.npy   int64 offsets (within that shard) where a document starts
    shard-00000.prompt.npy int64 leading "prompt" tokens of each document starting in that shard, which
                           a completion-only finetune excludes from the loss (format 2; absent in format 1
                           sets, which read as 0: every token counts)
    index.json             dtype, vocab_size, eot_id, shards [{file, docs, prompts, num_tokens,
                           num_documents, sha256}], num_tokens, num_documents, prompt_tokens,
                           tokens_per_source, documents_per_source

Documents are concatenated with `eot_id` after each one (the eot belongs to the document it ends), and
may straddle a shard boundary so every shard but the last holds exactly `shard_tokens` tokens. Position
ids restart at 0 at each document start: the model uses that for document masking and RoPE restarts
(the nanoGPT/Megatron "packed" layout, with the boundary index instead of scanning for eot).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from stagekit.io import StageError, atomic_path, write_json

INDEX = "index.json"
FORMAT_VERSION = 2


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _shard_names(i: int) -> tuple[str, str, str]:
    return f"shard-{i:05d}.bin", f"shard-{i:05d}.docs.npy", f"shard-{i:05d}.prompt.npy"


class ShardWriter:
    """Streams documents into fixed-size shards; each shard file is renamed into place when complete and
    index.json is written last, so a reader never sees a half-written shard set."""

    def __init__(
        self,
        out_dir: Path,
        *,
        vocab_size: int,
        eot_id: int,
        shard_tokens: int = 1 << 26,
        allow_empty: bool = False,
    ):
        if not 0 <= eot_id < vocab_size:
            raise StageError(f"eot_id {eot_id} is outside the vocabulary [0, {vocab_size})")
        if shard_tokens < 1:
            raise StageError(f"shard_tokens must be positive, got {shard_tokens}")
        self.out_dir = Path(out_dir)
        self.vocab_size, self.eot_id, self.shard_tokens = vocab_size, eot_id, shard_tokens
        self.allow_empty = allow_empty  # e.g. one task's share of a mixture, which may hold no document
        self.dtype = token_dtype(vocab_size)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # A previous set in this directory is invalid from now on: drop its index first, then its files.
        (self.out_dir / INDEX).unlink(missing_ok=True)
        for stale in self.out_dir.glob("shard-*"):
            stale.unlink()
        self._shards: list[dict] = []
        self._tokens_per_source: Counter[str] = Counter()
        self._docs_per_source: Counter[str] = Counter()
        self._num_documents = 0
        self._prompt_tokens = 0
        self._stack: contextlib.ExitStack | None = None
        self._file = None
        self._open_shard()

    def _open_shard(self) -> None:
        name = _shard_names(len(self._shards))[0]
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.out_dir / name))
        self._file = open(tmp, "wb")  # closed in _finish_shard or _abort
        self._hash = hashlib.sha256()
        self._fill = 0
        self._doc_starts: list[int] = []
        self._doc_prompts: list[int] = []

    def _finish_shard(self) -> None:
        name, docs_name, prompts_name = _shard_names(len(self._shards))
        self._file.close()
        self._stack.close()  # renames the finished .bin into place
        for path, values in ((docs_name, self._doc_starts), (prompts_name, self._doc_prompts)):
            with atomic_path(self.out_dir / path) as tmp, open(tmp, "wb") as f:
                np.save(f, np.asarray(values, dtype=np.int64))
        self._shards.append(
            {
                "file": name,
                "docs": docs_name,
                "prompts": prompts_name,
                "num_tokens": self._fill,
                "num_documents": len(self._doc_starts),
                "sha256": self._hash.hexdigest(),
            }
        )

    def _write(self, tokens: np.ndarray) -> None:
        """Append tokens, rolling over to a new shard whenever the current one is full."""
        while tokens.size:
            if self._fill == self.shard_tokens:
                self._finish_shard()
                self._open_shard()
            take = tokens[: self.shard_tokens - self._fill]
            data = take.tobytes()
            self._file.write(data)
            self._hash.update(data)
            self._fill += take.size
            tokens = tokens[take.size :]

    def add_document(self, token_ids: Sequence[int], source: str = "", prompt_tokens: int = 0) -> None:
        """Append one document's tokens followed by eot_id; its first `prompt_tokens` tokens are a prompt
        that a completion-only loss skips (the eot always counts, so at most len(token_ids))."""
        if self._file is None:
            raise StageError("ShardWriter is closed")
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = int(ids[(ids < 0) | (ids >= self.vocab_size)][0])
            raise StageError(
                f"token id {bad} is outside the vocabulary [0, {self.vocab_size}) (source '{source}')"
            )
        if not 0 <= prompt_tokens <= ids.size:
            raise StageError(
                f"prompt_tokens {prompt_tokens} is outside [0, {ids.size}] for a {ids.size}-token document "
                f"(source '{source}')"
            )
        if self._fill == self.shard_tokens:  # the document starts in the next shard
            self._finish_shard()
            self._open_shard()
        self._doc_starts.append(self._fill)
        self._doc_prompts.append(prompt_tokens)
        self._prompt_tokens += prompt_tokens
        self._write(np.append(ids, self.eot_id).astype(self.dtype))
        self._num_documents += 1
        self._tokens_per_source[source] += ids.size + 1
        self._docs_per_source[source] += 1

    def close(self) -> dict:
        """Finish the last shard and write index.json; returns the index. An empty set is an error."""
        if self._file is None:
            raise StageError("ShardWriter is already closed")
        if self._num_documents == 0 and not self.allow_empty:
            self._abort()
            raise StageError(f"{self.out_dir}: no documents to write; refusing to write an empty shard set")
        self._finish_shard()
        self._file = None
        index = {
            "format_version": FORMAT_VERSION,
            "dtype": self.dtype.name,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
            "shard_tokens": self.shard_tokens,
            "shards": self._shards,
            "num_tokens": sum(s["num_tokens"] for s in self._shards),
            "num_documents": self._num_documents,
            "prompt_tokens": self._prompt_tokens,
            "tokens_per_source": dict(sorted(self._tokens_per_source.items())),
            "documents_per_source": dict(sorted(self._docs_per_source.items())),
        }
        write_json(self.out_dir / INDEX, index)
        return index

    def _abort(self) -> None:
        """Drop the partial shard (atomic_path removes its temporary file); finished shards stay unindexed."""
        if self._file is not None:
            self._file.close()
            self._stack.__exit__(StageError, StageError("aborted"), None)
            self._file = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()


def read_index(directory: Path) -> dict:
    """A shard set's index.json, or a StageError naming the file."""
    index_path = Path(directory) / INDEX
    if not index_path.is_file():
        raise StageError(f"{index_path}: shard index not found (was the tokenize/mixture stage run?)")
    try:
        return json.loads(index_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise StageError(f"{index_path}: malformed shard index ({e.msg})") from e


def iter_documents(directory: Path) -> Iterator[tuple[np.ndarray, int]]:
    """(tokens without the trailing eot, prompt tokens) of every document in order, reading one shard file
    at a time into memory (not memory-mapped: a pass over a large set keeps its resident memory at one
    shard). The tokens are a view of that shard's buffer: use them before asking for the next document."""
    directory = Path(directory)
    index = read_index(directory)
    dtype = np.dtype(index["dtype"])
    carry, carry_prompt = np.empty(0, dtype), 0  # the head of a document that continues in the next shard
    for shard in index["shards"]:
        tokens = np.fromfile(directory / shard["file"], dtype=dtype)
        if tokens.size != shard["num_tokens"]:
            raise StageError(
                f"{directory / shard['file']}: truncated shard (expected {shard['num_tokens']} tokens)"
            )
        starts = np.load(directory / shard["docs"])
        prompt_file = shard.get("prompts")
        prompts = np.load(directory / prompt_file) if prompt_file else np.zeros_like(starts)
        if starts.size == 0:
            carry = np.concatenate([carry, tokens])
            continue
        if carry.size:
            yield np.concatenate([carry, tokens[: starts[0]]])[:-1], carry_prompt
        bounds = starts.tolist() + [tokens.size]
        for i in range(starts.size - 1):
            yield tokens[bounds[i] : bounds[i + 1] - 1], int(prompts[i])
        carry, carry_prompt = tokens[bounds[-2] :], int(prompts[-1])
    if carry.size:
        yield carry[:-1], carry_prompt


class ShardReader:
    """Read-only, memory-mapped view of a shard directory written by ShardWriter."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        index_path = self.directory / INDEX
        self.index: dict = read_index(self.directory)
        self.dtype = np.dtype(self.index["dtype"])
        self.vocab_size: int = self.index["vocab_size"]
        self.eot_id: int = self.index["eot_id"]
        self.num_tokens: int = self.index["num_tokens"]
        self.num_documents: int = self.index["num_documents"]
        self._maps: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        prompts: list[np.ndarray] = []
        offset = 0
        for shard in self.index["shards"]:
            path = self.directory / shard["file"]
            expected = shard["num_tokens"] * self.dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                raise StageError(f"{path}: missing or truncated shard (expected {expected} bytes)")
            self._maps.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(shard["num_tokens"],)))
            starts.append(np.load(self.directory / shard["docs"]) + offset)
            # Format 1 sets have no prompt counts: every token is trained on.
            prompt_file = shard.get("prompts")
            prompts.append(
                np.load(self.directory / prompt_file) if prompt_file else np.zeros_like(starts[-1])
            )
            offset += shard["num_tokens"]
        # Global token offset of every shard (plus the end), and of every document start.
        self.shard_offsets = np.cumsum([0] + [s["num_tokens"] for s in self.index["shards"]]).astype(np.int64)
        self.doc_starts = np.concatenate(starts).astype(np.int64)
        self.doc_prompt_tokens = np.concatenate(prompts).astype(np.int64)
        if (
            self.doc_starts.size != self.num_documents
            or self.doc_prompt_tokens.size != self.num_documents
            or offset != self.num_tokens
        ):
            raise StageError(f"{index_path}: index does not match the shard files")

    @property
    def num_shards(self) -> int:
        return len(self._maps)

    def read(self, shard: int, offset: int, length: int) -> np.ndarray:
        """`length` tokens of one shard from `offset` (a read-only view in the stored dtype)."""
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} out of range [0, {self.num_shards})")
        data = self._maps[shard]
        if offset < 0 or length < 0 or offset + length > data.shape[0]:
            raise IndexError(
                f"tokens [{offset}, {offset + length}) out of range for shard {shard} ({data.shape[0]} tokens)"
            )
        return data[offset : offset + length]

    def tokens(self, start: int, length: int) -> np.ndarray:
        """`length` tokens from global offset `start`, across shard boundaries, as int64."""
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) out of range ({self.num_tokens} tokens)")
        out = np.empty(length, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(self.shard_offsets, start, side="right")) - 1
        while filled < length:
            local = start + filled - int(self.shard_offsets[shard])
            take = min(length - filled, self._maps[shard].shape[0] - local)
            out[filled : filled + take] = self._maps[shard][local : local + take]
            filled += take
            shard += 1
        return out

    def _locate(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(document index, position within it) of each token in [start, start + length)."""
        positions = np.arange(start, start + length, dtype=np.int64)
        doc = np.searchsorted(self.doc_starts, positions, side="right") - 1
        return doc, positions - self.doc_starts[doc]

    def position_ids(self, start: int, length: int) -> np.ndarray:
        """Position of each token within its document (0 at each document's first token), as int64."""
        return self._locate(start, length)[1]

    def loss_mask(self, start: int, length: int) -> np.ndarray:
        """bool [length]: True where the token at that offset counts in the loss as a target, False for the
        leading prompt tokens of its document (all True for sets written without prompt counts)."""
        doc, within = self._locate(start, length)
        return within >= self.doc_prompt_tokens[doc]

    def window(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, position_ids), both int64 [length], from global token offset `start`."""
        return self.tokens(start, length), self.position_ids(start, length)

    def document(self, i: int) -> np.ndarray:
        """Tokens of document `i` without its trailing eot (int64)."""
        if not 0 <= i < self.num_documents:
            raise IndexError(f"document {i} out of range [0, {self.num_documents})")
        end = int(self.doc_starts[i + 1]) if i + 1 < self.num_documents else self.num_tokens
        start = int(self.doc_starts[i])
        return self.tokens(start, end - start - 1)

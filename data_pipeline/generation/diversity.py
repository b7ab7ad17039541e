"""Diversity measures for prompt sets and generations: distinct count, near-identical share, duplicate prefixes.

Near-identical means Jaccard similarity of 5-word shingle sets at or above a threshold (0.95 for prompts:
templated prompts share their template, so only a near-copy crosses it; 0.8 for generations, datatrove's
and Cosmopedia's dedup threshold). Candidates come from MinHash LSH (16 bands x 8 rows: any pair above
~0.7 collides in some band with probability > 0.99) and every candidate is confirmed with the exact
Jaccard, so the share counts real pairs only. Each item is compared with the items before it: the share is
what a dedup pass keeping first occurrences would drop.
"""

from __future__ import annotations

import hashlib
import zlib
from array import array
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

SHINGLE_WORDS = 5
BANDS, ROWS = 16, 8
_RNG = np.random.default_rng(1234)  # fixed hash functions: signatures are comparable across runs
_A = _RNG.integers(1, 2**63, BANDS * ROWS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
_B = _RNG.integers(0, 2**63, BANDS * ROWS, dtype=np.uint64)
_ROLL = np.uint64(1_000_003)
_MIX = np.uint64(0x9E3779B97F4A7C15)
MAX_CANDIDATES = 64  # exact checks per item; a bucket shared by many items is a template, not a near-copy


def shingles(text: str, n: int = SHINGLE_WORDS) -> np.ndarray:
    """Sorted unique 32-bit hashes of each run of n lower-cased words (a text shorter than n words is one
    shingle); a uint32 array: ~1 KB for a 1000-character extract, where a set of ints would take ~20 KB.
    Word CRC32s are combined by a polynomial rolling hash, vectorised."""
    words = text.lower().split() or [""]
    w = np.fromiter(map(zlib.crc32, map(str.encode, words)), dtype=np.uint64, count=len(words))
    runs = max(1, len(w) - n + 1)
    acc = np.zeros(runs, dtype=np.uint64)
    with np.errstate(over="ignore"):  # everything wraps modulo 2**64, as intended
        for k in range(min(n, len(w))):
            acc = acc * _ROLL + w[k : k + runs]
        mixed = (acc * _MIX) >> np.uint64(32)  # the multiply carries every word into the top half
    return np.unique(mixed.astype(np.uint32))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    common = np.intersect1d(a, b, assume_unique=True).size
    return common / (a.size + b.size - common)


def band_keys(sh: np.ndarray) -> list[int]:
    """One hash per LSH band of the item's MinHash signature (multiply-shift hashing, wrapping in uint64)."""
    with np.errstate(over="ignore"):
        values = (np.outer(_A, sh.astype(np.uint64)) + _B[:, None]) >> np.uint64(32)
    signature = values.min(axis=1).reshape(BANDS, ROWS)
    return [hash((band, row.tobytes())) for band, row in enumerate(signature)]


class NearDuplicates:
    """Incremental index: `add(text)` says whether an earlier text is near-identical (Jaccard >= threshold)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.buckets: dict[int, list[int]] = defaultdict(list)
        self.items: list[np.ndarray] = []

    def add(self, text: str) -> bool:
        sh = shingles(text)
        keys = band_keys(sh)
        checked: set[int] = set()
        found = False
        for key in keys:
            for other in self.buckets[key]:
                if other in checked or len(checked) >= MAX_CANDIDATES:
                    continue
                checked.add(other)
                if jaccard(sh, self.items[other]) >= self.threshold:
                    found = True
                    break
            if found:
                break
        if not found:  # only first occurrences are indexed: a copy of a copy matches the original
            index = len(self.items)
            self.items.append(sh)
            for key in keys:
                self.buckets[key].append(index)
        return found


@dataclass
class DiversityMeter:
    """Streams texts: exact distinct count over all of them (8 bytes each), near-identical share over the first
    `sample` (a random sample when the stream is in random order, as the prompt builders' is)."""

    threshold: float
    sample: int
    hashes: array = field(default_factory=lambda: array("Q"))
    near: int = 0

    def __post_init__(self) -> None:
        self.index = NearDuplicates(self.threshold)

    def add(self, text: str) -> None:
        self.hashes.append(int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big"))
        if len(self.hashes) <= self.sample:
            self.near += self.index.add(text)

    def result(self, prefix: str) -> dict:
        total = len(self.hashes)
        checked = min(total, self.sample)
        distinct = int(np.unique(np.frombuffer(self.hashes, dtype=np.uint64)).size) if total else 0
        return {
            f"{prefix}": total,
            f"distinct_{prefix}": distinct,
            f"near_identical_share_{prefix}": round(self.near / checked, 6) if checked else 0.0,
            "near_identical_threshold": self.threshold,
            "near_identical_checked": checked,
        }

"""Prompt spaces: every method's prompts are the cells of a cross product (seed x audience x format x ...).

A space knows its size (the capacity: how many distinct prompts the configured sources can give) and builds
the record of any cell index. Prompts are taken in the order of a seeded pseudo-random permutation of the
cell indices (a Feistel network with cycle walking), so any prefix is a uniform sample without replacement,
nothing is held in memory, and the same seed gives the same prompts in the same order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from stagekit.io import StageError

_MASK64 = (1 << 64) - 1


def _round_key(seed: int, round_: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{round_}".encode(), digest_size=8).digest(), "big")


def _mix(x: int, key: int) -> int:
    """splitmix64's finaliser over x ^ key: a cheap, well-mixing round function."""
    x = (x ^ key) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def permutation(size: int, seed: int) -> Iterator[int]:
    """Every index of range(size) exactly once, in a seeded pseudo-random order, in O(1) memory."""
    if size <= 0:
        return
    half = max(1, ((size - 1).bit_length() + 1) // 2)  # the network permutes [0, 4**half) >= size
    mask = (1 << half) - 1
    keys = [_round_key(seed, r) for r in range(4)]
    for i in range(1 << (2 * half)):
        left, right = i >> half, i & mask
        for key in keys:
            left, right = right, left ^ (_mix(right, key) & mask)
        x = (left << half) | right
        if x < size:  # cycle walking over the power-of-4 domain: a bijection restricted to range(size)
            yield x


def unravel(index: int, sizes: Sequence[int]) -> list[int]:
    """Mixed-radix digits of `index` (last dimension fastest)."""
    digits = []
    for size in reversed(sizes):
        index, digit = divmod(index, size)
        digits.append(digit)
    return digits[::-1]


@dataclass
class Part:
    """A block of cells: the product of `sizes`, with `build` turning one digit tuple into a record."""

    sizes: tuple[int, ...]
    build: Callable[[list[int]], dict]

    @property
    def size(self) -> int:
        return self.per_seed * self.sizes[0]

    @property
    def per_seed(self) -> int:
        """Cells per value of the first dimension (the seed)."""
        n = 1
        for s in self.sizes[1:]:
            n *= s
        return n


class Space:
    """Disjoint parts laid end to end; `record(i)` for i in range(size)."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts  # empty parts stay: the dry-run reads a part's cells per seed
        self.size = sum(p.size for p in self.parts)

    def record(self, index: int) -> dict:
        for part in self.parts:
            if index < part.size:
                return part.build(unravel(index, part.sizes))
            index -= part.size
        raise IndexError(index)

    def take(self, num_prompts: int, seed: int, *, key: str, allow_repeats: bool = False) -> Iterator[dict]:
        """`num_prompts` records in permutation order; beyond the capacity an error naming `key`, or with
        `allow_repeats` further passes over the space (each a new permutation, records tagged `repeat`)."""
        if num_prompts > self.size and not allow_repeats:
            raise StageError(
                f"{key}={num_prompts:,} exceeds what the configured sources can build: {self.size:,} distinct "
                "prompts; add seeds (a larger corpus, topics, audiences, formats) or set allow_repeats: true"
            )
        if self.size == 0:
            raise StageError(f"{key}: the configured sources give no prompts at all")
        produced, repeat = 0, 0
        while produced < num_prompts:
            for index in permutation(self.size, seed + repeat):
                if produced == num_prompts:
                    return
                record = self.record(index)
                if repeat:
                    record["repeat"] = repeat
                yield record
                produced += 1
            repeat += 1

"""Batches from packed token shards: a deterministic, resumable order, split across ranks without overlap.

The packed array (documents joined by eot) is cut into windows of seq_len + 1 tokens at stride seq_len, so
each window gives seq_len inputs and their seq_len next-token labels (Phi-1 Sec. 2.3: "sequence length of
2048 sliced from our dataset array"). Sequence `g` of the whole run (g = 0, 1, 2, ...) is window
`perm_e[g mod n]` of epoch e = g div n, with perm_e a permutation seeded by (seed, e). Optimizer step s uses
sequences [s*G, (s+1)*G); rank r's micro-batch k of that step takes G's slice starting at
(k*world + r)*micro. So the batch of any step is a pure function of the step: resuming needs no replay, and
a run with 2 ranks sees exactly the sequences of 1 rank with a doubled micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stagekit.io import StageError
from stagekit.shards import ShardReader

IGNORE = -100  # label of a token the loss skips (torch cross_entropy's ignore_index)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] int64
    labels: torch.Tensor  # [B, T] int64, input_ids shifted by one; IGNORE where the loss skips the token
    position_ids: torch.Tensor  # [B, T] int64, restarting at 0 at each document start

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.labels.to(device), self.position_ids.to(device))

    @property
    def num_targets(self) -> int:
        """Labels the loss counts."""
        return int((self.labels != IGNORE).sum())


def open_shards(directory: Path, min_tokens: int, what: str) -> ShardReader:
    """A shard set holding at least `min_tokens` tokens, or a StageError naming the directory."""
    reader = ShardReader(directory)
    if reader.num_tokens < min_tokens:
        raise StageError(
            f"{directory}: {what} shards hold {reader.num_tokens} tokens, fewer than the {min_tokens} needed "
            "(one sequence of seq_len + 1); add data or lower seq_len"
        )
    return reader


def training_sequences(
    directory: Path, seq_len: int, *, seed: int, shuffle: bool, what: str, completion_only: bool = False
) -> PackedSequences:
    reader = open_shards(directory, seq_len + 1, what)
    return PackedSequences(reader, seq_len, seed=seed, shuffle=shuffle, completion_only=completion_only)


def validation_sequences(
    directory: Path, seq_len: int, what: str, completion_only: bool = False
) -> PackedSequences:
    """Validation windows in order; a held-out set shorter than one sequence (a tiny run holding out a single
    short document) is scored as one shorter window rather than not at all."""
    reader = open_shards(directory, 2, what)
    return PackedSequences(
        reader, min(seq_len, reader.num_tokens - 1), seed=0, shuffle=False, completion_only=completion_only
    )


class PackedSequences:
    """Windows of seq_len + 1 tokens over a shard set, in a seeded per-epoch order. completion_only: labels of
    prompt tokens (ShardReader.loss_mask False) are IGNORE, so only completions are learned."""

    def __init__(
        self, reader: ShardReader, seq_len: int, *, seed: int, shuffle: bool, completion_only: bool = False
    ):
        self.reader, self.seq_len, self.seed, self.shuffle = reader, seq_len, seed, shuffle
        self.completion_only = completion_only
        self.num_windows = (reader.num_tokens - 1) // seq_len
        self._orders: dict[int, np.ndarray] = {}

    def window_index(self, g: int) -> int:
        """Which window the run's g-th sequence is."""
        epoch, i = divmod(g, self.num_windows)
        if not self.shuffle:
            return i
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)}
        return int(self._orders[epoch][i])

    def window(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, position_ids) [seq_len + 1] of window w; the window's first token counts as a document start."""
        tokens, positions = self.reader.window(w * self.seq_len, self.seq_len + 1)
        # A document cut by the window start continues at position 0 (RoPE is relative; this keeps angles small).
        restarts = np.flatnonzero(positions == 0)
        lead = int(restarts[0]) if restarts.size else positions.size
        positions = positions.copy()
        positions[:lead] = np.arange(lead)
        return tokens, positions

    def batch(self, windows: list[int]) -> Batch:
        tokens, positions = zip(*(self.window(w) for w in windows))
        tok = torch.from_numpy(np.stack(tokens))
        pos = torch.from_numpy(np.stack(positions))
        labels = tok[:, 1:].clone()
        if self.completion_only:  # label i is token i + 1: it counts when that token does
            counts = np.stack([self.reader.loss_mask(w * self.seq_len, self.seq_len + 1) for w in windows])
            labels[~torch.from_numpy(counts[:, 1:])] = IGNORE
        return Batch(tok[:, :-1].contiguous(), labels, pos[:, :-1].contiguous())


class TrainBatches:
    """Micro-batches of one rank: step s, micro-step k -> that rank's disjoint slice of the step's sequences."""

    def __init__(
        self, sequences: PackedSequences, *, micro_batch: int, accumulation: int, world: int, rank: int
    ):
        self.sequences = sequences
        self.micro, self.accumulation, self.world, self.rank = micro_batch, accumulation, world, rank
        self.global_batch = micro_batch * accumulation * world

    def micro_batch(self, step: int, k: int) -> Batch:
        first = step * self.global_batch + (k * self.world + self.rank) * self.micro
        return self.sequences.batch(
            [self.sequences.window_index(g) for g in range(first, first + self.micro)]
        )

    def position(self, step: int) -> dict:
        """Where the data stream stands before `step` (stored in checkpoints; checked on resume)."""
        consumed = step * self.global_batch
        return {
            "sequences_consumed": consumed,
            "epoch": consumed // self.sequences.num_windows,
            "num_windows": self.sequences.num_windows,
            "seq_len": self.sequences.seq_len,
            "global_batch": self.global_batch,
            "shuffle": self.sequences.shuffle,
        }


def validation_batches(
    sequences: PackedSequences, count: int, *, micro_batch: int, world: int, rank: int
) -> list[Batch]:
    """This rank's share of the first `count` validation windows (in order); every rank gets as many."""
    count = min(count, sequences.num_windows) // world * world
    if count == 0:
        raise StageError(
            f"{sequences.reader.directory}: {sequences.num_windows} validation window(s) of {sequences.seq_len + 1} "
            f"tokens cannot be shared by {world} process(es); add validation data or lower the world size"
        )
    mine = list(range(rank, count, world))
    return [sequences.batch(mine[i : i + micro_batch]) for i in range(0, len(mine), micro_batch)]


# --- data phases (issue 15): a batch source per range of steps ------------------------------------------------


class PhasedBatches:
    """Data phases by step (Phi-3's curriculum): phase i feeds steps [end_(i-1), end_i) from its own shard set,
    starting at that set's first sequence, with the same seed, order rule and rank split as TrainBatches."""

    def __init__(self, phases: list[tuple[int, TrainBatches]]):
        self.phases = phases

    @classmethod
    def like(cls, template: TrainBatches, phases: list[tuple[int, Path]], what: str) -> PhasedBatches:
        """One TrainBatches per (end step, train dir), shaped like `template` (seq_len, seed, batch, ranks)."""
        seq = template.sequences

        def source(i: int, directory: Path) -> TrainBatches:
            sequences = training_sequences(
                directory, seq.seq_len, seed=seq.seed, shuffle=seq.shuffle, what=f"{what} phase {i + 1}",
                completion_only=seq.completion_only,
            )  # fmt: skip
            return TrainBatches(
                sequences, micro_batch=template.micro, accumulation=template.accumulation, world=template.world,
                rank=template.rank,
            )  # fmt: skip

        return cls([(end, source(i, directory)) for i, (end, directory) in enumerate(phases)])

    def _locate(self, step: int) -> tuple[int, TrainBatches, int]:
        """(phase index, its batches, step within the phase); steps past the last end stay in the last phase."""
        start = 0
        for i, (end, batches) in enumerate(self.phases[:-1]):
            if step < end:
                return i, batches, step - start
            start = end
        return len(self.phases) - 1, self.phases[-1][1], step - start

    def micro_batch(self, step: int, k: int) -> Batch:
        _, batches, local = self._locate(step)
        return batches.micro_batch(local, k)

    def position(self, step: int) -> dict:
        phase, batches, local = self._locate(step)
        return {"phase": phase, "phase_ends": [end for end, _ in self.phases], **batches.position(local)}


# --- end data phases ---

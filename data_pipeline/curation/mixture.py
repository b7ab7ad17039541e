"""Stage `shards`: tokenize a weighted mixture of curated inputs and pack it into train/val token shards.

Nothing here holds the mixture's documents or token ids in one process:

1. Tokenize: each executor task (inline: one) tokenizes its share of a component's input (a byte range of a
   JSONL file or its own files of a shard directory) into its own token shard set,
   `shards/_cache/<stage>-<name>/parts/<rank>/`, reused while the input and tokenizer are unchanged; a
   killed run redoes only the tasks that did not finish.
2. Split and weight, streaming over the task sets in rank order (= input order, so the result does not
   depend on the task count): per component a seeded `val_fraction` of the documents (at least one) goes
   to `val/` in input order, chosen with Knuth's selection sampling (Algorithm S: exact count, O(1)
   memory); each other document is repeated by `weight` (2.0 = twice, 0.5 = a seeded half, chosen the same
   way: the "epochs per source" of Pile/Phi-style mixtures).
3. Shuffle in two levels: every training copy goes to one of B bucket files by a seeded draw (B = expected
   training tokens / `shuffle_buffer_tokens`), then the buckets are read back one at a time, each
   shuffled in memory and appended to `train/` by `ShardWriter`. Random buckets plus a uniform order
   within each is a uniform shuffle of the whole mixture; memory is one bucket. (The trainer then samples
   windows in its own seeded order.)
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_pipeline.curation.common import fresh
from data_pipeline.curation.executor import Batch, DocumentWorker, run_parts
from recipes import Recipe, to_dict
from recipes.curation import ExecutorConfig, MixtureComponent, ShardsConfig
from stagekit.io import StageError, atomic_path, sha256_file, write_manifest
from stagekit.shards import ShardWriter, iter_documents, read_index, token_dtype

# Version 3: per-task token shards, streaming split, bucketed shuffle (2: prompt tokens).
STAGE, VERSION = "shards", "3"


def load_tokenizer(tokenizer_dir: Path):
    """(fast tokenizer, vocabulary size with added tokens, eos id) of an HF tokenizer directory, read with
    `tokenizers` alone: importing transformers (and with it torch) costs seconds in every task process."""
    from tokenizers import Tokenizer

    path = Path(tokenizer_dir)
    if not (path / "tokenizer.json").is_file():
        raise StageError(f"{path}: no tokenizer.json (run the tokenizer stage first)")
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    eos = None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if eos is None and (path / name).is_file():
            eos = json.loads((path / name).read_text(encoding="utf-8")).get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    eos_id = tok.token_to_id(eos) if isinstance(eos, str) else None
    if eos_id is None:
        raise StageError(f"{path}: tokenizer has no eos token")
    return tok, tok.get_vocab_size(with_added_tokens=True), eos_id


def prompt_prefix(record: dict) -> str:
    """The record's `prompt` when its `text` renders as prompt + completion (exercises do), else ""."""
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        return ""
    if not record["text"].startswith(prompt):
        raise StageError(
            f"record {record.get('id', '?')}: its `prompt` is not a prefix of its `text`; mask_prompt needs "
            "text = prompt + completion"
        )
    return prompt


@dataclass
class TokenizeWorker(DocumentWorker):
    tokenizer_dir: str
    tokenizer_sha256: str  # in the fingerprint: another tokenizer invalidates cached parts
    mask_prompt: bool = False
    shard_tokens: int = 1 << 26

    part_suffix = ""  # each task's part is a token shard directory

    def setup(self) -> None:
        self._tok, self._vocab_size, self._eot = load_tokenizer(Path(self.tokenizer_dir))

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def process(self, records: list[dict]) -> list[list]:
        """[token ids, leading prompt tokens] per record."""
        texts = [r["text"] for r in records]
        if not self.mask_prompt:
            return [[ids, 0] for ids in self._encode(texts)]
        # Prompt and completion are encoded apart so the prompt's token count is exact (a merge across
        # the boundary would blur it), as chat-template SFT does.
        prompts = [prompt_prefix(r) for r in records]
        heads = self._encode(prompts)
        tails = self._encode([t[len(p) :] for t, p in zip(texts, prompts)])
        return [[h + t, len(h)] for h, t in zip(heads, tails)]

    def write_part(self, tmp: Path, batches: Iterator[Batch]) -> None:
        with ShardWriter(
            tmp,
            vocab_size=self._vocab_size,
            eot_id=self._eot,
            shard_tokens=self.shard_tokens,
            allow_empty=True,
        ) as writer:
            for batch in batches:
                for ids, prompt_tokens in batch.results:
                    if ids:  # an empty text would become a lone eot
                        writer.add_document(ids, prompt_tokens=prompt_tokens)
            writer.close()


@dataclass
class Tokenized:
    """One component's token shard sets, one per task in rank order (= input order)."""

    component: MixtureComponent
    parts: list[Path]
    documents: int
    tokens: int

    def documents_in_order(self) -> Iterator[tuple[np.ndarray, int]]:
        return chain.from_iterable(iter_documents(p) for p in self.parts)


def tokenize_component(
    path: Path, comp: MixtureComponent, tokenizer_dir: Path, work_dir: Path, executor: ExecutorConfig,
    cfg: ShardsConfig, resume,
) -> Tokenized:  # fmt: skip
    """Token shards of one component, written by the executor's tasks (finished tasks are reused)."""
    worker = TokenizeWorker(
        str(tokenizer_dir), sha256_file(tokenizer_dir / "tokenizer.json"), comp.mask_prompt, cfg.shard_tokens
    )
    parts = run_parts(path, worker, executor, work_dir, cfg.batch_size, ("text",), resume)
    indexes = [read_index(p) for p in parts]
    documents = sum(i["num_documents"] for i in indexes)
    if documents < 2:
        raise StageError(
            f"component '{comp.name}' needs at least 2 documents for a train/val split, got {documents}"
        )
    return Tokenized(comp, parts, documents, sum(i["num_tokens"] for i in indexes))


class SplitPlan:
    """Per document, in input order: held out for validation (None) or how many training copies.

    Exact counts in one pass with O(1) state (Knuth's Algorithm S): n_val = val_fraction of the documents
    (at least 1, at most all but 1), and round(frac(weight) * training documents) of them get one copy
    more than floor(weight).
    """

    def __init__(self, comp: MixtureComponent, documents: int, val_fraction: float, rng: random.Random):
        self.rng = rng
        self.val = min(documents - 1, max(1, round(val_fraction * documents)))
        self.train = documents - self.val
        self.whole = math.floor(comp.weight)
        self.extra = round((comp.weight - self.whole) * self.train)
        self._left, self._val_left = documents, self.val
        self._train_left, self._extra_left = self.train, self.extra

    def copies(self) -> int | None:
        held_out = self.rng.random() * self._left < self._val_left
        self._left -= 1
        if held_out:
            self._val_left -= 1
            return None
        extra = self._extra_left > 0 and self.rng.random() * self._train_left < self._extra_left
        self._train_left -= 1
        self._extra_left -= extra
        return self.whole + extra


class Buckets:
    """Training copies scattered to `count` bucket files (tokens + [length, prompt tokens, source] rows),
    buffered in memory up to FLUSH bytes per bucket and TOTAL overall; read back one bucket at a time."""

    FLUSH, TOTAL = 1 << 20, 1 << 26

    def __init__(self, directory: Path, count: int, dtype: np.dtype):
        self.directory, self.count, self.dtype = directory, count, dtype
        directory.mkdir(parents=True)
        self._tokens: list[list[bytes]] = [[] for _ in range(count)]
        self._meta: list[list[tuple[int, int, int]]] = [[] for _ in range(count)]
        self._bytes = [0] * count
        self._total = 0

    def add(self, bucket: int, tokens: np.ndarray, prompt_tokens: int, source: int) -> None:
        data = tokens.astype(self.dtype, copy=False).tobytes()  # a copy: the shard buffer is not kept
        self._tokens[bucket].append(data)
        self._meta[bucket].append((tokens.size, prompt_tokens, source))
        self._bytes[bucket] += len(data)
        self._total += len(data)
        if self._bytes[bucket] >= self.FLUSH:
            self._flush(bucket)
        if self._total >= self.TOTAL:
            for b in range(self.count):
                self._flush(b)

    def _flush(self, bucket: int) -> None:
        if not self._meta[bucket]:
            return
        with open(self.directory / f"{bucket:05d}.bin", "ab") as f:
            f.write(b"".join(self._tokens[bucket]))
        with open(self.directory / f"{bucket:05d}.meta", "ab") as f:
            f.write(np.asarray(self._meta[bucket], dtype=np.int64).tobytes())
        self._total -= self._bytes[bucket]
        self._tokens[bucket], self._meta[bucket], self._bytes[bucket] = [], [], 0

    def load(self, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, [n, 3] rows) of one bucket; flushes it first."""
        self._flush(bucket)
        path = self.directory / f"{bucket:05d}.bin"
        if not path.is_file():
            return np.empty(0, self.dtype), np.empty((0, 3), np.int64)
        meta = np.fromfile(self.directory / f"{bucket:05d}.meta", dtype=np.int64).reshape(-1, 3)
        return np.fromfile(path, dtype=self.dtype), meta


def bucket_count(sources: list[Tokenized], cfg: ShardsConfig) -> int:
    """Shuffle buckets: the expected training tokens in pieces of about shuffle_buffer_tokens."""
    expected = sum(s.tokens * s.component.weight * (1 - cfg.val_fraction) for s in sources)
    return max(1, math.ceil(expected / cfg.shuffle_buffer_tokens))


def pack(
    sources: list[Tokenized],
    out: Path,
    stage: str,
    seed: int,
    cfg: ShardsConfig,
    vocab_size: int,
    eot_id: int,
) -> tuple[dict, list[dict]]:
    """Write `out`/{val,train}/ from the components' token shards; returns (split indexes, mixture rows)."""
    dtype = token_dtype(vocab_size)
    count = bucket_count(sources, cfg)
    order = random.Random(f"{seed}:{stage}:order")
    buckets = Buckets(out / "_buckets", count, dtype)
    names = [s.component.name for s in sources]
    mixture = []

    def writer(split: str) -> ShardWriter:
        return ShardWriter(out / split, vocab_size=vocab_size, eot_id=eot_id, shard_tokens=cfg.shard_tokens)

    with writer("val") as val:
        for i, src in enumerate(sources):
            # A seed per (recipe seed, stage, component): adding a component does not change the others' splits.
            digest = hashlib.sha256(f"{seed}:{stage}:{src.component.name}".encode()).hexdigest()
            plan = SplitPlan(src.component, src.documents, cfg.val_fraction, random.Random(digest))
            desc = f"split[{stage}/{names[i]}]"
            for tokens, prompt in tqdm(
                src.documents_in_order(), desc=desc, total=src.documents, unit="doc", dynamic_ncols=True
            ):
                copies = plan.copies()
                if copies is None:
                    val.add_document(tokens, source=names[i], prompt_tokens=prompt)
                for _ in range(copies or 0):
                    buckets.add(order.randrange(count), tokens, prompt, i)
            mixture.append(
                {
                    "name": names[i],
                    "weight": src.component.weight,
                    "documents": src.documents,
                    "tokens_once": src.tokens,
                    "tasks": len(src.parts),
                    "train_documents": plan.train * plan.whole + plan.extra,  # copies packed, weight applied
                    "val_documents": plan.val,
                }
            )
        indexes = {"val": val.close()}
    with (
        writer("train") as train,
        tqdm(desc=f"shuffle[{stage}]", total=count, unit="bucket", dynamic_ncols=True) as bar,
    ):
        for b in range(count):
            tokens, meta = buckets.load(b)
            ends = np.cumsum(meta[:, 0])
            perm = list(range(len(meta)))
            order.shuffle(perm)
            for j in perm:
                length, prompt, source = meta[j].tolist()
                train.add_document(
                    tokens[ends[j] - length : ends[j]], source=names[source], prompt_tokens=prompt
                )
            bar.update()
        indexes["train"] = train.close()
    shutil.rmtree(out / "_buckets")
    return indexes, mixture


def run_shards(
    recipe: Recipe,
    stage: str,
    components: list[tuple[MixtureComponent, Path]],
    tokenizer_dir: Path,
    output: Path,
    *,
    force: bool = False,
) -> dict:
    """Pack `components` ((config, curated JSONL file or shard directory) pairs) into `output`/{train,val}/;
    returns the manifest."""
    cfg = recipe.data.curation.shards
    if not components:
        raise StageError(f"[{STAGE}] mixture '{stage}' has no components")
    if len({c.name for c, _ in components}) != len(components):
        raise StageError(f"[{STAGE}] mixture '{stage}': component names must be unique")
    tokenizer_dir, output = Path(tokenizer_dir), Path(output)
    inputs = [Path(p) for _, p in components] + [tokenizer_dir]
    params = {
        "stage": stage,
        "components": [{**to_dict(c), "input": str(p)} for c, p in components],
        "val_fraction": cfg.val_fraction,
        "shard_tokens": cfg.shard_tokens,
        "shuffle_buffer_tokens": cfg.shuffle_buffer_tokens,
        "seed": recipe.seed,
    }
    if manifest := fresh(output, stage=STAGE, version=VERSION, params=params, inputs=inputs, force=force):
        return manifest
    started = time.time()
    _, vocab_size, eot_id = load_tokenizer(tokenizer_dir)
    executor = recipe.data.curation.executor
    resume = functools.partial(run_shards, recipe, stage, components, tokenizer_dir, output, force=True)
    sources = [
        tokenize_component(
            Path(path), comp, tokenizer_dir, output.parent / "_cache" / f"{stage}-{comp.name}", executor, cfg, resume
        )
        for comp, path in components
    ]  # fmt: skip
    for leftover in output.parent.glob(f".{output.name}.*.tmp"):  # a killed packing run's temporary output
        shutil.rmtree(leftover)
    with atomic_path(output) as tmp:
        indexes, mixture = pack(sources, tmp, stage, recipe.seed, cfg, vocab_size, eot_id)
    keys = ("num_tokens", "num_documents", "prompt_tokens", "tokens_per_source", "documents_per_source")
    splits = {
        split: {**{k: index[k] for k in keys}, "shard_sha256": [s["sha256"] for s in index["shards"]]}
        for split, index in indexes.items()
    }
    total = splits["train"]["num_tokens"]
    for m in mixture:
        m["train_tokens"] = splits["train"]["tokens_per_source"].get(m["name"], 0)
        m["train_share"] = round(m["train_tokens"] / total, 4) if total else 0.0
    return write_manifest(
        output,
        stage=STAGE,
        version=VERSION,
        params=params,
        inputs=inputs,
        counts={
            split: {"documents": s["num_documents"], "tokens": s["num_tokens"]} for split, s in splits.items()
        },
        started=started,
        extra={
            "splits": splits,
            "mixture": mixture,
            "shuffle_buckets": bucket_count(sources, cfg),
            "vocab_size": vocab_size,
            "eot_id": eot_id,
            "tokenizer": str(tokenizer_dir),
        },
    )

"""Stage `shards`: tokenize a weighted mixture of JSONL sources and pack it into train/val token shards.

1. Each component is tokenized once, streaming (inline with the Rust tokenizer's batch encoder, or as
   datatrove tasks), into a per-component shard cache `shards/_cache/<stage>-<name>/`.
2. Per component a seeded `val_fraction` of documents (at least one) is held out; the rest is repeated
   by `weight` (2.0 = twice, 0.5 = a seeded half: the "epochs per source" of Pile/Phi-style mixtures).
3. The train entries of all components are shuffled together (seeded) and written, with `eot` after each
   document, by `ShardWriter` to `shards/<stage>/train/`; validation documents to `shards/<stage>/val/`.
Only document indices are held in memory; tokens stay in memory-mapped shards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from data_pipeline.curation.common import fresh
from data_pipeline.curation.executor import DocumentWorker, map_documents
from recipes import Recipe, to_dict
from recipes.curation import ExecutorConfig, MixtureComponent
from stagekit.io import StageError, atomic_path, sha256_file, write_json, write_manifest
from stagekit.shards import ShardReader, ShardWriter

STAGE, VERSION = "shards", "2"  # 2: per-document prompt tokens (mask_prompt)


def load_tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise StageError(f"{tokenizer_dir}: no tokenizer.json (run the tokenizer stage first)")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tok.eos_token_id is None:
        raise StageError(f"{tokenizer_dir}: tokenizer has no eos token")
    return tok


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

    def setup(self) -> None:
        self._tok = load_tokenizer(Path(self.tokenizer_dir)).backend_tokenizer

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


def tokenize_component(
    path: Path,
    comp: MixtureComponent,
    tokenizer_dir: Path,
    cache: Path,
    executor: ExecutorConfig,
    batch_size: int,
    resume,
) -> ShardReader:
    """Token cache of one component (reused when the input and tokenizer are unchanged)."""
    tok = load_tokenizer(tokenizer_dir)
    key = {
        "input": str(path),
        "input_sha256": sha256_file(path),
        "tokenizer_sha256": sha256_file(tokenizer_dir / "tokenizer.json"),
        "mask_prompt": comp.mask_prompt,
    }
    if (cache / "source.json").is_file() and json.loads((cache / "source.json").read_text()) == key:
        return ShardReader(cache)
    (cache / "source.json").unlink(missing_ok=True)
    name = comp.name
    worker = TokenizeWorker(str(tokenizer_dir), key["tokenizer_sha256"], comp.mask_prompt)
    work_dir = cache.parent / f"_datatrove-{cache.name}"
    desc = f"tokenize[{name}]"
    pairs = map_documents(
        path, worker, executor, work_dir=work_dir, batch_size=batch_size, desc=desc, resume=resume
    )
    with (
        ShardWriter(cache, vocab_size=len(tok), eot_id=tok.eos_token_id) as writer,
        tqdm(desc=f"tokens[{name}]", unit="tok", unit_scale=True, dynamic_ncols=True) as bar,
    ):
        for _, (ids, prompt_tokens) in pairs:
            if ids:  # an empty text would become a lone eot
                writer.add_document(ids, source=name, prompt_tokens=prompt_tokens)
                bar.update(len(ids) + 1)
        writer.close()  # refuses an empty set
    write_json(cache / "source.json", key)
    return ShardReader(cache)


def split_and_weight(
    comp: MixtureComponent, num_docs: int, val_fraction: float, rng: random.Random
) -> tuple[list[int], list[int]]:
    """(train document indices with repeats, validation indices) for one component."""
    if num_docs < 2:
        raise StageError(
            f"component '{comp.name}' needs at least 2 documents for a train/val split, got {num_docs}"
        )
    weight = comp.weight
    order = list(range(num_docs))
    rng.shuffle(order)
    n_val = min(num_docs - 1, max(1, round(val_fraction * num_docs)))
    val, train = sorted(order[:n_val]), sorted(order[n_val:])
    whole, part = math.floor(weight), weight - math.floor(weight)
    repeated = train * whole + sorted(rng.sample(train, round(part * len(train))))
    return repeated, val


def run_shards(
    recipe: Recipe,
    stage: str,
    components: list[tuple[MixtureComponent, Path]],
    tokenizer_dir: Path,
    output: Path,
    *,
    force: bool = False,
) -> dict:
    """Pack `components` ((config, curated JSONL) pairs) into `output`/{train,val}/; returns the manifest."""
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
        "seed": recipe.seed,
    }
    if manifest := fresh(output, stage=STAGE, version=VERSION, params=params, inputs=inputs, force=force):
        return manifest
    started = time.time()
    tok = load_tokenizer(tokenizer_dir)
    readers = {}
    executor = recipe.data.curation.executor
    resume = functools.partial(run_shards, recipe, stage, components, tokenizer_dir, output, force=True)
    for comp, path in components:
        cache = output.parent / "_cache" / f"{stage}-{comp.name}"
        readers[comp.name] = tokenize_component(
            Path(path), comp, tokenizer_dir, cache, executor, cfg.batch_size, resume
        )
    # A seed per (recipe seed, stage, component): adding a component does not reshuffle the others' splits.
    train_entries, val_entries, mixture = [], [], []
    for comp, _ in components:
        digest = hashlib.sha256(f"{recipe.seed}:{stage}:{comp.name}".encode()).hexdigest()
        reader = readers[comp.name]
        train, val = split_and_weight(comp, reader.num_documents, cfg.val_fraction, random.Random(digest))
        train_entries += [(comp.name, i) for i in train]
        val_entries += [(comp.name, i) for i in val]
        mixture.append(
            {
                "name": comp.name,
                "weight": comp.weight,
                "documents": reader.num_documents,
                "tokens_once": reader.num_tokens,
                "train_documents": len(train),
                "val_documents": len(val),
            }
        )
    random.Random(f"{recipe.seed}:{stage}:order").shuffle(train_entries)
    splits = {}
    with atomic_path(output) as tmp:
        for split, entries in (("train", train_entries), ("val", val_entries)):
            with ShardWriter(
                tmp / split, vocab_size=len(tok), eot_id=tok.eos_token_id, shard_tokens=cfg.shard_tokens
            ) as w:
                for name, i in tqdm(entries, desc=f"pack[{stage}/{split}]", unit="doc", dynamic_ncols=True):
                    reader = readers[name]
                    prompt = int(reader.doc_prompt_tokens[i])
                    w.add_document(reader.document(i), source=name, prompt_tokens=prompt)
                index = w.close()
            splits[split] = {
                k: index[k]
                for k in (
                    "num_tokens",
                    "num_documents",
                    "prompt_tokens",
                    "tokens_per_source",
                    "documents_per_source",
                )
            }
            splits[split]["shard_sha256"] = [s["sha256"] for s in index["shards"]]
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
            "vocab_size": len(tok),
            "eot_id": tok.eos_token_id,
            "tokenizer": str(tokenizer_dir),
        },
    )

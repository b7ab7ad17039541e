"""Stage `tokenizer`: a byte-level BPE (HF `tokenizers`) trained on the curated corpus, saved in HF format.

Byte-level BPE (GPT-2 style: every byte is in the base alphabet, so any text round-trips exactly) with
`<|endoftext|>` as eos/bos/document separator and `<|pad|>` for padding. The directory loads with
`transformers.AutoTokenizer.from_pretrained`. Or `pretrained_dir` copies an existing local HF tokenizer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from data_pipeline.curation.common import fresh
from data_pipeline.curation.corpus import read_input
from recipes import Recipe, to_dict
from recipes.curation import TokenizerConfig
from stagekit.io import StageError, atomic_path, write_manifest

STAGE, VERSION = "tokenizer", "1"


def iter_texts(paths: list[Path], limit: int = 0) -> Iterator[str]:
    texts = (r["text"] for p in paths for _, r in read_input(p, ("text",)))
    return islice(texts, limit) if limit else texts


def train_bpe(texts: Iterator[str], cfg: TokenizerConfig):
    """A `tokenizers.Tokenizer` trained on `texts` (streamed)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[cfg.eos_token, cfg.pad_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def to_hf(tok, cfg: TokenizerConfig):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=cfg.eos_token,
        eos_token=cfg.eos_token,
        pad_token=cfg.pad_token,
        model_max_length=cfg.model_max_length,
        clean_up_tokenization_spaces=False,  # decode must give back the exact text
    )


def load_pretrained(path: Path):
    from transformers import AutoTokenizer

    if not path.is_dir():
        raise StageError(f"{path}: tokenizer.pretrained_dir is not a directory")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.eos_token_id is None:
        raise StageError(f"{path}: the tokenizer has no eos token (needed between packed documents)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def run_tokenizer(recipe: Recipe, inputs: list[Path], output: Path, *, force: bool = False) -> dict:
    """Train (or copy) the tokenizer into the HF directory `output`; returns the manifest."""
    cfg = recipe.data.curation.tokenizer
    inputs = [Path(p) for p in inputs] if not cfg.pretrained_dir else [Path(cfg.pretrained_dir)]
    params = to_dict(cfg)
    if manifest := fresh(output, stage=STAGE, version=VERSION, params=params, inputs=inputs, force=force):
        return manifest
    started = time.time()
    if cfg.pretrained_dir:
        hf = load_pretrained(Path(cfg.pretrained_dir))
        documents = 0
    else:
        counted = _Counting(iter_texts(inputs, cfg.max_documents))
        hf = to_hf(train_bpe(counted, cfg), cfg)
        documents = counted.n
        if documents == 0:
            raise StageError(
                f"[{STAGE}] no documents in {', '.join(map(str, inputs))}; cannot train a tokenizer"
            )
    with atomic_path(output) as tmp:
        hf.save_pretrained(tmp)
    return write_manifest(
        output,
        stage=STAGE,
        version=VERSION,
        params=params,
        inputs=inputs,
        counts={"documents": documents, "vocab_size": len(hf)},
        started=started,
        extra={"eos_token": hf.eos_token, "eos_token_id": hf.eos_token_id, "pad_token_id": hf.pad_token_id},
    )


class _Counting:
    """Iterator wrapper counting the documents the trainer consumed."""

    def __init__(self, it: Iterator[str]):
        self.it, self.n = it, 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        text = next(self.it)
        self.n += 1
        return text

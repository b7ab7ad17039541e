"""Batched text completion for code benchmarks, from any local causal-LM directory.

Our exported checkpoints (HF LlamaForCausalLM) run on `modeling.Transformer` and its KV-cached, left-padded
`generate`; other architectures fall back to transformers' `generate`. Prompts are sorted by length so a
batch pads little, and cut on the left when prompt + budget would exceed the model's context.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from stagekit.io import StageError

Backend = Literal["auto", "modeling", "transformers"]


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()


@dataclass
class GenerationStats:
    prompts: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    truncated_prompts: int = 0  # prompts cut on the left to fit the context window

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def truncate_at_stop(text: str, stop: tuple[str, ...] | list[str]) -> str:
    """Cut at the earliest stop sequence (Codex-style truncation); the stop itself is dropped."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


def set_threads(threads: int) -> None:
    """Process-wide torch CPU threads for evaluation (0 keeps torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Generator:
    """Completes raw text prompts with the model in `model_dir` (weights + tokenizer)."""

    def __init__(self, model_dir: str | Path, backend: Backend = "auto", device: str = "auto"):
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        config_path = self.model_dir / "config.json"
        if not config_path.is_file():
            raise StageError(
                f"{self.model_dir}: not a model directory (no config.json); export the checkpoint first"
            )
        config = json.loads(config_path.read_text(encoding="utf-8"))
        self.device = resolve_device(device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.context = int(config.get("max_position_embeddings") or 2048)
        self.eos_id = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)
        is_llama = "LlamaForCausalLM" in config.get("architectures", [])
        if backend == "modeling" or (backend == "auto" and is_llama):
            from modeling import Transformer

            self.backend = "modeling"
            self.model = Transformer.from_pretrained(self.model_dir, dtype=dtype, device=self.device).eval()
        else:
            from transformers import AutoModelForCausalLM

            self.backend = "transformers"
            self.model = (
                AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(self.device).eval()
            )

    def complete(
        self,
        prompts: list[str],
        decoding: Decoding,
        *,
        n: int = 1,
        batch_size: int = 16,
        seed: int = 0,
        desc: str = "generate",
    ) -> tuple[list[list[str]], GenerationStats]:
        """`n` completions per prompt, each cut at the first stop sequence; plus throughput numbers."""
        budget = self.context - decoding.max_new_tokens
        if budget < 1:
            raise StageError(
                f"max_new_tokens={decoding.max_new_tokens} leaves no room in the {self.context}-token context"
            )
        stats = GenerationStats(prompts=len(prompts) * n)
        encoded = []
        for text in prompts:
            ids = self.tokenizer(text).input_ids
            stats.truncated_prompts += len(ids) > budget
            encoded.append(ids[-budget:])
        jobs = [(i, s) for i in range(len(prompts)) for s in range(n)]
        jobs.sort(key=lambda job: -len(encoded[job[0]]))  # similar lengths share a batch: little padding
        out: list[list[str]] = [[""] * n for _ in prompts]
        start = time.perf_counter()
        with tqdm(total=len(jobs), desc=desc, unit="prompt") as bar:
            for b in range(0, len(jobs), batch_size):
                batch = jobs[b : b + batch_size]
                new = self._generate([encoded[i] for i, _ in batch], decoding, seed=seed * 1_000_003 + b)
                for (i, s), tokens in zip(batch, new):
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                    out[i][s] = truncate_at_stop(text, decoding.stop)
                    stats.new_tokens += len(tokens)
                stats.seconds = time.perf_counter() - start
                bar.update(len(batch))
                bar.set_postfix(tok_per_s=f"{stats.tokens_per_second:.0f}")
        return out, stats

    @torch.no_grad()
    def _generate(self, batch: list[list[int]], decoding: Decoding, seed: int) -> list[list[int]]:
        """New token ids per prompt, without the end-of-sequence token or anything after it."""
        if self.backend == "modeling":
            return self.model.generate(
                batch,
                decoding.max_new_tokens,
                temperature=decoding.temperature,
                top_p=decoding.top_p,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
                stop_strings=decoding.stop,
                tokenizer=self.tokenizer if decoding.stop else None,
                seed=seed,
            )
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor(
            [[self.pad_id] * (width - len(ids)) + ids for ids in batch], device=self.device
        )
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.device)
        sampling = {"do_sample": False}
        if decoding.temperature > 0:
            torch.manual_seed(seed)
            sampling = {"do_sample": True, "temperature": decoding.temperature, "top_p": decoding.top_p}
        sequences = self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=decoding.max_new_tokens,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
            stop_strings=list(decoding.stop) or None,
            tokenizer=self.tokenizer,
            **sampling,
        )
        result = []
        for row in sequences[:, width:].tolist():
            result.append(row[: row.index(self.eos_id)] if self.eos_id in row else row)
        return result

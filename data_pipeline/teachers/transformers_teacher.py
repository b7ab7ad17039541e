"""Local teacher: a Hugging Face causal LM (directory or GGUF file) sampled in left-padded batches."""

from __future__ import annotations

import contextlib
from pathlib import Path

from data_pipeline.teachers.base import Completion, Messages, Sampling, Teacher
from stagekit.io import StageError


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one was found (OpenAI servers drop it too)."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


@contextlib.contextmanager
def _torch_threads(n: int):
    """Use n intra-op threads inside the block (0: leave as is); the setting is process-wide, so restore it."""
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TransformersTeacher(Teacher):
    def __init__(
        self, model: str | Path = "", *, device: str = "auto", dtype: str = "float32", threads: int = 0
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from stagekit.assets import smollm2_dir

        self.threads = threads
        path = Path(model) if model else smollm2_dir()
        if not path.exists():
            raise StageError(f"teacher model not found: {path} (data.generation.teacher.model)")
        # A GGUF file is dequantized by transformers on load; a directory loads as is.
        where, kwargs = (path.parent, {"gguf_file": path.name}) if path.is_file() else (path, {})
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        self.tokenizer.padding_side = "left"  # decoder-only batches must end at the same position
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.model = (
            AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **kwargs).to(device).eval()
        )
        eos = self.model.generation_config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or [self.tokenizer.eos_token_id])
        # Rows that finish early are filled with pad: it ends a completion just like EOS.
        self.end_ids = eos_ids | {self.tokenizer.pad_token_id}
        self.device = device
        self.name = f"transformers:{path.name}"

    def complete(self, batch: list[Messages], sampling: Sampling) -> list[Completion]:
        import torch

        if not batch:
            return []
        texts = [
            self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in batch
        ]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )
        sample = sampling.temperature > 0
        extra = {"temperature": sampling.temperature, "top_p": sampling.top_p} if sample else {}
        if sampling.stop:
            extra.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        # fork_rng keeps the seed local to this call: same batch + seed -> same completions.
        with (
            _torch_threads(self.threads),
            torch.random.fork_rng(devices=[] if self.device == "cpu" else None),
            torch.inference_mode(),
        ):
            torch.manual_seed(sampling.seed)
            out = self.model.generate(
                **enc,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=sample,
                pad_token_id=self.tokenizer.pad_token_id,
                **extra,
            )
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        results = []
        for tokens, prompt_len in zip(new, prompt_lens):
            end = next((i for i, t in enumerate(tokens) if t in self.end_ids), None)
            kept = tokens if end is None else tokens[:end]
            text, stopped = cut_at_stop(self.tokenizer.decode(kept, skip_special_tokens=True), sampling.stop)
            finish = "stop" if end is not None or stopped or len(kept) < sampling.max_new_tokens else "length"
            results.append(
                Completion(text, finish, prompt_tokens=int(prompt_len), completion_tokens=len(kept))
            )
        return results

    def close(self) -> None:
        self.model = None

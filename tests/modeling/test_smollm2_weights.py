"""Real weights: SmolLM2-135M-Instruct loaded by us vs. by transformers (logits and greedy generation)."""

from __future__ import annotations

import pytest
import torch

from modeling import Transformer

TEXT = (
    "Photosynthesis converts light energy into chemical energy. In Python, a list comprehension such as "
    "[x * x for x in range(10)] builds a new list from an iterable."
)
QUESTIONS = ["What is the capital of France?", "Write a Python function that returns the square of a number."]


@pytest.fixture(scope="module")
def chat_prompts(smollm2_tokenizer) -> list[list[int]]:
    return [
        smollm2_tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False
        )
        for q in QUESTIONS
    ]


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
@torch.no_grad()
def test_logits_match_transformers(smollm2_path, smollm2_hf, smollm2_tokenizer, backend):
    ours = Transformer.from_pretrained(smollm2_path)
    ours.config.attention = backend
    ids = smollm2_tokenizer(TEXT, return_tensors="pt").input_ids
    # Measured: 0 for sdpa (same kernel as transformers), ~5e-5 for reference (logits reach ~20 in magnitude).
    diff = (ours(ids) - smollm2_hf(ids).logits).abs().max().item()
    assert diff <= 1e-4, f"max abs logit diff {diff:.2e}"


def test_greedy_generation_matches_transformers(smollm2_ours, smollm2_hf, smollm2_tokenizer, chat_prompts):
    eos = smollm2_tokenizer.eos_token_id
    ours = smollm2_ours.generate(
        chat_prompts, 20, eos_token_id=eos, pad_token_id=smollm2_tokenizer.pad_token_id
    )
    for prompt, new in zip(chat_prompts, ours):
        ref = smollm2_hf.generate(
            torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=eos, pad_token_id=eos
        )[0, len(prompt) :].tolist()
        assert new == (ref[: ref.index(eos)] if eos in ref else ref)  # ours excludes eos
    assert "Paris" in smollm2_tokenizer.decode(ours[0])


def test_stop_strings(smollm2_ours, smollm2_tokenizer, chat_prompts):
    out = smollm2_ours.generate(
        chat_prompts[1:],
        40,
        eos_token_id=smollm2_tokenizer.eos_token_id,
        stop_strings=["return"],
        tokenizer=smollm2_tokenizer,
    )[0]
    text = smollm2_tokenizer.decode(out)
    assert "return" in text and "return" not in smollm2_tokenizer.decode(out[:-1])  # stopped on that token

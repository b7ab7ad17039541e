"""Per-item log-likelihoods for metrics that move at small scale: bits per byte of a text given its context.

Two kinds of items, each scored as continuation | context with lm-eval's conventions (so a number here equals
lm-eval's `loglikelihood` of the same pair):
- code problems: the canonical solution of HumanEval / MBPP given its prompt (the prompt's trailing whitespace
  moves to the continuation, the pair is encoded whole and split at the context's token count);
- held-out documents: the first `max_tokens` tokens of a document given the end-of-text token, i.e. as the
  model met documents in packed training data.
Bits per byte = sum of negative log-likelihoods (nats) / (ln 2 x UTF-8 bytes of the scored text): it does not
depend on the tokenizer, so models with different vocabularies compare. Every item's numbers are kept, so
confidence intervals can be bootstrapped over items (eval/ablation.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from stagekit.io import StageError


@dataclass
class Item:
    """One scored text: `context_ids` condition `target_ids`, whose text is `num_bytes` UTF-8 bytes long."""

    id: str
    context_ids: list[int]
    target_ids: list[int]
    num_bytes: int


@dataclass
class Score:
    id: str
    nll: float  # summed negative log-likelihood of the target tokens, nats
    tokens: int
    bytes: int

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (math.log(2) * self.bytes)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def problem_item(tokenizer, item_id: str, prompt: str, solution: str) -> Item:
    """The solution given the prompt, split as lm-eval's `_encode_pair` does for causal models."""
    if not prompt or not solution:
        raise StageError(f"{item_id}: a code problem needs a non-empty prompt and solution")
    spaces = len(prompt) - len(prompt.rstrip())
    context, target = (prompt[:-spaces], prompt[-spaces:] + solution) if spaces else (prompt, solution)
    context_ids = _encode(tokenizer, context)
    whole = _encode(tokenizer, context + target)
    return Item(item_id, context_ids, whole[len(context_ids) :], len(target.encode("utf-8")))


def document_item(tokenizer, item_id: str, text: str, max_tokens: int) -> Item:
    """The first `max_tokens` tokens of a document after the end-of-text token (its packed-training context)."""
    ids = _encode(tokenizer, text)[:max_tokens]
    if not ids:
        raise StageError(f"{item_id}: empty document")
    return Item(item_id, [tokenizer.eos_token_id], ids, len(tokenizer.decode(ids).encode("utf-8")))


def load_model(model_dir: str | Path, device: str = "cpu"):
    """Any local HF causal LM (our exports load as LlamaForCausalLM) in fp32, eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.to(device).eval()


@torch.no_grad()
def score_items(model, items: list[Item], *, batch_size: int = 8, desc: str = "bpb") -> list[Score]:
    """Summed NLL of each item's target tokens. Like lm-eval, an item longer than the context keeps its last
    max_len + 1 tokens (the context is cut on the left); a target longer than the context is an error."""
    max_len = int(model.config.max_position_embeddings)
    device = next(model.parameters()).device
    rows = []
    for item in items:
        if not 0 < len(item.target_ids) <= max_len:
            raise StageError(
                f"{item.id}: {len(item.target_ids)} target tokens do not fit a {max_len}-token context"
            )
        ids = (item.context_ids + item.target_ids)[-(max_len + 1) :]
        rows.append((item, ids[:-1], ids[len(ids) - len(item.target_ids) :]))
    # Longest first so padding stays small; results go back in input order.
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][1]))
    scores: list[Score | None] = [None] * len(rows)
    bar = tqdm(total=sum(len(r[2]) for r in rows), desc=desc, unit="tok", unit_scale=True, dynamic_ncols=True)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(rows[i][1]) for i in chunk)
        inputs = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, i in enumerate(chunk):  # right padding: real tokens keep positions 0..n-1
            n = len(rows[i][1])
            inputs[row, :n] = torch.tensor(rows[i][1])
            mask[row, :n] = 1
        logprobs = (
            model(input_ids=inputs.to(device), attention_mask=mask.to(device)).logits.float().log_softmax(-1)
        )
        for row, i in enumerate(chunk):
            item, inp, target = rows[i]
            t = len(target)
            picked = logprobs[row, len(inp) - t : len(inp)].gather(
                -1, torch.tensor(target, device=device)[:, None]
            )
            scores[i] = Score(item.id, -float(picked.sum()), t, item.num_bytes)
            bar.update(t)
    bar.close()
    return scores


def summarize(scores: list[Score]) -> dict:
    """Pooled metrics of a set: bits per byte and nats per token (ratios of sums, not means of ratios)."""
    nll = sum(s.nll for s in scores)
    tokens, num_bytes = sum(s.tokens for s in scores), sum(s.bytes for s in scores)
    return {
        "items": len(scores),
        "tokens": tokens,
        "bytes": num_bytes,
        "bits_per_byte": nll / (math.log(2) * num_bytes),
        "nats_per_token": nll / tokens,
    }


def score_records(scores: list[Score], item_set: str) -> list[dict]:
    """Per-item output records ({set, id, nll, tokens, bytes})."""
    return [{"set": item_set, **asdict(s)} for s in scores]

"""generate(): KV cache vs full recomputation, left padding, eos, sampling."""

from __future__ import annotations

import random

import pytest
import torch
from modeling_helpers import PHI, small_config

from modeling import Transformer
from modeling.model import KVCache, StopStrings

PROMPTS = [[5, 17, 3, 88, 42, 9, 1], [64], [23, 23, 7, 50]]  # different lengths: rows 2 and 3 get left pads


@pytest.fixture(
    scope="module", params=[("sdpa", "llama"), ("reference", "llama"), ("sdpa", "phi"), ("reference", "phi")]
)
def model(request) -> Transformer:
    # float64 so greedy argmax never flips on rounding noise between differently shaped computations.
    backend, block = request.param
    torch.manual_seed(0)
    extra = dict(PHI, attn_dropout=0.1, resid_dropout=0.1) if block == "phi" else {}  # eval: dropout off
    return Transformer(small_config(attention=backend, init_std=0.1, **extra)).double().eval()


def greedy_without_cache(model: Transformer, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]


def test_cached_batched_greedy_equals_recomputation(model):
    batched = model.generate(PROMPTS, 12)
    assert batched == [greedy_without_cache(model, p, 12) for p in PROMPTS]
    assert batched == [model.generate([p], 12)[0] for p in PROMPTS]  # left padding changes nothing


@torch.no_grad()
def test_cached_logits_equal_full_forward(model):
    """Prefill a left-padded batch, decode two steps, and compare every step with an uncached forward."""
    prompt_a, prompt_b = [4, 8, 15, 16, 23, 42], [7, 7, 3]
    ids = torch.tensor([prompt_a, [0, 0, 0] + prompt_b])
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 1, 2]])
    cache = KVCache.empty(model.config, 2, 10, "cpu", torch.float64)
    steps = [model(ids, position_ids, kv_cache=cache)[:, -1]]
    extra = torch.tensor([[31, 60], [2, 94]])
    for t in range(2):
        steps.append(model(extra[:, t : t + 1], position_ids[:, -1:] + 1 + t, kv_cache=cache)[:, -1])
    assert cache.length == 8
    for row, prompt in enumerate([prompt_a, prompt_b]):
        for t in range(3):
            full = model(torch.tensor([prompt + extra[row, :t].tolist()]))[0, -1]
            assert torch.allclose(steps[t][row], full, atol=1e-10), (row, t)


def test_eos_truncates_and_is_excluded(model):
    free = model.generate(PROMPTS, 10)
    eos = free[0][4]
    stopped = model.generate(PROMPTS, 10, eos_token_id=eos)
    for run, out in zip(free, stopped):
        assert out == (run[: run.index(eos)] if eos in run else run)


def test_sampling_is_seeded_and_top_p_nucleus(model):
    a = model.generate(PROMPTS, 8, temperature=1.0, seed=7)
    assert a == model.generate(PROMPTS, 8, temperature=1.0, seed=7)
    assert a != model.generate(PROMPTS, 8, temperature=1.0, seed=8)
    # A nucleus this small holds only the most likely token: sampling becomes greedy.
    assert model.generate(PROMPTS, 8, temperature=1.0, top_p=1e-6, seed=3) == model.generate(PROMPTS, 8)


def test_generate_argument_errors(model):
    assert model.generate(PROMPTS, 0) == [[], [], []]
    with pytest.raises(ValueError, match="tokenizer"):
        model.generate(PROMPTS, 4, stop_strings=["\n"])
    with pytest.raises(ValueError, match="at least one token"):
        model.generate([[1], []], 4)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(PROMPTS, 4, temperature=1.0, top_p=0.0)


class CharTokenizer:
    """Decodes token i as chr(ord('a') + i % 26), except that a sequence's first token loses a leading
    space (as sentencepiece tokenizers do): token 26 is ' '."""

    def decode(self, ids: list[int]) -> str:
        return "".join(" " if i == 26 else chr(ord("a") + i % 26) for i in ids).removeprefix(" ")


def first_stop(tokens: list[int], stops: list[str], tokenizer) -> int | None:
    """The pre-change, quadratic rule: the first n whose decoded tokens[:n] contain a stop string."""
    return next(
        (n for n in range(1, len(tokens) + 1) if any(s in tokenizer.decode(tokens[:n]) for s in stops)), None
    )


def test_stop_string_window_equals_full_decode():
    """StopStrings decodes only a window, yet stops exactly where decoding the whole continuation first shows a
    stop string, also for stops beginning with the space the tokenizer drops from a first token."""
    tokenizer, rng = CharTokenizer(), random.Random(0)
    checked = 0
    for _ in range(300):
        tokens = [rng.choice([26, 26, *range(26)]) for _ in range(rng.randint(4, 30))]
        text = tokenizer.decode(tokens)
        i = rng.randrange(len(text) - 2)
        stops = [text[i : i + rng.randint(1, 4)], " " + tokenizer.decode(tokens[-2:])]
        stopper = StopStrings(stops, tokenizer)
        windowed = next((n for n in range(1, len(tokens) + 1) if stopper.hit(tokens[:n])), None)
        assert windowed == first_stop(tokens, stops, tokenizer), (tokens, stops)
        checked += windowed is not None
    assert checked > 250  # most draws do stop


def test_generate_stops_on_the_stop_string_token(model):
    tokenizer = CharTokenizer()
    free = model.generate(PROMPTS, 16)
    stops = [tokenizer.decode(free[0][5:8])]
    got = model.generate(PROMPTS, 16, stop_strings=stops, tokenizer=tokenizer)
    for row, out in zip(free, got):
        n = first_stop(row, stops, tokenizer)
        assert out == (row if n is None else row[:n])
    assert len(got[0]) <= 8


@pytest.mark.slow  # compiles one decode step: 28 s cold here (inductor cache empty), more when the CPU is busy
def test_compiled_decoding_equals_eager_and_compiles_once():
    """generate(compile=True) gives eager's tokens, and its decode step compiles to one graph for the whole
    generation: the cache slot is a tensor, so no step recompiles as the cache fills."""
    torch.manual_seed(0)
    model = Transformer(small_config(init_std=0.1)).double().eval()  # GQA, left-padded prompts
    eager = model.generate(PROMPTS, 10)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    assert model.generate(PROMPTS, 10, compile=True) == eager
    assert model.generate(PROMPTS, 10, compile=True) == eager  # same shape: the compiled step is reused
    assert counters["stats"]["unique_graphs"] == 1 and not counters["recompiles"], dict(counters)


def test_cpu_generate_makes_projections_column_major_and_changes_no_result():
    """generate() on CPU re-lays every projection weight column-major in place (bench/README.md, "decode
    layout"): the weights keep their values and ties, the forward, the loss and its gradients stay the same,
    and a weight that lives in a shared flat buffer (as FSDP / DeepSpeed keep them) is left where it is."""
    torch.manual_seed(0)
    model = Transformer(small_config(init_std=0.1, tie_word_embeddings=True))  # the head is the embedding
    flat = torch.zeros(model.layers[0].mlp.out_proj.weight.numel() + 7)
    shared = model.layers[0].mlp.out_proj.weight
    shared.data = flat[7:].view_as(shared).copy_(shared)
    ids = torch.randint(model.config.vocab_size, (2, 16))

    def results() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(ids).detach()
        model(ids, targets=ids).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        return logits, model(ids, targets=ids).detach(), grads

    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    before = results()
    model.generate(PROMPTS, 4)
    after = results()
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, p in model.named_parameters():
        assert torch.equal(p, weights[name]), name
        if name.removesuffix(".weight") in linears and name != "layers.0.mlp.out_proj.weight":
            assert p.stride() == (1, p.shape[0]), name
    assert shared.stride() == (shared.shape[1], 1) and shared.data_ptr() == flat[7:].data_ptr()
    assert model.lm_head.weight is model.embed.weight
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=1e-6)
    for name in before[2]:
        torch.testing.assert_close(after[2][name], before[2][name], rtol=1e-5, atol=1e-6)
    half = Transformer(small_config(tie_word_embeddings=True)).to(torch.bfloat16)  # slower column-major
    half.generate(PROMPTS, 2)
    assert all(p.stride() == (p.shape[1], 1) for p in half.parameters() if p.dim() == 2)

"""Learning-rate schedules against their closed forms, and AdamW weight-decay groups."""

from __future__ import annotations

import math

import pytest
import torch

from modeling import ModelConfig, Transformer
from recipes.training import PretrainSection
from train.optim import build_optimizer, lr_at, param_groups


def section(**kw) -> PretrainSection:
    return PretrainSection(**{"lr": 1.0, "min_lr_ratio": 0.1, "warmup_steps": 10, "max_steps": 110, **kw})


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd", "constant"])
def test_warmup_is_linear_to_the_peak(schedule):
    s = section(schedule=schedule)
    assert [lr_at(s, i) for i in range(10)] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lr_at(s, 10) == pytest.approx(1.0)


def test_cosine_and_linear_decay_to_the_floor():
    cos, lin = section(schedule="cosine"), section(schedule="linear")
    # 100 decay steps from step 10 to the last step 109: progress p = (step - 10) / 99.
    for step in (10, 30, 59, 90, 109):
        p = (step - 10) / 99
        assert lr_at(cos, step) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
        assert lr_at(lin, step) == pytest.approx(1.0 - 0.9 * p)
    assert lr_at(cos, 109) == pytest.approx(0.1) and lr_at(lin, 109) == pytest.approx(0.1)


def test_wsd_is_stable_then_decays_over_the_last_fraction():
    s = section(schedule="wsd", decay_fraction=0.2)  # decay over the last 22 of 110 steps: from step 88
    assert all(lr_at(s, i) == 1.0 for i in range(10, 88))
    assert lr_at(s, 88) == pytest.approx(1.0) and lr_at(s, 109) == pytest.approx(0.1)
    assert lr_at(s, 98) == pytest.approx(1.0 - 0.9 * 10 / 21)
    assert all(lr_at(section(schedule="constant"), i) == 1.0 for i in range(10, 110))


def test_weight_decay_groups_exempt_norms_and_embeddings():
    config = ModelConfig.from_preset(
        "tiny",
        num_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        num_kv_heads=2,
        vocab_size=256,
    )
    model = Transformer(config)  # tied: lm_head.weight is embed.weight
    decay, exempt = param_groups(model, 0.1, ["bias", "norm", "embedding"])
    names = {id(p): n for n, p in model.named_parameters()}  # named_parameters lists a tied weight once
    decayed = {names[id(p)] for p in decay["params"]}
    exempted = {names[id(p)] for p in exempt["params"]}
    assert decayed | exempted == set(names.values()) and not decayed & exempted
    assert exempted == {"embed.weight", "norm.weight"} | {
        f"layers.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "mlp_norm")
    }
    assert all(n.endswith("proj.weight") for n in decayed)
    assert (decay["weight_decay"], exempt["weight_decay"]) == (0.1, 0.0)
    # Decaying everything is one group; a norm weight with decay 0.1 then shrinks on a zero gradient.
    (everything,) = param_groups(model, 0.1, [])
    assert len(everything["params"]) == len(names)
    optimizer = build_optimizer(
        model, PretrainSection(weight_decay=0.1, lr=0.5, no_decay=[]), torch.device("cpu")
    )
    assert optimizer.defaults["fused"] is False and optimizer.defaults["foreach"] is True
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.allclose(model.norm.weight, torch.full_like(model.norm.weight, 1 - 0.5 * 0.1))

"""HF interop: save_pretrained -> transformers / ours, from_pretrained of HF-written (sharded) checkpoints."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from modeling_helpers import PHI, hf_twin, small_config
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PhiConfig, PhiForCausalLM

from modeling import Transformer

IDS = torch.randint(0, 97, (2, 19), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("block", ["llama", "phi"])
@pytest.mark.parametrize("tied", [True, False])
@torch.no_grad()
def test_save_then_transformers_and_ours_load_identically(tmp_path, tied, block):
    torch.manual_seed(0)
    extra = PHI if block == "phi" else {}
    model = Transformer(
        small_config(tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, **extra)
    ).eval()
    for name, p in model.named_parameters():  # init leaves biases at 0 and norms at 1: make them count
        if name.endswith("bias") or "norm" in name:
            p.add_(torch.randn_like(p) * 0.1)
    out = model.save_pretrained(tmp_path / "ckpt")
    assert out == tmp_path / "ckpt" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp leftovers

    config = json.loads((out / "config.json").read_text())
    arch = {"llama": "LlamaForCausalLM", "phi": "PhiForCausalLM"}[block]
    assert config["architectures"] == [arch] and config["model_type"] == block
    assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2}
    assert ("lm_head.weight" in load_file(out / "model.safetensors")) is not tied

    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == arch
    # Llama: bitwise. Phi: transformers' GELU and LayerNorm call order round differently (measured ~1e-7).
    assert (hf(IDS).logits - model(IDS)).abs().max() <= (0 if block == "llama" else 1e-5)

    ours = Transformer.from_pretrained(out).eval()
    assert ours.config == dataclasses.replace(model.config, attention="auto")  # a runtime choice, not saved
    assert torch.equal(ours(IDS), model(IDS))
    assert (ours.lm_head.weight is ours.embed.weight) is tied
    assert all(p.requires_grad for p in ours.parameters())
    assert sum(p.numel() for p in ours.parameters()) == model.config.num_params()


def test_save_bf16_and_overwrite(tmp_path):
    torch.manual_seed(1)
    model = Transformer(small_config())
    model.save_pretrained(tmp_path / "ckpt")
    model.save_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16)  # replaces the fp32 checkpoint
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    loaded = Transformer.from_pretrained(tmp_path / "ckpt")
    assert loaded.embed.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.embed.weight, model.embed.weight.to(torch.bfloat16))
    assert (
        Transformer.from_pretrained(tmp_path / "ckpt", dtype=torch.float32).embed.weight.dtype
        == torch.float32
    )


@pytest.mark.parametrize("partial_rotary_factor", [0.5, 1.0])
@torch.no_grad()
def test_load_phi_checkpoint_initialized_and_saved_by_transformers(tmp_path, partial_rotary_factor):
    """A PhiForCausalLM that transformers built (its own random init, its own save) loads into ours."""
    config = PhiConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 500.0,
            "partial_rotary_factor": partial_rotary_factor,
        },
        initializer_range=0.2,  # large enough that attention is far from uniform
    )
    torch.manual_seed(3)
    reference = PhiForCausalLM(config).eval()
    with torch.no_grad():  # HF's init zeroes biases and sets LayerNorms to 1: perturb so they matter
        for name, p in reference.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    reference.save_pretrained(tmp_path / "hf")
    ours = Transformer.from_pretrained(tmp_path / "hf").eval()
    assert ours.config.rotary_dim == int(16 * partial_rotary_factor) and ours.config.parallel_block
    assert (ours(IDS) - reference(IDS).logits).abs().max() <= 1e-5


@torch.no_grad()
def test_load_sharded_untied_checkpoint_written_by_transformers(tmp_path):
    torch.manual_seed(2)
    reference = hf_twin(Transformer(small_config(tie_word_embeddings=False)))
    reference.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    ours = Transformer.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(ours(IDS), reference(IDS).logits)


def test_save_with_tokenizer(tmp_path, smollm2_path):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    Transformer(small_config(vocab_size=len(tokenizer))).save_pretrained(
        tmp_path / "ckpt", tokenizer=tokenizer
    )
    again = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    assert again("def f(x):").input_ids == tokenizer("def f(x):").input_ids


def test_load_errors(tmp_path):
    Transformer(small_config()).save_pretrained(tmp_path / "ckpt")
    state = load_file(tmp_path / "ckpt" / "model.safetensors")
    save_file(
        {**state, "model.layers.0.self_attn.q_proj.bias": torch.zeros(64)},
        tmp_path / "ckpt" / "model.safetensors",
    )
    with pytest.raises(ValueError, match="q_proj.bias"):
        Transformer.from_pretrained(tmp_path / "ckpt")
    del state["model.norm.weight"]
    save_file(state, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(ValueError, match="model.norm.weight"):
        Transformer.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        Transformer.from_pretrained(tmp_path / "ckpt")


def test_lm_eval_hf_model_scores_our_phi_export(tmp_path, smollm2_path):
    """lm-eval's `hf` model (HFLM) loads our PhiForCausalLM export unchanged and its loglikelihoods equal the
    log-probabilities our model gives the same continuation tokens."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    torch.manual_seed(4)
    model = Transformer(small_config(vocab_size=len(tokenizer), init_std=0.2, **PHI)).eval()
    model.save_pretrained(tmp_path / "phi", tokenizer=tokenizer)
    lm = HFLM(pretrained=str(tmp_path / "phi"), device="cpu", batch_size=2, dtype="float32")
    assert type(lm.model).__name__ == "PhiForCausalLM"
    pairs = [("def square(x):", " return x * x"), ("The capital of France is", " Paris")]
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)
    ]
    scores = lm.loglikelihood(requests)
    for (context, continuation), (logprob, _) in zip(pairs, scores):
        ctx = tokenizer(context).input_ids
        cont = tokenizer(context + continuation).input_ids[len(ctx) :]
        with torch.no_grad():
            logps = model(torch.tensor([ctx + cont]))[0, len(ctx) - 1 : -1].log_softmax(-1)
        expected = logps.gather(1, torch.tensor(cont)[:, None]).sum().item()
        assert logprob == pytest.approx(expected, abs=1e-4)

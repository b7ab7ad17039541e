"""HF interop: save_pretrained -> transformers / ours, from_pretrained of HF-written (sharded) checkpoints."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from modeling_helpers import hf_twin, small_config
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling import Transformer

IDS = torch.randint(0, 97, (2, 19), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("tied", [True, False])
@torch.no_grad()
def test_save_then_transformers_and_ours_load_identically(tmp_path, tied):
    torch.manual_seed(0)
    model = Transformer(small_config(tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)).eval()
    out = model.save_pretrained(tmp_path / "ckpt")
    assert out == tmp_path / "ckpt" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp leftovers

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2}
    assert ("lm_head.weight" in load_file(out / "model.safetensors")) is not tied

    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert torch.equal(hf(IDS).logits, model(IDS))

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

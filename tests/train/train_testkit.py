"""Helpers for the training tests: real text (the Python standard library's own sources) tokenized with a real
BPE tokenizer trained on it, packed with stagekit.shards, and a recipe for a model small enough that a
training run takes seconds on one CPU core."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import yaml

from stagekit.shards import ShardReader, ShardWriter

REPO = Path(__file__).resolve().parents[2]
EOT = "<|endoftext|>"
# A ~170k-parameter Llama: 2 layers, hidden 64, GQA 4 heads / 2 kv heads.
SMALL_MODEL = {
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "max_seq_len": 128,
}


def stdlib_documents(limit_chars: int) -> list[str]:
    """Standard-library modules as documents (each cut to 3000 characters), in a fixed order."""
    docs, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")[:3000]
        if len(text) < 500:
            continue
        docs.append(text)
        total += len(text)
        if total >= limit_chars:
            break
    return docs


def build_data(root: Path) -> Path:
    """A BPE tokenizer trained on the documents -> root/tokenizer, and root/shards/{pretrain,finetune}/{train,val}."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    docs = stdlib_documents(700_000)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        docs,
        trainers.BpeTrainer(
            vocab_size=1024, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOT, bos_token=EOT, unk_token=EOT)
    tokenizer.save_pretrained(root / "tokenizer")
    eot = tokenizer.convert_tokens_to_ids(EOT)
    # Pretrain on the first 80% of modules, finetune on the rest; the first tenth of each part is held out.
    cut = int(len(docs) * 0.8)
    parts = {"pretrain": docs[:cut], "finetune": docs[cut:]}
    for stage, stage_docs in parts.items():
        split = max(1, len(stage_docs) // 10)
        for name, chunk in (("train", stage_docs[split:]), ("val", stage_docs[:split])):
            writer = ShardWriter(
                root / "shards" / stage / name, vocab_size=len(tokenizer), eot_id=eot, shard_tokens=20_000
            )
            for doc in chunk:
                writer.add_document(tokenizer(doc)["input_ids"], source="stdlib")
            writer.close()
    return root


def prompt_length(num_tokens: int) -> int:
    """The prompt part of a test document: its first third (the rest is the 'completion')."""
    return num_tokens // 3


def write_prompted_shards(data: Path, out: Path) -> Path:
    """out/{train,val}: the finetune documents of `data` again, each with its first third marked as prompt."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(data / "tokenizer")
    for split in ("train", "val"):
        reader = ShardReader(data / "shards" / "finetune" / split)
        writer = ShardWriter(
            out / split, vocab_size=len(tokenizer), eot_id=reader.eot_id, shard_tokens=20_000
        )
        for i in range(reader.num_documents):
            ids = reader.document(i)
            writer.add_document(ids, source="stdlib", prompt_tokens=prompt_length(ids.size))
        writer.close()
    return out


def recipe_dict(run_dir: Path, model: dict | None = None, **train: dict) -> dict:
    """A small training recipe; `model` adds ModelConfig overrides to SMALL_MODEL."""
    stage = {
        "max_steps": 24,
        "global_batch_size": 8,
        "micro_batch_size": 4,
        "seq_len": 64,
        "lr": 3e-3,
        "warmup_steps": 4,
        "eval_every": 8,
        "eval_sequences": 8,
        "checkpoint_every": 8,
        "keep_last": 2,
    }
    return {
        "name": "test",
        "run_dir": str(run_dir),
        "seed": 7,
        "model": {"preset": "tiny", "overrides": {**SMALL_MODEL, **(model or {})}},
        "train": {
            "pretrain": {**stage, **train.get("pretrain", {})},
            "finetune": {**stage, "max_steps": 8, "lr": 1e-3, **train.get("finetune", {})},
        },
        "launch": {"threads_per_process": 1, **train.get("launch", {})},
    }


def new_run(directory: Path, data_template: Path, name: str = "run", **train: dict) -> Path:
    """A recipe file whose run directory holds a private copy of the data; returns the recipe's path."""
    run_dir = directory / name
    shutil.copytree(data_template, run_dir / "data")
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(run_dir, **train)))
    return path


def train_cli(*args: str, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    """`python -m train ...` in a subprocess with one torch thread per process (the CI box is small)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def kill_during_training(recipe: Path, metrics: Path, at_step: int, timeout: float = 600) -> int:
    """Start `python -m train --recipe RECIPE` and SIGKILL it with all its descendants (launchers and ranks) as
    soon as metrics.jsonl shows `at_step`; returns the last step logged before the kill."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", "--recipe", str(recipe)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    last = 0
    try:
        while last < at_step:
            if proc.poll() is not None:
                raise AssertionError(f"training exited (status {proc.returncode}) before step {at_step}")
            if time.monotonic() > deadline:
                raise AssertionError(f"step {at_step} not reached in {timeout} s")
            if metrics.is_file():
                lines = [line for line in metrics.read_text().splitlines() if line.endswith("}")]
                last = json.loads(lines[-1])["step"] if lines else 0
            time.sleep(0.005)
    finally:
        kill_tree(proc.pid)
        proc.wait()
    return last


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant at once (torchrun starts each rank in its own session, so a
    process-group kill would miss them)."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)

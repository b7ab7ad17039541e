"""Resumable checkpoints: `checkpoints/step-N/`, written atomically, the last K kept.

A checkpoint is accelerate's `save_state` (model, optimizer, grad scaler and each rank's python/numpy/torch
RNG states; for DeepSpeed the engine's own sharded checkpoint) plus `trainer_state.json` (step, tokens,
data-stream position, loss-guard state) and the resolved `recipe.yaml`. All ranks write into
`.step-N.tmp/`; rank 0 renames it to `step-N/` only after every rank has finished, so a directory named
`step-N` is always complete and a kill -9 at any moment leaves at worst a temporary directory that the
next save removes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import yaml
from accelerate import Accelerator

from recipes import Recipe, to_dict
from train.plan import BOOKKEEPING_KEYS

STATE = "trainer_state.json"
RECIPE = "recipe.yaml"
_NAME = re.compile(r"step-(\d+)")


def checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.fullmatch(p.name)) and p.is_dir()
    ]
    return sorted(found)


def latest(directory: Path) -> Path | None:
    found = checkpoints(directory)
    return found[-1][1] if found else None


def save(
    accelerator: Accelerator, directory: Path, step: int, state: dict, recipe: Recipe, keep_last: int
) -> Path:
    """Collective: every rank must call it. Returns the final checkpoint directory."""
    final, tmp = directory / f"step-{step}", directory / f".step-{step}.tmp"
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".step-*.tmp"):
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)  # pickles keep tied weights tied
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_synced(tmp / STATE, json.dumps(state, indent=2))
        _write_synced(tmp / RECIPE, yaml.safe_dump(to_dict(recipe), sort_keys=False))
        if final.exists():  # left by an earlier run that got further; this run's history replaces it
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in checkpoints(directory)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def read_state(path: Path) -> dict:
    return json.loads((path / STATE).read_text(encoding="utf-8"))


def load(accelerator: Accelerator, path: Path) -> dict:
    """Restore model/optimizer/RNG states into the prepared objects; returns trainer_state.json."""
    accelerator.load_state(str(path))
    return read_state(path)


def differences(path: Path, recipe: Recipe, stage: str, state: dict, inputs: dict, data: dict) -> list[str]:
    """Why checkpoint `path` does not belong to the run about to start (empty: it does): other stage
    hyperparameters, model or seed; other inputs (shards, tokenizer, init checkpoint); another data layout."""
    saved = yaml.safe_load((path / RECIPE).read_text(encoding="utf-8"))
    now = to_dict(recipe)
    then_stage, now_stage = saved["train"][stage], now["train"][stage]
    changed = [
        f"train.{stage}.{key}"
        for key in sorted(set(then_stage) | set(now_stage))
        if key not in BOOKKEEPING_KEYS and then_stage.get(key) != now_stage.get(key)
    ]
    changed += [key for key in ("model", "seed") if saved.get(key) != now.get(key)]
    changed += [
        f"input {name}"
        for name in sorted(set(state["inputs"]) | set(inputs))
        if state["inputs"].get(name) != inputs.get(name)
    ]
    if state["data"] != data:
        changed.append(f"data layout (saved {state['data']}, now {data})")
    return changed


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())

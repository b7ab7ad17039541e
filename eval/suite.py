"""`python -m eval all --recipe NAME`: every configured benchmark on every model the recipe names.

Models: the training stages' exports (runs/<name>/<stage>/export/), optionally the teacher and extra local
model directories. Results: runs/<name>/eval/<label>/<benchmark>.json, each skipped when its manifest says
the model, data and settings are unchanged.
"""

from __future__ import annotations

from pathlib import Path

from eval.code_eval import evaluate_code
from eval.generation import set_threads
from eval.lm_eval_runner import evaluate_lm
from eval.results import TEACHER_LABEL, eval_dir, result_path
from recipes import Recipe
from recipes.training import stage_export_dir
from stagekit.io import StageError


def models_for(recipe: Recipe) -> list[tuple[str, Path]]:
    """(label, model directory) for every model the recipe scores, checked to exist."""
    models = [(ref, stage_export_dir(recipe.run_path, ref)) for ref in recipe.eval.checkpoints]
    for label, model_dir in models:
        if not (model_dir / "config.json").is_file():
            raise StageError(
                f"{model_dir}: no exported checkpoint for eval.checkpoints entry '{label}'; train it first "
                f"(`python -m train all --recipe {recipe.name}`) or remove it from eval.checkpoints"
            )
    if recipe.eval.teacher:
        from stagekit.assets import smollm2_dir

        models.append((TEACHER_LABEL, smollm2_dir()))
    for label, path in recipe.eval.extra_models.items():
        if not (Path(path) / "config.json").is_file():
            raise StageError(
                f"{path}: eval.extra_models['{label}'] is not a Hugging Face model directory (no config.json)"
            )
        models.append((label, Path(path)))
    return models


def evaluate_recipe(recipe: Recipe, *, force: bool = False) -> dict[str, dict[str, dict]]:
    """Score every model on every enabled benchmark; returns {label: {result name: manifest}}."""
    cfg = recipe.eval
    bench_dir = recipe.benchmarks_path
    if bench_dir is not None and not bench_dir.is_dir():
        raise StageError(
            f"{bench_dir}: benchmark directory not found; set benchmarks_dir in the recipe or the environment "
            "variable TEXTBOOKS_BENCHMARKS to a folder laid out like ../shared/benchmarks (empty: use the Hub)"
        )
    set_threads(cfg.threads)
    out: dict[str, dict[str, dict]] = {}
    for label, model_dir in models_for(recipe):
        print(f"[eval] {label}: {model_dir}")
        manifests: dict[str, dict] = {}
        for benchmark in ("humaneval", "mbpp"):
            bench_cfg = getattr(cfg, benchmark)
            if bench_cfg.enabled:
                manifests[benchmark] = evaluate_code(
                    benchmark, bench_cfg, result_path(recipe.run_path, label, benchmark), model_dir=model_dir,
                    benchmarks_dir=bench_dir, backend=cfg.generator, device=cfg.device, seed=recipe.seed,
                    label=label, force=force,
                )  # fmt: skip
        if cfg.lm_eval:
            manifests |= evaluate_lm(
                model_dir, cfg.lm_eval, eval_dir(recipe.run_path) / label, benchmarks_dir=bench_dir,
                tasks_dir=eval_dir(recipe.run_path) / "lm_eval_tasks", batch_size=cfg.lm_eval_batch_size,
                device=cfg.device, seed=recipe.seed, label=label, force=force,
            )  # fmt: skip
        out[label] = manifests
    return out

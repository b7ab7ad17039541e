"""The recipe schema: one typed section per part of the pipeline.

Each section lives in its own module (`generation`, `curation`, `training`, `evaluation`) next to the
YAML files; this module composes them. `python -m recipes describe` prints every key with its doc.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipes.ablation import AblationSection
from recipes.config import apply_overrides, build, load_yaml, setting
from recipes.curation import CurationSection
from recipes.evaluation import EvalSection
from recipes.generation import GenerationSection
from recipes.training import LaunchSection, TrainSection

RECIPES_DIR = Path(__file__).resolve().parent


@dataclass
class DataSection:
    generation: GenerationSection = setting(
        "Teacher and synthetic-data generation (Cosmopedia, Phi-1, Self-Instruct, Orca).",
        factory=GenerationSection,
    )
    curation: CurationSection = setting(
        "Sources, classifier, heuristics, dedup, decontamination, tokenizer and shards.",
        factory=CurationSection,
    )


@dataclass
class ModelSection:
    preset: str = setting(
        "Named architecture preset from modeling.presets: tiny, phi1-small and phi1 (Phi-1's parallel block), "
        "phi1-small-llama and phi1-llama (the same sizes as Llama blocks), cosmo-1b, smollm2-135m."
    )
    overrides: dict[str, Any] = setting(
        "ModelConfig fields to change on top of the preset (e.g. vocab_size is set from the tokenizer when null).",
        factory=dict,
    )

    def __post_init__(self) -> None:
        from modeling import PRESETS

        if self.preset not in PRESETS:
            raise ValueError(f"unknown model preset '{self.preset}' (known: {', '.join(sorted(PRESETS))})")

    def config(self, **extra: Any):
        """The resolved `modeling.ModelConfig` (validated)."""
        from modeling import ModelConfig

        return ModelConfig.from_preset(self.preset, **{**self.overrides, **extra})


@dataclass
class Recipe:
    name: str = setting("Recipe name; the run directory defaults to runs/<name>.")
    description: str = setting("One line saying what this recipe reproduces and its source.", "")
    seed: int = setting("Global seed: prompt sampling, generation, data order, init.", 1234)
    run_dir: str = setting("Where every stage writes (relative to the repo root). Empty: runs/<name>.", "")
    benchmarks_dir: str = setting(
        "Local benchmark directory (HF schemas) used offline for decontamination and eval; "
        "the env var TEXTBOOKS_BENCHMARKS overrides it; empty means download from the Hub.",
        "../shared/benchmarks",
    )
    data: DataSection = setting("Data generation and curation.", factory=DataSection)
    model: ModelSection = setting("Model architecture.", factory=lambda: ModelSection(preset="tiny"))
    train: TrainSection = setting("Training stages (pretrain, finetune).", factory=TrainSection)
    launch: LaunchSection = setting(
        "How training is launched (accelerate config, processes, nodes).", factory=LaunchSection
    )
    eval: EvalSection = setting("Benchmarks, shots, limits and sampling.", factory=EvalSection)
    ablation: AblationSection = setting(
        "Data ablation at matched compute (`make ablation`, eval/ablation.py): arms, seeds, metrics.",
        factory=AblationSection,
    )

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")

    @property
    def benchmarks_path(self) -> Path | None:
        import os

        value = os.environ.get("TEXTBOOKS_BENCHMARKS", self.benchmarks_dir)
        return Path(value) if value else None


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """`tiny` -> recipes/tiny.yaml; a path is taken as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return RECIPES_DIR / f"{name_or_path}.yaml"


def load_recipe(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load, override and validate a recipe; raises RecipeError naming the file and key."""
    path = resolve_recipe_path(name_or_path)
    data = apply_overrides(load_yaml(path), overrides)
    where = str(path) + (f" (with overrides {' '.join(overrides)})" if overrides else "")
    return build(Recipe, data, where)

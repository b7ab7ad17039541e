"""The curation flow of a recipe: which stage reads which file, and `run_curation` to run it all.

Per mixture component (runs/<name>/data/curation/<component>/):
    raw JSONL -> heuristics.jsonl -> dedup.jsonl -> [annotations.jsonl, classifier/, edu.jsonl] -> decontaminated.jsonl
    -> [humaneval.jsonl]
(the first bracket only for components with edu_filter, when classifier.enabled; the second for the
components humaneval_study lists, when it is enabled). Then the tokenizer is trained
on every component's curated file (data/tokenizer/) and each mixture is packed (data/shards/<stage>/).
Every step is skipped when its manifest says it is fresh.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from data_pipeline.curation.classifier import run_annotate, run_edu_filter, run_train_classifier
from data_pipeline.curation.common import curation_dir, data_path
from data_pipeline.curation.decontaminate import run_decontaminate
from data_pipeline.curation.dedup import run_dedup
from data_pipeline.curation.heuristics import run_heuristics
from data_pipeline.curation.humaneval_study import run_humaneval_study
from data_pipeline.curation.mixture import run_shards
from data_pipeline.curation.sources import run_sources
from data_pipeline.curation.tokenizer import run_tokenizer
from recipes import Recipe
from recipes.curation import MixtureComponent
from stagekit.cli import data_dir
from stagekit.io import StageError, read_manifest, write_json


@dataclass(frozen=True)
class ComponentPlan:
    component: MixtureComponent
    raw: Path
    dir: Path
    study: bool = False  # Phi-1 Sec. 5.2 study (and pruning) against HumanEval after decontamination

    @property
    def classify(self) -> bool:
        return self.component.curate and self.component.edu_filter

    def path(self, step: str) -> Path:
        """Output of `step` (heuristics, dedup, annotations, classifier, edu, decontaminated)."""
        return self.dir / ("classifier" if step == "classifier" else f"{step}.jsonl")

    def input_of(self, step: str) -> Path:
        """What `step` reads in this component's chain."""
        return {
            "heuristics": self.raw,
            "dedup": self.path("heuristics"),
            "annotations": self.path("dedup"),
            "classifier": self.path("annotations"),
            "edu": self.path("dedup"),
            "decontaminated": self.path("edu") if self.classify else self.path("dedup"),
            "humaneval": self.path("decontaminated"),
        }[step]

    @property
    def final(self) -> Path:
        if not self.component.curate:
            return self.raw
        return self.path("humaneval") if self.study else self.path("decontaminated")


def component_plans(recipe: Recipe) -> dict[str, ComponentPlan]:
    """Every component of the pretrain and finetune mixtures by name (a name used twice must match)."""
    shards = recipe.data.curation.shards
    declared: dict[str, MixtureComponent] = {}
    plans: dict[str, ComponentPlan] = {}
    for comp in [*shards.pretrain, *shards.finetune]:
        if declared.setdefault(comp.name, comp) != comp:
            raise StageError(f"mixture component '{comp.name}' is declared twice with different settings")
        if not recipe.data.curation.classifier.enabled:
            comp = replace(comp, edu_filter=False)
        study = recipe.data.curation.humaneval_study
        plans[comp.name] = ComponentPlan(
            comp,
            data_path(recipe, comp.path),
            curation_dir(recipe) / comp.name,
            study=study.enabled and comp.name in study.components,
        )
    study = recipe.data.curation.humaneval_study
    if study.enabled and (unknown := sorted(set(study.components) - set(plans))):
        raise StageError(
            f"data.curation.humaneval_study.components: no mixture component {', '.join(unknown)} "
            f"(known: {', '.join(plans)})"
        )
    return plans


def run_component(recipe: Recipe, plan: ComponentPlan, *, force: bool = False) -> dict[str, dict]:
    """Curate one component; returns {step: manifest}."""
    if not plan.component.curate:
        return {}
    out = {}
    out["heuristics"] = run_heuristics(
        recipe,
        plan.input_of("heuristics"),
        plan.path("heuristics"),
        profile=plan.component.profile,
        force=force,
    )
    out["dedup"] = run_dedup(recipe, plan.input_of("dedup"), plan.path("dedup"), force=force)
    if plan.classify:
        out["annotations"] = run_annotate(
            recipe, plan.input_of("annotations"), plan.path("annotations"), force=force
        )
        out["classifier"] = run_train_classifier(
            recipe, plan.input_of("classifier"), plan.path("classifier"), force=force
        )
        out["edu"] = run_edu_filter(
            recipe, plan.input_of("edu"), plan.path("edu"), classifier=plan.path("classifier"), force=force
        )
    out["decontaminated"] = run_decontaminate(
        recipe, plan.input_of("decontaminated"), plan.path("decontaminated"), force=force
    )
    if plan.study:
        out["humaneval"] = run_humaneval_study(
            recipe, plan.input_of("humaneval"), plan.path("humaneval"), force=force
        )
    return out


def tokenizer_dir(recipe: Recipe) -> Path:
    return data_dir(recipe) / "tokenizer"


def shards_dir(recipe: Recipe, stage: str) -> Path:
    return data_dir(recipe) / "shards" / stage


def contamination_report(recipe: Recipe) -> dict:
    """Per benchmark, over every component's decontaminate manifest: {items_checked, items_hit, docs_dropped,
    examples, hit_items, components}; what the eval report puts next to each benchmark."""
    merged: dict[str, dict] = {}
    for name, plan in sorted(component_plans(recipe).items()):
        manifest = read_manifest(plan.path("decontaminated")) or {}
        for bench, rep in manifest.get("contamination", {}).items():
            if "skipped" in rep:  # no local copy: reported as not checked
                continue
            m = merged.setdefault(
                bench,
                {
                    "items_checked": rep["items_checked"],
                    "docs_dropped": 0,
                    "examples": [],
                    "hit_items": set(),
                    "components": {},
                },
            )
            m["docs_dropped"] += rep["docs_dropped"]
            m["hit_items"].update(rep["hit_items"])
            m["examples"] += [{**e, "component": name} for e in rep["examples"]]
            m["components"][name] = {"items_hit": rep["items_hit"], "docs_dropped": rep["docs_dropped"]}
    for m in merged.values():
        m["hit_items"] = sorted(m["hit_items"])
        m["items_hit"] = len(m["hit_items"])
    return merged


def run_curation(recipe: Recipe, *, force: bool = False) -> dict[str, dict]:
    """The whole curation half for a recipe: sources, every component's chain, tokenizer, both mixtures.

    Returns {stage label: manifest}; writes data/curation/contamination.json (see contamination_report).
    """
    plans = component_plans(recipe)
    manifests: dict[str, dict] = {}
    sources_out = curation_dir(recipe) / "corpus.jsonl"
    if any(p.raw == sources_out for p in plans.values()):
        manifests["sources"] = run_sources(recipe, sources_out, force=force)
    for name, plan in plans.items():
        for step, manifest in run_component(recipe, plan, force=force).items():
            manifests[f"{name}/{step}"] = manifest
    write_json(curation_dir(recipe) / "contamination.json", contamination_report(recipe))
    shards = recipe.data.curation.shards
    curated = [plans[c.name].final for c in [*shards.pretrain, *shards.finetune]]
    manifests["tokenizer"] = run_tokenizer(
        recipe, list(dict.fromkeys(curated)), tokenizer_dir(recipe), force=force
    )
    for stage, comps in (("pretrain", shards.pretrain), ("finetune", shards.finetune)):
        if comps:
            pairs = [(plans[c.name].component, plans[c.name].final) for c in comps]
            manifests[f"shards/{stage}"] = run_shards(
                recipe, stage, pairs, tokenizer_dir(recipe), shards_dir(recipe, stage), force=force
            )
    return manifests

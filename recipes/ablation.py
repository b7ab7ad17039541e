"""Recipe section `ablation`: the same model trained on different data at matched compute (eval/ablation.py).

Every arm shares the recipe's model, tokenizer (trained once on the union of all curated sources), training
stage, step count, batch, schedule and seeds; arms differ only in the mixture their pretraining shards are
packed from. Sources are the curated outputs of `data.curation.shards` components (by component name), so
one generation pass and one curation pass serve every arm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from recipes.config import setting


@dataclass
class ArmComponent:
    source: str = setting(
        "A data.curation.shards component (pretrain or finetune) whose curated output this arm reads."
    )
    weight: float = setting(
        "Repetition factor of the source's training documents (as in mixtures: 0.5 = a seeded half).", 1.0
    )
    share: float | None = setting(
        "Target share (0-1) of the arm's mixture, in characters of training text: the source's repetition "
        "factor is solved for it against the other components (weight then must stay 1). null: use `weight`. "
        "How a few synthetic documents get Phi-1's ~1/7 of CodeTextbook next to a large code corpus.",
        None,
    )
    random_keep_like: str = setting(
        "Random-filter control: keep, uniformly at random, the share of documents that the edu filter kept in "
        "this other (edu_filter) component; multiplies `weight`. Empty: off.",
        "",
    )

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"weight must be > 0, got {self.weight}")
        if self.share is not None and not (0 < self.share < 1 and self.weight == 1.0):
            raise ValueError(f"share must be in (0, 1) with weight left at 1, got share={self.share}")


@dataclass
class ArmPhase:
    until_step: int | None = setting(
        "This phase's mixture feeds optimizer steps below until_step; null: to the end of training.", None
    )
    components: list[ArmComponent] = setting("The phase's mixture.", factory=list)


@dataclass
class Arm:
    name: str = setting("Arm name (a file-name-safe word); results go to runs/<recipe>/ablation/<name>/.")
    description: str = setting("What the arm's data is, as the report's table shows it.", "")
    components: list[ArmComponent] = setting("The pretraining mixture (use this or `phases`).", factory=list)
    phases: list[ArmPhase] = setting(
        "Data phases by step (Phi-3's two-phase curriculum): one mixture per phase, via train.<stage>.phases.",
        factory=list,
    )

    def __post_init__(self) -> None:
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"arm name {self.name!r} must be letters, digits, '-' or '_'")
        if bool(self.components) == bool(self.phases):
            raise ValueError(f"arm '{self.name}' needs either components or phases (not both)")
        if any(not p.components for p in self.phases):
            raise ValueError(f"arm '{self.name}': every phase needs components")
        for mixture in self.mixtures:
            shares = [c.share for c in mixture if c.share is not None]
            if shares and (sum(shares) >= 1 or len(shares) == len(mixture)):
                raise ValueError(
                    f"arm '{self.name}': shares must sum below 1 and leave a component without one"
                )

    @property
    def mixtures(self) -> list[list[ArmComponent]]:
        """The arm's mixtures in training order (one unless it has phases)."""
        return [p.components for p in self.phases] if self.phases else [self.components]


@dataclass
class AblationSection:
    arms: list[Arm] = setting("The data arms compared (empty: no ablation in this recipe).", factory=list)
    seeds: list[int] = setting(
        "Training seeds (init and data order) every arm is trained with; >= 2 gives seed-level uncertainty.",
        factory=lambda: [1234, 1235],
    )
    stage: Literal["pretrain"] = setting(
        "The training stage whose data the arms vary (its hyperparameters are shared by all arms).",
        "pretrain",
    )
    finetune: bool = setting(
        "Also finetune every arm's pretrain export on the recipe's finetune shards (CodeExercises) and score it.",
        False,
    )
    scale: str = setting(
        "Empty: train the arms with this recipe's model/train/launch. A recipe name (phi1-small, phi1): take that "
        "recipe's model, train, launch and data.generation/curation settings (not its mixtures) - the GPU scale knob.",
        "",
    )
    heldout_fraction: float = setting(
        "Share of each source's curated documents held out from every arm (by a hash of the document id) for "
        "the per-source held-out loss.",
        0.2,
    )
    heldout_sources: list[str] = setting(
        "Sources whose held-out split is scored (empty: every source an arm reads).", factory=list
    )
    max_doc_tokens: int = setting(
        "Held-out documents are scored on their first N tokens (at most the model's context).", 512
    )
    benchmarks: list[Literal["humaneval", "mbpp"]] = setting(
        "Code benchmarks whose canonical solutions are scored in bits per byte given their prompts.",
        factory=lambda: ["humaneval", "mbpp"],
    )
    benchmark_limit: int | None = setting(
        "First N problems of each benchmark for the bits-per-byte metric (null: all; HumanEval 164, MBPP 257).",
        None,
    )
    pass_at_k: bool = setting(
        "Also run the recipe's eval.humaneval / eval.mbpp (sampled pass@k) on every arm: for models large "
        "enough to pass tests (phi1-small and up), not the tiny CPU model.",
        False,
    )
    parallel_runs: int = setting(
        "Runs (arm x seed) trained and scored at the same time, each in its own process with "
        "launch.threads_per_process torch threads: on a CPU box, cores / threads_per_process. Results do not "
        "depend on it. Keep 1 where each run already uses every accelerator (GPU recipes).",
        1,
    )
    bootstrap_samples: int = setting("Bootstrap replicates for every confidence interval.", 2000)
    confidence: float = setting("Two-sided confidence level of the intervals.", 0.95)
    baseline: str = setting("The arm every other arm is compared with (empty: the first arm).", "")
    comparisons: list[str] = setting(
        "Extra arm pairs 'a:b' whose difference (a - b) the report tests, besides every arm vs the baseline.",
        factory=list,
    )

    def __post_init__(self) -> None:
        names = [a.name for a in self.arms]
        if len(names) != len(set(names)):
            raise ValueError(f"arm names must be unique, got {names}")
        if len(self.seeds) != len(set(self.seeds)) or (self.arms and not self.seeds):
            raise ValueError(f"seeds must be unique and non-empty, got {self.seeds}")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError("heldout_fraction must be in (0, 1)")
        if self.parallel_runs < 1:
            raise ValueError(f"parallel_runs must be >= 1, got {self.parallel_runs}")
        if not 0 < self.confidence < 1 or self.bootstrap_samples < 100:
            raise ValueError("need 0 < confidence < 1 and bootstrap_samples >= 100")
        if self.max_doc_tokens < 2 or (self.benchmark_limit is not None and self.benchmark_limit < 1):
            raise ValueError("max_doc_tokens must be >= 2 and benchmark_limit >= 1 or null")
        if self.baseline and self.baseline not in names:
            raise ValueError(f"baseline '{self.baseline}' is not an arm ({', '.join(names)})")
        for pair in self.comparisons:
            if len(pair.split(":")) != 2 or not set(pair.split(":")) <= set(names):
                raise ValueError(f"comparison '{pair}' must be 'a:b' with two arm names ({', '.join(names)})")

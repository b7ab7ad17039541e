"""Stage `decontaminate`: drop documents that contain a benchmark item (word n-gram overlap).

Text is normalized (NFKC, lowercase, punctuation and whitespace removed: `\\w+` words), so an item is
found verbatim inside a long document and with different whitespace, case or punctuation. Every field of
an item (question, each choice, prompt, solution) of at least `min_item_words` words is indexed by its
n-grams (GPT-3, Brown et al. 2020 App. C: 13-grams), and so is the whole item (its fields joined in
order: question then choices, prompt then solution), so an item whose fields are each short (a one-line
MMLU question with its choices, a HumanEval solution after its docstring) is still covered. A unit
shorter than n is indexed whole: a document must contain it exactly. The index (ngram_index.py) is built
once per benchmark files and parameters and saved as flat numpy arrays under the worker's `cache_dir`,
which every task memory-maps instead of rebuilding it. With rule
`ngram+difflib` a hit is confirmed only when difflib matches at least `difflib_ratio` of the field's
words around the hit (Cosmopedia's 10-gram + difflib check). The manifest's `contamination` key reports
per benchmark {items_checked, items_hit, docs_dropped, examples, hit_items}; a benchmark without a local
copy is skipped with a notice on stderr and reported as {"skipped": why}.
"""

from __future__ import annotations

import difflib
import functools
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.curation.common import FilterWriter, curation_dir, fresh
from data_pipeline.curation.executor import FilterWorker
from data_pipeline.curation.ngram_index import BENCHMARK_FILES, missing_copy, shared_index, words
from recipes import Recipe, to_dict

# 2: whole items indexed too; missing benchmarks skipped. 3: tasks write the kept records; examples name
# the record's id (no line-number fallback: a task does not know its records' global numbers).
STAGE, VERSION = "decontaminate", "3"


def confirmed_by_difflib(field_words: list[str], doc_words: list[str], position: int, ratio: float) -> bool:
    """Does the document, around the hit, match at least `ratio` of the field's words?"""
    span = len(field_words)
    window = doc_words[max(0, position - span) : position + 2 * span]
    blocks = difflib.SequenceMatcher(None, field_words, window, autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks) / span >= ratio


@dataclass
class ContaminationWorker(FilterWorker):
    benchmarks: list[str]
    benchmarks_dir: str
    ngram: int
    rule: str
    difflib_ratio: float
    min_item_words: int
    cache_dir: str = ""  # where the n-gram index is saved for every task to open; "": built in memory

    def setup(self) -> None:
        cache_dir = Path(self.cache_dir) if self.cache_dir else None
        self._index = shared_index(
            tuple(self.benchmarks), self.benchmarks_dir, self.ngram, self.min_item_words, cache_dir
        )

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
            doc_id = str(record.get("id", ""))
            out.append(
                [{"benchmark": b, "item": i, "ngram": g, "doc_id": doc_id} for (b, i), g in found.items()]
            )
        return out

    def verdict(self, hits: list[dict]) -> str | None:
        return "contaminated" if hits else None


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
        cache_dir=str(curation_dir(recipe) / "_cache"),  # one index for every component of the run
    )
    index = worker.ready()._index  # fails fast on an unknown benchmark
    report = {
        b: {"items_checked": n, "items_hit": 0, "docs_dropped": 0, "examples": [], "hit_items": []}
        for b, n in index.checked.items()
    }
    report.update({b: {"skipped": why} for b, why in index.skipped.items()})
    hit_items: dict[str, set[str]] = defaultdict(set)

    def observe(hits: list[dict], _rule: str | None) -> None:
        for bench in sorted({h["benchmark"] for h in hits}):
            report[bench]["docs_dropped"] += 1
        for h in hits:
            hit_items[h["benchmark"]].add(h["item"])
            examples = report[h["benchmark"]]["examples"]
            if len(examples) < cfg.max_examples:
                examples.append({"doc_id": h["doc_id"], "item": h["item"], "ngram": h["ngram"]})

    writer = FilterWriter(STAGE, output, started, input)
    writer.run(
        worker,
        recipe.data.curation.executor,
        batch_size=16,
        resume=functools.partial(run_decontaminate, recipe, input, output, force=True),
        observe=observe,
    )
    for bench, items in hit_items.items():
        report[bench]["items_hit"] = len(items)
        report[bench]["hit_items"] = sorted(items)
    return writer.manifest(version=VERSION, params=params, inputs=inputs, extra={"contamination": report})

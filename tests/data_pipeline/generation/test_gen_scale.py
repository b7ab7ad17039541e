"""Prompt capacity at paper scale: 50k distinct prompts per builder (sizes the old 625/160/800 caps could not
reach), no near-identical pairs by a reference check (datasketch MinHash LSH + exact Jaccard on Python sets),
capacity errors naming the key, and the diversity meter agreeing with a brute-force count."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter

import pytest
from datasketch import MinHash, MinHashLSH
from generation_helpers import main, minimal_recipe

from data_pipeline.curation.sources import iter_sources
from data_pipeline.generation import code_exercises, code_textbook, cosmopedia
from data_pipeline.generation.diversity import DiversityMeter
from data_pipeline.generation.seeds import ExtractStore
from data_pipeline.generation.sources import DEFAULT_CODE_TOPICS, DEFAULT_TOPICS, read_lines
from recipes.curation import SourcesConfig, StdlibSource
from recipes.generation import COSMOPEDIA_AUDIENCES, COSMOPEDIA_FORMATS, CodeTextbookSection, CorpusSection

SIZE = 50_000
SAMPLE = 1500  # prompts checked by the reference (all pairs among them through LSH)


def _words5(text: str) -> set[str]:
    words = text.lower().split()
    return {" ".join(words[i : i + 5]) for i in range(max(1, len(words) - 4))}


def reference_near_pairs(texts: list[str], threshold: float) -> list[tuple[int, int, float]]:
    """Pairs with exact Jaccard >= threshold, candidates from datasketch's LSH at a lower threshold."""
    lsh, sets = MinHashLSH(threshold=threshold - 0.15, num_perm=64), []
    for i, text in enumerate(texts):
        sh = _words5(text)
        m = MinHash(num_perm=64, seed=1)
        m.update_batch([s.encode() for s in sh])
        sets.append(sh)
        lsh.insert(i, m)
        for j in lsh.query(m):
            if j != i and j < i and len(sh & sets[j]) / len(sh | sets[j]) >= threshold:
                yield (j, i, len(sh & sets[j]) / len(sh | sets[j]))


@pytest.fixture(scope="module")
def stdlib_extracts():
    """Extracts of a seeded 150-file stdlib sample: the tiny recipe's corpus, cut down."""
    store = ExtractStore().add_documents(
        iter_sources(SourcesConfig(stdlib=StdlibSource(max_files=150)), 0, Counter()), CorpusSection(), False
    )
    yield store
    store.close()


def _spaces(extracts):
    topics = read_lines(DEFAULT_CODE_TOPICS)
    return {
        "cosmopedia": cosmopedia.space(
            cosmopedia.load_seeds(DEFAULT_TOPICS, extracts),
            extracts,
            COSMOPEDIA_AUDIENCES,
            COSMOPEDIA_FORMATS,
        ),
        "code-textbook": code_textbook.space(topics, CodeTextbookSection().audiences, extracts),
        "code-exercises": code_exercises.space(topics),
    }


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cosmopedia", "code-textbook", "code-exercises"])
def test_builders_give_50k_distinct_prompts_without_near_identical_pairs(stdlib_extracts, method):
    space = _spaces(stdlib_extracts)[method]
    digests, sample = set(), []
    keep = set(random.Random(0).sample(range(SIZE), SAMPLE))
    for i, record in enumerate(space.take(SIZE, seed=3, key=f"{method}.num_prompts")):
        text = record["messages"][-1]["content"]
        digests.add(hashlib.sha256(text.encode()).digest())
        if i in keep:
            sample.append(text)
    assert len(digests) == SIZE
    assert list(reference_near_pairs(sample, 0.95)) == []


def test_diversity_meter_counts_what_brute_force_counts():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(400)]
    base = [" ".join(rng.choice(vocab) for _ in range(120)) for _ in range(60)]
    texts = list(base)
    for text in rng.sample(base, 15):  # one word changed in 120: Jaccard ~0.92, near-identical at 0.9
        words = text.split()
        words[60] = "changed"
        texts.append(" ".join(words))
    texts.append(base[0])  # an exact copy
    rng.shuffle(texts)
    meter = DiversityMeter(threshold=0.9, sample=len(texts))
    for text in texts:
        meter.add(text)
    later = {i for _, i, _ in reference_near_pairs(texts, 0.9)}
    result = meter.result("prompts")
    assert result["distinct_prompts"] == len(set(texts)) == 75
    assert len(later) == 16 and result["near_identical_share_prompts"] == round(len(later) / len(texts), 6)


def test_prompts_cli_capacity_error_names_the_key(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    argv = ["prompts", "--recipe", str(minimal_recipe(tmp_path)), "--method", "code-exercises"]
    assert main([*argv, "--num-prompts", str(10**9), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data.generation.code_exercises.num_prompts=1,000,000,000 exceeds" in err
    assert "9,840,000 distinct prompts" in err and not out.exists()
    allowed = [
        *argv,
        "--num-prompts",
        "5",
        "--output",
        str(out),
        "data.generation.code_exercises.allow_repeats=true",
    ]
    assert main(allowed) == 0
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    assert manifest["diversity"]["distinct_prompts"] == 5 and manifest["counts"]["capacity"] == 9_840_000

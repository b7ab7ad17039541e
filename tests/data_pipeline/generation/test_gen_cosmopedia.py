"""Cosmopedia prompt builder: cross product, style instructions, seeds, determinism."""

import pytest

from data_pipeline.generation import cosmopedia
from data_pipeline.generation.seeds import ExtractStore
from data_pipeline.generation.sources import DEFAULT_PERSONAS, read_lines
from recipes.generation import COSMOPEDIA_AUDIENCES, COSMOPEDIA_FORMATS
from stagekit.io import StageError

SEEDS = [{"topic": "Binary numbers"}, {"topic": "Photosynthesis"}, {"topic": "Supply and demand"}]


def _user(record):
    return record["messages"][-1]["content"]


def _space(seeds, extracts=None, audiences=COSMOPEDIA_AUDIENCES, formats=COSMOPEDIA_FORMATS):
    store = extracts if extracts is not None else ExtractStore()
    return cosmopedia.space(seeds, store, audiences, formats)


def test_full_cross_product_is_every_distinct_cell():
    space = _space(SEEDS)
    records = list(space.take(60, seed=0, key="k"))
    assert space.size == len(SEEDS) * 4 * 5 == 60
    cells = {(r["topic"], r["audience"], r["format"]) for r in records}
    assert len(cells) == 60
    assert len({_user(r) for r in records}) == 60


def test_sampling_is_deterministic_by_seed_and_distinct():
    a = list(_space(SEEDS).take(12, seed=7, key="k"))
    b = list(_space(SEEDS).take(12, seed=7, key="k"))
    c = list(_space(SEEDS).take(12, seed=8, key="k"))
    assert a == b
    assert [_user(r) for r in a] != [_user(r) for r in c]
    assert len({_user(r) for r in a}) == 12


def test_above_capacity_names_the_key_or_repeats_when_allowed():
    with pytest.raises(StageError, match=r"cosmopedia.num_prompts=61 exceeds .* 60 distinct prompts"):
        next(_space(SEEDS).take(61, seed=0, key="cosmopedia.num_prompts"))
    records = list(_space(SEEDS).take(70, seed=0, key="k", allow_repeats=True))
    assert len({_user(r) for r in records}) == 60 and sum(r.get("repeat") == 1 for r in records) == 10


def test_duplicate_seeds_do_not_duplicate_prompts():
    seeds = SEEDS + [{"topic": "binary numbers "}, {"topic": "Photosynthesis"}]
    assert _space(seeds, audiences=["college"], formats=["blog_post"]).size == 3


def test_extract_seeds_double_with_the_focused_variant():
    store = ExtractStore()
    for i in range(3):
        store.add(
            {"extract": f"Extract number {i}: " + "tides follow the moon " * 20, "topic": "", "code": False}
        )
    records = list(_space([], store, ["college"], ["story"]).take(6, seed=0, key="k"))
    assert len({_user(r) for r in records}) == 6
    assert sorted(r["focused"] for r in records) == [False] * 3 + [True] * 3
    assert sum(cosmopedia.FOCUS[True] in _user(r) for r in records) == 3
    store.close()


def test_audience_and_format_instructions_and_anti_boilerplate():
    for audience in COSMOPEDIA_AUDIENCES:
        for fmt in COSMOPEDIA_FORMATS:
            text = cosmopedia.build_prompt({"topic": "Volcanoes"}, audience, fmt)
            assert cosmopedia.AUDIENCES[audience] in text
            what, style = cosmopedia.FORMATS[fmt]
            assert what in text and style in text
            assert '"Once upon a time"' in text and '"Have you ever..."' in text
            assert "do not add a title, an introduction" in text
    # the concrete per-audience wording differs between audiences
    assert len(set(cosmopedia.AUDIENCES.values())) == 4
    assert "ages 5 to 10" in cosmopedia.AUDIENCES["young_children"]


def test_extract_seed_is_truncated_and_outline_is_shown():
    extract = "x" * 1500 + "TAIL"
    text = cosmopedia.build_prompt(
        {"topic": "T", "extract": extract}, "college", "textbook_academic", extract_chars=1000
    )
    assert "x" * 1000 in text and "x" * 1001 not in text and "TAIL" not in text
    outline = "1. Cells\n2. Tissues"
    text = cosmopedia.build_prompt({"topic": "Biology 101", "outline": outline}, "high_school", "wikihow")
    assert outline in text and "Biology 101" in text
    store = ExtractStore()
    store.add({"extract": "e " * 300, "topic": "A", "code": False})
    space = _space([{"topic": "B", "outline": "o"}, {"topic": "C"}], store, ["college"], ["story"])
    assert {r["seed_kind"] for r in space.take(space.size, 0, key="k")} == {"extract", "outline", "topic"}
    store.close()


def test_shipped_topics_load():
    seeds = cosmopedia.load_seeds(None, ExtractStore())
    assert len(seeds) >= 30 and all(s["topic"] and not s["topic"].startswith("#") for s in seeds)


def test_jsonl_seeds_accept_bare_documents_and_name_bad_lines(tmp_path):
    import json

    path = tmp_path / "docs.jsonl"
    path.write_text(
        json.dumps({"text": "def add(a, b):\n    return a + b\n"})
        + "\n"
        + json.dumps({"topic": "Tides"})
        + "\n"
    )
    store = ExtractStore()
    assert cosmopedia.load_seeds(path, store) == [{"topic": "Tides", "outline": ""}]
    prompt = cosmopedia.build_prompt(store[0], "high_school", "blog_post")
    assert "an extract from a web page or code file" in prompt and "return a + b" in prompt
    path.write_text(json.dumps({"topic": "ok"}) + "\n" + json.dumps({"url": "x"}) + "\n")
    with pytest.raises(StageError, match=rf"{path}:2: a Cosmopedia seed needs"):
        cosmopedia.load_seeds(path, store)


def _five_grams(text: str) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i : i + 5]) for i in range(len(words) - 4)}


def test_personas_cross_topic_seeds_only_without_near_identical_prompts():
    personas = read_lines(DEFAULT_PERSONAS)
    store = ExtractStore()
    store.add(
        {"extract": "The tide rises twice a day as the moon pulls the sea. " * 12, "topic": "", "code": False}
    )
    plain = _space(SEEDS, store)
    crossed = cosmopedia.space(
        SEEDS, store, COSMOPEDIA_AUDIENCES, COSMOPEDIA_FORMATS, personas=[*personas, personas[0]]
    )
    # Every topic cell gains one prompt per distinct persona; the extract cells are untouched.
    assert crossed.size == plain.size + len(SEEDS) * 4 * 5 * len(personas)
    records = list(crossed.take(crossed.size, seed=0, key="k"))
    assert len({_user(r) for r in records}) == len(records)
    assert not any("persona" in r for r in records if r["seed_kind"] == "extract")
    assert {r["persona"] for r in records if "persona" in r} == set(personas)
    # The closest prompts share seed, audience and format: exact 5-word-shingle Jaccard stays under 0.95
    # (checked for one seed's 20 cells, each the plain prompt and one per persona).
    groups = {}
    for r in records:
        if r["topic"] == SEEDS[0]["topic"]:
            groups.setdefault((r["audience"], r["format"]), []).append(_five_grams(_user(r)))
    assert len(groups) == 4 * 5 and all(len(g) == len(personas) + 1 for g in groups.values())
    worst = max(len(a & b) / len(a | b) for g in groups.values() for i, a in enumerate(g) for b in g[i + 1 :])
    assert worst < 0.95

"""Cosmopedia topic discovery: embedding + k-means recover known themes; the teacher names and rates them; every
corpus document is assigned to its nearest cluster as scikit-learn's k-means assigns it."""

from collections import Counter

import pytest

from data_pipeline.generation import cosmopedia, topics
from data_pipeline.generation.seeds import ExtractStore
from recipes.generation import TopicsSection
from stagekit.io import write_jsonl

THEMES = {
    "baking": [
        "Knead the bread dough for ten minutes until it is smooth and elastic.",
        "Yeast ferments sugar and the carbon dioxide makes the loaf rise in the oven.",
        "Preheat the oven to 220 degrees before baking a sourdough loaf.",
        "A crusty baguette needs steam in the oven during the first minutes of baking.",
        "Let the dough proof overnight in the fridge for a more sour bread.",
    ],
    "astronomy": [
        "Jupiter is the largest planet in the solar system and has dozens of moons.",
        "A light-year is the distance light travels through space in one year.",
        "The planets orbit the Sun on elliptical paths described by Kepler's laws.",
        "Telescopes on mountains observe distant galaxies and nebulae at night.",
        "Saturn's rings are made of ice and rock orbiting the planet.",
    ],
    "football": [
        "The striker scored twice in the second half to win the football match.",
        "The goalkeeper saved a penalty kick in the final minute of the game.",
        "Both teams played with four defenders and two wingers in the league match.",
        "The referee showed a red card after a dangerous tackle on the pitch.",
        "The club won the championship after a long season of football matches.",
    ],
}


def test_parse_topic():
    assert topics.parse_topic("Topic: Bread baking\nEducational value: 7") == ("Bread baking", 7)
    assert topics.parse_topic("**Topic:** Astronomy.\n**Educational value:** 12/10") == ("Astronomy", 10)
    assert topics.parse_topic("Topic: Football") is None
    assert topics.parse_topic("I cannot tell.") is None


def test_prompt_shows_member_samples():
    prompt = topics.topic_prompt(["alpha text", "beta text"])
    assert "Extract 1:\nalpha text" in prompt and "Extract 2:\nbeta text" in prompt
    assert "Educational value:" in prompt and "Topic:" in prompt


CORPUS = [t for texts in THEMES.values() for t in texts]


@pytest.mark.slow
def test_clusters_recover_themes():
    docs = [(theme, text) for theme, texts in THEMES.items() for text in texts]
    labels = topics.cluster(topics.embed([t for _, t in docs], progress=False), 3, seed=0).labels_
    by_cluster = {}
    for (theme, _), label in zip(docs, labels):
        by_cluster.setdefault(int(label), set()).add(theme)
    assert sorted(map(sorted, by_cluster.values())) == [["astronomy"], ["baking"], ["football"]]


@pytest.mark.slow
def test_every_document_goes_to_its_nearest_cluster_as_sklearn_assigns_it(tmp_path, monkeypatch):
    monkeypatch.setattr(topics, "ASSIGN_BATCH", 4)  # several batches, one of them partial

    def documents():
        return iter([{"text": t} for t in CORPUS] + [{"text": "  "}])

    sample = topics.sample_texts(documents, 6, seed=1)  # clusters fit on 6 of the 15 documents
    assert len(sample) == 6 and set(sample) <= set(CORPUS)
    model = topics.cluster(topics.embed(sample, progress=False), 3, seed=0)
    reference = model.predict(topics.embed(CORPUS, progress=False)).tolist()  # scikit-learn's assignment
    dropped = reference[0]
    kept = {c: (f"topic {c}", 6) for c in range(3) if c != dropped}
    counts = Counter()
    seeds = list(topics.assign(documents(), model.cluster_centers_, kept, counts, progress=False))

    expected = [(text, c) for text, c in zip(CORPUS, reference) if c != dropped]
    assert [(s["extract"], s["cluster"]) for s in seeds] == expected
    assert all(s["topic"] == f"topic {s['cluster']}" and s["score"] == 6 for s in seeds)
    in_dropped = reference.count(dropped)
    assert counts["assigned"] == len(CORPUS) - in_dropped and len(seeds) > len(sample) // 2
    assert counts == {
        "documents": 16,
        "assigned": len(seeds),
        "in_dropped_cluster": in_dropped,
        "empty_text": 1,
    }

    # Every assigned document seeds Cosmopedia prompts: 4 audiences x 5 formats x {open, focused} each.
    write_jsonl(tmp_path / "topics.jsonl", seeds)
    store = ExtractStore(tmp_path)
    try:
        loaded = cosmopedia.load_seeds(tmp_path / "topics.jsonl", store)
        space = cosmopedia.space(loaded, store, list(cosmopedia.AUDIENCES), list(cosmopedia.FORMATS))
        assert len(store) == len(seeds) and space.size == len(seeds) * 4 * 5 * 2
    finally:
        store.close()


def test_per_topic_cap_counts_what_it_leaves_out():
    centroids = topics.embed(["bread dough yeast oven", "planets stars telescope"], progress=False)
    docs = [{"text": t} for t in THEMES["baking"] + THEMES["astronomy"]]
    counts = Counter()
    kept = {0: ("Baking", 5), 1: ("Astronomy", 8)}
    seeds = list(topics.assign(iter(docs), centroids, kept, counts, per_topic=2, progress=False))
    assert Counter(s["cluster"] for s in seeds) == {0: 2, 1: 2}
    assert counts["over_per_topic"] == len(docs) - 4 and counts["assigned"] == 4


@pytest.mark.slow
def test_discover_with_real_teacher(teacher):
    from data_pipeline.teachers import Sampling

    def documents():
        return iter([{"text": t} for t in CORPUS])

    cfg = TopicsSection(num_clusters=3, sample_size=9, samples_per_cluster=3, min_score=1, max_new_tokens=24)
    counts = Counter()
    seeds, clusters, drops = topics.discover(
        documents, teacher, Sampling(max_new_tokens=24, temperature=0.0), cfg, counts, seed=0, progress=False
    )
    seeds = list(seeds)
    assert len(clusters) == 3 and sum(c["sample_size"] for c in clusters) == 9
    kept = {c["cluster"] for c in clusters if c["kept"]}
    assert len(kept) + sum(drops.values()) == 3
    # The reference: the same seeded sample and k-means, every corpus document labelled by scikit-learn.
    model = topics.cluster(topics.embed(topics.sample_texts(documents, 9, 0), progress=False), 3, seed=0)
    labels = model.predict(topics.embed(CORPUS, progress=False)).tolist()
    assert [s["extract"] for s in seeds] == [t for t, c in zip(CORPUS, labels) if c in kept]
    assert counts["assigned"] + counts["in_dropped_cluster"] == len(CORPUS)
    for s in seeds:
        assert s["topic"] and 1 <= s["score"] <= 10


def test_judge_keeps_useful_clusters():
    members = {0: ["a1", "a2", "a3"], 1: ["b1", "b2"], 2: ["c1"], 3: ["d1"]}
    answers = [
        "Topic: Bread baking\nEducational value: 6",
        "Topic: Celebrity gossip\nEducational value: 2",
        "no idea",
        None,
    ]
    kept, summary, drops = topics.judge(members, answers, min_score=4)
    assert kept == {0: ("Bread baking", 6)}
    assert [c["kept"] for c in summary] == [True, False, False, False]
    assert [c["sample_size"] for c in summary] == [3, 2, 1, 1]
    assert drops == {"low_score": 1, "unparsed": 2}

"""Cosmopedia topic discovery: embedding + k-means recover known themes; the teacher names and rates them."""

import pytest

from data_pipeline.generation import topics
from recipes.generation import TopicsSection

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


@pytest.mark.slow
def test_clusters_recover_themes():
    docs = [(theme, text) for theme, texts in THEMES.items() for text in texts]
    labels = topics.cluster(topics.embed([t for _, t in docs], progress=False), 3, seed=0)
    by_cluster = {}
    for (theme, _), label in zip(docs, labels):
        by_cluster.setdefault(int(label), set()).add(theme)
    assert sorted(map(sorted, by_cluster.values())) == [["astronomy"], ["baking"], ["football"]]


@pytest.mark.slow
def test_discover_with_real_teacher(teacher):
    from data_pipeline.teachers import Sampling

    documents = [{"text": t} for texts in THEMES.values() for t in texts]
    cfg = TopicsSection(
        num_clusters=3, samples_per_cluster=3, min_score=1, extracts_per_topic=2, max_new_tokens=24
    )
    seeds, clusters, drops = topics.discover(
        documents, teacher, Sampling(max_new_tokens=24, temperature=0.0), cfg, seed=0, progress=False
    )
    assert len(clusters) == 3 and sum(c["size"] for c in clusters) == 15
    kept = [c for c in clusters if c["kept"]]
    assert len(kept) + sum(drops.values()) == 3
    assert len(seeds) == 2 * len(kept)
    texts = {d["text"] for d in documents}
    for s in seeds:
        assert s["extract"] in texts and s["topic"] and 1 <= s["score"] <= 10


def test_select_topics_keeps_useful_clusters_with_extracts():
    members = {0: ["a1", "a2", "a3"], 1: ["b1", "b2"], 2: ["c1"], 3: ["d1"]}
    answers = [
        "Topic: Bread baking\nEducational value: 6",
        "Topic: Celebrity gossip\nEducational value: 2",
        "no idea",
        None,
    ]
    cfg = TopicsSection(min_score=4, extracts_per_topic=2)
    seeds, summary, drops = topics.select_topics(members, answers, cfg)
    assert seeds == [
        {"topic": "Bread baking", "extract": "a1", "cluster": 0, "score": 6},
        {"topic": "Bread baking", "extract": "a2", "cluster": 0, "score": 6},
    ]
    assert [c["kept"] for c in summary] == [True, False, False, False]
    assert drops == {"low_score": 1, "unparsed": 2}

"""Orca explanation-tuning prompts."""

from collections import Counter

from data_pipeline.generation import orca
from data_pipeline.generation.sources import DEFAULT_SEED_TASKS


def test_sixteen_distinct_system_messages():
    assert len(orca.SYSTEM_MESSAGES) == 16 == len(set(orca.SYSTEM_MESSAGES))


def test_build_samples_distinct_pairs_deterministically():
    queries = ["What is 2+2?", "Name a prime number.", "Why is the sky blue?"]
    space = orca.space(queries)
    records = list(space.take(48, seed=0, key="k"))
    assert space.size == 3 * 16
    assert len({(r["system"], r["user"]) for r in records}) == 48
    assert list(space.take(10, 4, key="k")) == list(orca.space(queries).take(10, 4, key="k"))
    for r in records:
        roles = [m["role"] for m in r["messages"]]
        assert roles == (["system", "user"] if r["system"] else ["user"])
        assert r["messages"][-1]["content"] == r["user"]


def test_queries_from_seed_tasks_include_instance_inputs():
    queries = orca.load_queries(DEFAULT_SEED_TASKS)
    assert "Sort the numbers from smallest to largest.\n\n7, 2, 9, 4" in queries
    assert "Suggest three low-cost ways for a student to practise programming every day." in queries


def test_explanation_records():
    gens = [
        {"id": "a", "system": "S", "user": "U", "completion": " because... ", "error": None},
        {"id": "b", "system": "S", "user": "U", "completion": "", "error": "timeout"},
        {"id": "c", "system": "", "user": "U", "completion": "  ", "error": None},
    ]
    drops = Counter()
    kept = list(orca.explanation_records(gens, drops))
    prompt = "### System:\nS\n\n### User:\nU\n\n### Assistant:\n"
    assert kept == [
        {
            "id": "a", "method": "orca", "text": prompt + "because...", "prompt": prompt,
            "system": "S", "user": "U", "response": "because...",
        }
    ]  # fmt: skip
    assert drops == {"generation_error": 1, "empty": 1}
    assert orca.render_prompt("", "Q") == "### User:\nQ\n\n### Assistant:\n"  # no empty system block

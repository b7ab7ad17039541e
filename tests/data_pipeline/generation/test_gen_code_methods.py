"""Phi-1 CodeTextbook and CodeExercises builders, and the exercise parser."""

import ast
from collections import Counter

import pytest

from data_pipeline.generation import code_exercises, code_textbook
from data_pipeline.generation.code_exercises import Rejected, extract_code, parse_generations, split_exercise
from data_pipeline.generation.seeds import ExtractStore

TOPICS = ["recursion", "sorting algorithms", "hash tables"]
AUDIENCES = ["complete beginners", "working engineers"]


def test_code_textbook_space_is_topics_pairs_and_code_extracts():
    store = ExtractStore()
    store.add({"extract": "def f(x):\n    return x * 2\n" * 10, "code": True, "topic": ""})
    store.add({"extract": "Prose about tides, not code. " * 10, "code": False, "topic": ""})
    space = code_textbook.space(TOPICS, AUDIENCES, store)
    subjects = 3 + 3  # every topic, then every unordered pair
    assert space.size == subjects * len(AUDIENCES) * 3 * 4 + 1 * 3 * 4  # only the code extract seeds
    records = list(space.take(space.size, seed=1, key="k"))
    assert len({r["messages"][0]["content"] for r in records}) == space.size
    assert list(space.take(5, seed=3, key="k")) == list(space.take(5, seed=3, key="k"))
    topic = next(r for r in records if r["seed_kind"] == "topic")
    text = topic["messages"][0]["content"]
    assert topic["topic"] in text and topic["audience"] in text
    assert "```python" in text and "Do not add a title" in text
    assert code_textbook.LEVELS[topic["level"]] in text and code_textbook.STYLES[topic["style"]] in text
    from_code = [r for r in records if r["seed_kind"] == "extract"]
    assert len(from_code) == 12 and all("return x * 2" in r["messages"][0]["content"] for r in from_code)
    store.close()


def test_code_exercises_force_distinct_names_beyond_625():
    space = code_exercises.space(TOPICS)
    records = list(space.take(2000, seed=5, key="k"))
    assert len({r["messages"][0]["content"] for r in records}) == 2000
    assert len({r["entry_point"] for r in records}) > 625  # the old verb x noun list ran out at 625
    for r in records:
        assert f"`{r['entry_point']}`" in r["messages"][0]["content"]
        assert r["topic"] in code_textbook.subjects(TOPICS)
    assert records == list(code_exercises.space(TOPICS).take(2000, seed=5, key="k"))
    assert [r["entry_point"] for r in records] != [
        r["entry_point"] for r in code_exercises.space(TOPICS).take(2000, seed=6, key="k")
    ]


GOOD = '''Here is the exercise:

```python
from collections import Counter


def count_words(text: str) -> dict[str, int]:
    """Count how often each word occurs in `text`.

    >>> count_words("a b a")
    {'a': 2, 'b': 1}
    """
    return dict(Counter(text.split()))
```

print(count_words("x"))
'''


def test_split_exercise_gives_runnable_prompt_and_solution():
    prompt, solution, name = split_exercise(extract_code(GOOD), "count_words")
    assert name == "count_words"
    assert prompt.startswith("from collections import Counter\n")
    assert prompt.rstrip().endswith('"""') and "def count_words(text: str)" in prompt
    assert solution == "    return dict(Counter(text.split()))\n"
    namespace = {}
    exec(compile(prompt + solution, "<exercise>", "exec"), namespace)  # the pair is real, working code
    assert namespace["count_words"]("a b a") == {"a": 2, "b": 1}


@pytest.mark.parametrize(
    "completion, rule",
    [
        ("Sorry, I cannot help with that.", "no_code"),
        ("```python\ndef f(x):\n    return x +\n```", "syntax_error"),
        ("```python\nx = 1\n```\n```python\nprint(x)\n```", "no_code"),
        ("```python\ndef f(x):\n    return x\n```", "no_docstring"),
        ('```python\ndef f(x):\n    """Do it."""\n    pass\n```', "empty_body"),
        ('```python\ndef f(x):\n    """Do it."""\n    total = 0\n    for i in x:\n', "truncated"),
    ],
)
def test_rejections(completion, rule):
    with pytest.raises(Rejected) as info:
        split_exercise(extract_code(completion, truncated=True))
    assert info.value.args[0] == rule


def test_truncated_block_keeps_only_complete_functions():
    text = '```python\ndef f(a):\n    """Double a."""\n    return 2 * a\n\ndef g(b):\n    """Half."""\n    x = [b,\n'
    code = extract_code(text, truncated=True)
    assert "def g" not in code
    ast.parse(code)
    prompt, solution, _ = split_exercise(code)
    assert solution == "    return 2 * a\n"


def test_parse_generations_counts_every_drop():
    records = [
        {"id": "1", "completion": GOOD, "finish_reason": "stop", "entry_point": "count_words"},
        {"id": "2", "completion": GOOD, "finish_reason": "stop", "entry_point": "count_words"},
        {"id": "3", "completion": "no code here", "finish_reason": "stop"},
        {"id": "4", "completion": "", "finish_reason": "error", "error": "HTTP 500"},
        {"id": "5", "completion": "```python\ndef f(:\n```", "finish_reason": "stop"},
    ]
    drops = Counter()
    kept = list(parse_generations(iter(records), drops))
    assert [k["id"] for k in kept] == ["1"]
    assert kept[0]["text"] == kept[0]["prompt"] + kept[0]["solution"]
    assert drops == {"duplicate": 1, "no_code": 1, "generation_error": 1, "syntax_error": 1}
    assert len(kept) + sum(drops.values()) == len(records)

"""Phi-1 CodeTextbook and CodeExercises builders, and the exercise parser."""

import ast

import pytest

from data_pipeline.generation import code_exercises, code_textbook
from data_pipeline.generation.code_exercises import Rejected, extract_code, parse_generations, split_exercise

TOPICS = ["recursion", "sorting algorithms", "hash tables"]
AUDIENCES = ["complete beginners", "working engineers"]


def test_code_textbook_cross_product_and_determinism():
    records = code_textbook.build(TOPICS, AUDIENCES, num_prompts=100, seed=1)
    assert len(records) == 6
    assert {(r["topic"], r["audience"]) for r in records} == {(t, a) for t in TOPICS for a in AUDIENCES}
    assert code_textbook.build(TOPICS, AUDIENCES, 4, seed=3) == code_textbook.build(
        TOPICS, AUDIENCES, 4, seed=3
    )
    text = records[0]["messages"][0]["content"]
    assert records[0]["topic"] in text and records[0]["audience"] in text
    assert "```python" in text and "Do not add a title" in text


def test_code_exercises_force_distinct_names():
    records = code_exercises.build(TOPICS, num_prompts=50, seed=5)
    names = [r["entry_point"] for r in records]
    assert len(names) == 50 == len(set(names))
    for r in records:
        assert f"`{r['entry_point']}`" in r["messages"][0]["content"] and r["topic"] in TOPICS
    assert records == code_exercises.build(TOPICS, num_prompts=50, seed=5)
    assert names != [r["entry_point"] for r in code_exercises.build(TOPICS, num_prompts=50, seed=6)]


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
    kept, drops = parse_generations(records)
    assert [k["id"] for k in kept] == ["1"]
    assert kept[0]["text"] == kept[0]["prompt"] + kept[0]["solution"]
    assert drops == {"duplicate": 1, "no_code": 1, "generation_error": 1, "syntax_error": 1}
    assert len(kept) + sum(drops.values()) == len(records)

"""Self-Instruct: prompts, parsing, filters (ROUGE-L novelty, keywords, length) and the seed file."""

import json
import re

import pytest

from data_pipeline.generation import self_instruct as si
from recipes.generation import SelfInstructSection
from stagekit.io import StageError


def lcs_f1(a: str, b: str) -> float:
    """ROUGE-L F computed independently: LCS over lower-cased alphanumeric tokens."""
    x, y = re.findall(r"[a-z0-9]+", a.lower()), re.findall(r"[a-z0-9]+", b.lower())
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i, u in enumerate(x):
        for j, v in enumerate(y):
            table[i + 1][j + 1] = table[i][j] + 1 if u == v else max(table[i][j + 1], table[i + 1][j])
    lcs = table[-1][-1]
    p, r = lcs / len(y), lcs / len(x)
    return 2 * p * r / (p + r) if lcs else 0.0


def test_rouge_worked_example_is_rejected():
    a = "Translate the following English sentence to French."
    b = "Translate the following English text to Spanish."
    rouge = si.RougeL()
    assert rouge(a, b) == pytest.approx(lcs_f1(a, b)) == pytest.approx(5 / 7)  # ~0.714
    assert si.rejection(b, [a], rouge, SelfInstructSection()) == "similar"
    assert (
        si.rejection("Write a limerick about a cat who loves mathematics.", [a], rouge, SelfInstructSection())
        is None
    )


@pytest.mark.parametrize(
    "instruction, rule",
    [
        ("Describe the image below in detail.", "keyword"),
        ("Plot the following data as a bar chart.", "keyword"),
        ("Go to the website and list its sections.", "keyword"),
        ("Summarize this audio recording.", "keyword"),
        ("Sort.", "length"),
        (" ".join(["word"] * 151), "length"),
        ("- List three fruits that are red.", "format"),
        ("¿Cuál es la capital de Francia hoy?", "format"),
    ],
)
def test_filters(instruction, rule):
    assert si.rejection(instruction, [], si.RougeL(), SelfInstructSection()) == rule


def test_keyword_matches_whole_words_only():
    # "mapping" and "profile" contain "map" and "file" but are not those words
    assert (
        si.rejection(
            "Explain the mapping between keys and values in a profile.",
            [],
            si.RougeL(),
            SelfInstructSection(),
        )
        is None
    )


def test_instruction_prompt_and_parse():
    tasks = [f"Instruction number {i}." for i in range(8)]
    prompt = si.instruction_prompt(tasks)
    assert prompt.count("Task ") == 9 and prompt.endswith("Task 9:")
    assert si.parse_instructions(
        " Write a haiku about rain.\nTask 10: List three prime numbers.\n\n11. Explain DNS."
    ) == [
        "Write a haiku about rain.",
        "List three prime numbers.",
        "Explain DNS.",
    ]


def test_round_one_uses_eight_seed_instructions():
    seeds = si.load_seed_tasks()
    prompts = si.round_one_prompts(seeds, SelfInstructSection(prompts_per_round=3), seed=0)
    assert len(prompts) == 3
    known = {t["instruction"] for t in seeds}
    for p in prompts:
        shown = re.findall(r"^Task \d+: (.+)$", p["messages"][0]["content"], re.M)
        assert len(shown) == 8 and set(shown) <= known


def test_instance_prompts_are_output_first_for_classification():
    seeds = si.load_seed_tasks()
    cls = [t for t in seeds if t["is_classification"]][:2]
    other = [t for t in seeds if not t["is_classification"]][:2]
    p = si.instance_prompt("Is the number even or odd?", True, cls)
    assert p.index("Class label:") < p.index("Input:") and p.endswith("Task: Is the number even or odd?\n")
    q = si.instance_prompt("Add the two numbers.", False, other)
    assert "Class label" not in q and "Output:" in q


def test_parse_instances():
    assert si.parse_instances("Input: 3 4\nOutput: 7\nInput: 1 1\nOutput: 2\n\nTask: next", False) == [
        {"input": "3 4", "output": "7"},
        {"input": "1 1", "output": "2"},
    ]
    assert si.parse_instances("Output: A poem.", False) == [{"input": "", "output": "A poem."}]
    assert si.parse_instances("Class label: yes\nInput: spam!\nClass label: no\nInput: hi", True) == [
        {"input": "spam!", "output": "yes"},
        {"input": "hi", "output": "no"},
    ]
    # one input with two different outputs is ambiguous: the second is dropped
    assert len(si.parse_instances("Input: x\nOutput: 1\nInput: x\nOutput: 2", False)) == 1


def test_shipped_seed_tasks_follow_the_schema():
    seeds = si.load_seed_tasks()
    assert len(seeds) >= 25
    assert {True, False} == {t["is_classification"] for t in seeds}
    assert len({t["instruction"] for t in seeds}) == len(seeds)


def test_bad_seed_file_names_line(tmp_path):
    path = tmp_path / "seeds.jsonl"
    good = {"instruction": "Do it.", "instances": [{"input": "", "output": "ok"}], "is_classification": False}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "instances": "none"}) + "\n")
    with pytest.raises(StageError, match=rf"{path}:2: .*instances"):
        si.load_seed_tasks(path)


@pytest.mark.slow
def test_bootstrap_stage_with_real_teacher(teacher, tmp_path):
    from generation_helpers import minimal_recipe

    from data_pipeline.generation.stages import self_instruct_stage
    from recipes import load_recipe

    recipe = load_recipe(
        minimal_recipe(tmp_path),
        [
            "data.generation.self_instruct.num_instructions=1",
            "data.generation.self_instruct.prompts_per_round=1",
            "data.generation.self_instruct.max_rounds=1",
            "data.generation.self_instruct.max_new_tokens=48",
        ],
    )
    out = tmp_path / "tasks.jsonl"
    manifest = self_instruct_stage(recipe, None, out, teacher=lambda: teacher)
    tasks = [json.loads(line) for line in out.read_text().splitlines()]
    assert manifest["counts"]["new_tasks"] == len(tasks) <= 1
    assert manifest["counts"]["seed_tasks"] == len(si.load_seed_tasks())
    seeds = [t["instruction"] for t in si.load_seed_tasks()]
    rouge, cfg = si.RougeL(), SelfInstructSection()
    for task in tasks:  # whatever the small teacher produced obeys every filter
        assert si.rejection(task["instruction"], seeds, rouge, cfg) is None
        assert task["instances"] and all(i["output"] for i in task["instances"])
    assert set(manifest["drops"]) <= {"length", "keyword", "format", "similar", "no_instances"}

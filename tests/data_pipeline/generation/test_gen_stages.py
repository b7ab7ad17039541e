"""Stage functions and the recipe orchestration (tiny recipe, real teacher, short generations)."""

import json

import pytest
from generation_helpers import main, minimal_recipe

from data_pipeline.generation import pipeline
from data_pipeline.generation.stages import default_paths, prompts_stage
from recipes import load_recipe
from stagekit.io import StageError, read_manifest, sha256_file


def _recipe(tmp_path, *extra):
    return load_recipe(minimal_recipe(tmp_path), [f"run_dir={tmp_path}", *extra])


def test_tiny_recipe_enables_the_textbook_and_exercise_methods():
    gen = load_recipe("tiny").data.generation
    assert gen.cosmopedia.num_prompts > 0 and gen.code_textbook.num_prompts > 0  # -> textbooks.jsonl
    assert gen.code_exercises.num_prompts > 0  # -> exercises.jsonl
    assert gen.teacher.backend == "transformers" and gen.teacher.model == ""  # the offline SmolLM2


def test_prompts_stage_is_deterministic_and_skips_when_fresh(tmp_path):
    recipe = _recipe(tmp_path, "data.generation.cosmopedia.num_prompts=5")
    out = tmp_path / "p.jsonl"
    m1 = prompts_stage(recipe, "cosmopedia", None, out)
    digest = sha256_file(out)
    assert m1["counts"] == {"seeds": 40, "prompts": 5}
    assert prompts_stage(recipe, "cosmopedia", None, out)["created"] == m1["created"]  # skipped
    prompts_stage(recipe, "cosmopedia", None, out, force=True)
    assert sha256_file(out) == digest


def test_prompts_cli_every_method(tmp_path):
    for method in ("cosmopedia", "code-textbook", "code-exercises", "orca", "self-instruct"):
        out = tmp_path / f"{method}.jsonl"
        argv = [
            "prompts",
            "--recipe",
            str(minimal_recipe(tmp_path)),
            "--method",
            method,
            "--num-prompts",
            "3",
        ]
        assert main([*argv, "--output", str(out)]) == 0
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(records) == 3
        assert all(r["method"] == method and r["messages"][-1]["role"] == "user" for r in records)


def test_prompts_with_zero_count_fails_clearly(tmp_path):
    recipe = _recipe(tmp_path, "data.generation.orca.num_prompts=0")
    with pytest.raises(StageError, match="data.generation.orca.num_prompts is 0"):
        prompts_stage(recipe, "orca", None, tmp_path / "o.jsonl")


def test_cosmopedia_seed_file_from_input(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"topic": "Tides", "extract": "The moon pulls the oceans."}) + "\n")
    out = tmp_path / "p.jsonl"
    recipe = _recipe(tmp_path, "data.generation.cosmopedia.num_prompts=3")
    prompts_stage(recipe, "cosmopedia", [seeds], out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["seed_kind"] for r in records} == {"extract"}
    assert all("The moon pulls the oceans." in r["messages"][0]["content"] for r in records)


@pytest.mark.slow
def test_run_generation_tiny(tmp_path, monkeypatch):
    recipe = _recipe(
        tmp_path,
        "data.generation.teacher.threads=1",
        "data.generation.cosmopedia.num_prompts=2",
        "data.generation.code_textbook.num_prompts=1",
        "data.generation.code_exercises.num_prompts=2",
        "data.generation.code_exercises.max_new_tokens=12",
        "data.generation.orca.num_prompts=1",
        "data.generation.sampling.max_new_tokens=12",
        "data.generation.min_text_chars=5",
    )
    manifests = pipeline.run_generation(recipe)
    paths = default_paths(recipe)
    assert set(manifests) == {
        "prompts/cosmopedia", "generations/cosmopedia", "prompts/code-textbook", "generations/code-textbook",
        "prompts/code-exercises", "generations/code-exercises", "prompts/orca", "generations/orca",
        "textbooks", "exercises", "orca-records",
    }  # fmt: skip
    textbooks = [json.loads(line) for line in paths["textbooks"].read_text().splitlines()]
    tm = manifests["textbooks"]
    assert tm["counts"]["in"] == 3 == len(textbooks) + sum(tm["drops"].values())
    assert all(t["text"] and t["method"] in ("cosmopedia", "code-textbook") for t in textbooks)
    em = manifests["exercises"]
    assert em["counts"]["in"] == 2 == em["counts"]["out"] + sum(em["drops"].values())
    orca = [json.loads(line) for line in paths["orca-records"].read_text().splitlines()]
    assert all(set(r) == {"id", "method", "system", "user", "response"} for r in orca)
    for name, manifest in manifests.items():
        assert read_manifest(paths[name]) == manifest

    # everything is fresh now: a second run must not even build the teacher
    def no_teacher(_):
        raise AssertionError("teacher built although every stage was fresh")

    monkeypatch.setattr(pipeline, "build_teacher", no_teacher)
    again = pipeline.run_generation(recipe)
    assert {k: v["created"] for k, v in again.items()} == {k: v["created"] for k, v in manifests.items()}

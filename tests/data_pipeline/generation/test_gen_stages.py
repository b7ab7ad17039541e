"""Stage functions and the recipe orchestration (tiny recipe, real teacher, short generations)."""

import json

import pytest
from generation_helpers import main, minimal_recipe

from data_pipeline.generation import pipeline
from data_pipeline.generation.sources import DEFAULT_TOPICS, read_lines
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
    recipe = _recipe(
        tmp_path, "data.generation.cosmopedia.num_prompts=5", "data.generation.cosmopedia.use_corpus=false"
    )
    out = tmp_path / "p.jsonl"
    m1 = prompts_stage(recipe, "cosmopedia", None, out)
    digest = sha256_file(out)
    topics = len(read_lines(DEFAULT_TOPICS))
    assert m1["counts"]["capacity"] == topics * 4 * 5 and m1["diversity"]["distinct_prompts"] == 5
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
            "data.generation.corpus.use_curation_sources=false",
            "data.generation.corpus.sources.stdlib.max_files=20",  # a few seed files: the extracts path, fast
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
    recipe = _recipe(
        tmp_path, "data.generation.cosmopedia.num_prompts=2", "data.generation.cosmopedia.use_corpus=false"
    )
    prompts_stage(recipe, "cosmopedia", [seeds], out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["seed_kind"] for r in records} == {"extract"}
    assert all("The moon pulls the oceans." in r["messages"][0]["content"] for r in records)


@pytest.mark.slow
def test_run_generation_tiny(tmp_path, monkeypatch):
    recipe = _recipe(
        tmp_path,
        "data.generation.corpus.use_curation_sources=false",
        "data.generation.corpus.sources.stdlib.max_files=20",
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
    assert all(set(r) == {"id", "method", "text", "prompt", "system", "user", "response"} for r in orca)
    assert all(r["text"] == r["prompt"] + r["response"] for r in orca)
    for name, manifest in manifests.items():
        assert read_manifest(paths[name]) == manifest

    # everything is fresh now: a second run must not even build the teacher
    def no_teacher(_):
        raise AssertionError("teacher built although every stage was fresh")

    monkeypatch.setattr(pipeline, "build_teacher", no_teacher)
    again = pipeline.run_generation(recipe)
    assert {k: v["created"] for k, v in again.items()} == {k: v["created"] for k, v in manifests.items()}


def test_self_instruct_and_orca_text_enter_a_mixture(tmp_path):
    """Both methods' records, as their stages write them, packed by the curation mixture (SmolLM2's tokenizer)."""
    from transformers import AutoTokenizer

    from data_pipeline.curation.mixture import run_shards
    from data_pipeline.generation import self_instruct
    from data_pipeline.generation.stages import orca_records_stage
    from recipes.curation import MixtureComponent
    from stagekit.assets import smollm2_dir
    from stagekit.shards import ShardReader

    recipe = _recipe(tmp_path, "data.curation.shards.val_fraction=0.2")
    generations = tmp_path / "orca-generations.jsonl"
    generations.write_text(
        "".join(
            json.dumps({"id": f"o{i}", "system": "Explain step by step." if i % 2 else "", "user": f"What is {i}+1?",
                        "completion": f"{i}+1 is {i + 1} because adding one counts on.", "error": None}) + "\n"
            for i in range(5)
        )
    )  # fmt: skip
    orca_records_stage(recipe, [generations], tmp_path / "orca.jsonl")
    tasks = [
        {
            "id": f"s{i}",
            "instruction": f"Double the number {i}.",
            "instances": [{"input": "", "output": str(2 * i)}],
        }
        for i in range(5)
    ]
    (tmp_path / "si.jsonl").write_text(
        "".join(
            json.dumps({**t, "text": self_instruct.render(t["instruction"], t["instances"])}) + "\n"
            for t in tasks
        )
    )
    assert (
        self_instruct.render("Add.", [{"input": "1, 2", "output": "3"}])
        == "Task: Add.\nInput: 1, 2\nOutput: 3\n"
    )
    components = [
        (
            MixtureComponent(name="orca", path="orca.jsonl", curate=False, mask_prompt=True),
            tmp_path / "orca.jsonl",
        ),
        (MixtureComponent(name="self_instruct", path="si.jsonl", curate=False), tmp_path / "si.jsonl"),
    ]
    run_shards(recipe, "finetune", components, smollm2_dir(), tmp_path / "shards" / "finetune")
    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    texts = [
        json.loads(line)["text"] for name in ("orca.jsonl", "si.jsonl") for line in (tmp_path / name).open()
    ]
    expected = sum(len(tok(t, add_special_tokens=False).input_ids) + 1 for t in texts)  # + one eot each
    packed = sum(
        ShardReader(tmp_path / "shards" / "finetune" / split).num_tokens for split in ("train", "val")
    )
    assert packed == expected

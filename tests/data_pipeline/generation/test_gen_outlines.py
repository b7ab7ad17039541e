"""Teacher-expanded seeds: course outlines (subject -> units -> sections) for Cosmopedia and a Python-concept
taxonomy for CodeTextbook, built once by the real teacher, cached with a manifest, and feeding the prompt spaces."""

import json

import pytest

from data_pipeline.generation import code_textbook, outlines
from data_pipeline.generation.pipeline import capacity, run_generation
from data_pipeline.generation.seeds import ExtractStore
from data_pipeline.generation.stages import default_paths, outlines_stage
from recipes import load_recipe
from stagekit.io import StageError, read_manifest


def test_parse_list_takes_items_not_prose():
    answer = (
        "Here are the units:\n"
        "1. Cell Biology\n"
        "2) **Genetics**: how traits are inherited\n"
        "- Evolution.\n"
        "* cell biology\n"  # a repeat, whatever the case
        "3. A\n"  # too short to name anything
        "The course ends with a project.\n"
        "4. Ecology\n"
    )
    assert outlines.parse_list(answer, 10) == ["Cell Biology", "Genetics", "Evolution", "Ecology"]
    assert outlines.parse_list(answer, 2) == ["Cell Biology", "Genetics"]
    assert outlines.parse_list("I cannot help with that.", 5) == []


@pytest.mark.slow
def test_teacher_expansions_are_cached_and_grow_the_prompt_spaces(tmp_path, teacher):
    subjects, code_topics = tmp_path / "subjects.txt", tmp_path / "code_topics.txt"
    subjects.write_text("Photosynthesis\nPlate tectonics\n")
    code_topics.write_text("recursion\nstring formatting\n")
    (tmp_path / "recipe.yaml").write_text(f"name: outlines\nrun_dir: {tmp_path / 'run'}\n")
    overrides = [
        f"data.generation.outlines={{units: 2, sections: 3, concepts: 2, max_new_tokens: 48, subjects: {subjects}}}",
        "data.generation.sampling.temperature=0.0",
        "data.generation.cosmopedia={num_prompts: 1, use_corpus: false}",
        f"data.generation.code_textbook={{num_prompts: 1, use_corpus: false, topics: {code_topics}}}",
    ]
    recipe = load_recipe(tmp_path / "recipe.yaml", overrides)
    builds = []

    def factory():
        builds.append(1)
        return teacher

    out = tmp_path / "outlines.jsonl"
    manifest = outlines_stage(recipe, "outlines", out, teacher=factory)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert manifest["counts"]["seeds"] == len(records) > 0
    for r in records:
        assert (
            r["subject"] in ("Photosynthesis", "Plate tectonics")
            and r["topic"] == f"{r['subject']}: {r['unit']}"
        )
        lines = r["outline"].splitlines()
        assert 1 <= len(lines) <= 3 and all(line.startswith(f"{i}. ") for i, line in enumerate(lines, 1))
    assert not list(tmp_path.glob("*.partial"))  # the journals go once every answer is in
    assert outlines_stage(recipe, "outlines", out, teacher=factory) == read_manifest(out) and len(builds) == 1

    tax = tmp_path / "taxonomy.jsonl"
    outlines_stage(recipe, "taxonomy", tax, teacher=factory)
    concepts = outlines.taxonomy_topics(tax)
    assert concepts and all(t.split(": ")[0] in ("recursion", "string formatting") for t in concepts)

    # Each outline is one more seed for Cosmopedia's audiences x formats; each concept one more CodeTextbook topic.
    base_cosmo, _ = capacity(recipe, "cosmopedia")
    base_code, _ = capacity(recipe, "code-textbook")
    grown = load_recipe(
        tmp_path / "recipe.yaml",
        [
            *overrides,
            f"data.generation.cosmopedia.outlines={out}",
            f"data.generation.code_textbook.taxonomy={tax}",
        ],
    )
    assert capacity(grown, "cosmopedia")[0] == base_cosmo + len(records) * 4 * 5
    store = ExtractStore(tmp_path)  # no corpus: topics only
    try:
        topics = ["recursion", "string formatting", *concepts]
        reference = code_textbook.space(topics, grown.data.generation.code_textbook.audiences, store)
    finally:
        store.close()
    assert capacity(grown, "code-textbook")[0] == reference.size > base_code


def test_zero_count_names_the_key(tmp_path):
    recipe = load_recipe("tiny", [f"run_dir={tmp_path}"])
    with pytest.raises(StageError, match=r"data\.generation\.outlines\.concepts is 0"):
        outlines_stage(recipe, "taxonomy", tmp_path / "taxonomy.jsonl")


@pytest.mark.slow
def test_a_recipe_run_feeds_the_expansions_to_the_prompt_stages(tmp_path):
    """`data_pipeline all` with outlines/concepts on: the cached outlines and taxonomy are inputs of the Cosmopedia
    and CodeTextbook prompt stages, which build the same space as a recipe pointing at those files by hand."""
    code_topics = tmp_path / "code_topics.txt"
    code_topics.write_text("recursion\nstring formatting\n")
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        "data.generation.outlines={units: 2, sections: 2, concepts: 2, max_new_tokens: 32}",
        "data.generation.sampling={max_new_tokens: 8, temperature: 0.0}",
        "data.generation.cosmopedia={num_prompts: 1, use_corpus: false}",
        f"data.generation.code_textbook={{num_prompts: 1, use_corpus: false, topics: {code_topics}}}",
        "data.generation.code_exercises.num_prompts=0",
    ]
    recipe = load_recipe("tiny", overrides)
    manifests = run_generation(recipe)
    paths = default_paths(recipe)
    by_hand = load_recipe(
        "tiny",
        [
            *overrides,
            f"data.generation.cosmopedia.outlines={paths['outlines']}",
            f"data.generation.code_textbook.taxonomy={paths['taxonomy']}",
        ],
    )
    for method, expansion in (("cosmopedia", "outlines"), ("code-textbook", "taxonomy")):
        manifest = manifests[f"prompts/{method}"]
        assert manifests[expansion]["counts"]["seeds"] > 0
        assert str(paths[expansion]) in json.dumps(manifest["inputs"])
        assert manifest["counts"]["capacity"] == capacity(by_hand, method)[0] > capacity(recipe, method)[0]

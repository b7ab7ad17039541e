"""Recipe loading: strict typing, overrides, and one clear error naming file and key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import get_type_hints

import pytest

from recipes import Recipe, RecipeError, load_recipe
from recipes.config import build, setting

RECIPES = sorted(p.stem for p in Path("recipes").glob("*.yaml"))


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_load(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    recipe.model.config()  # the architecture section resolves to a valid ModelConfig


def _walk(cls, prefix=""):
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield prefix + f.name, f
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _walk(hints[f.name], prefix + f.name + ".")


def test_every_key_is_documented():
    undocumented = [name for name, f in _walk(Recipe) if not f.metadata.get("doc")]
    assert not undocumented, f"recipe keys without documentation: {undocumented}"


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmodel:\n  preset: tiny\n  presett: tiny\n")
    with pytest.raises(RecipeError, match=r"r\.yaml.*unknown key 'model\.presett'"):
        load_recipe(path)


def test_wrong_type_names_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nseed: twelve\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: key 'seed' expected an integer, got 'twelve'"):
        load_recipe(path)


def test_missing_required_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("seed: 3\n")
    with pytest.raises(RecipeError, match=r"missing required key 'name'"):
        load_recipe(path)


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:\d+: malformed YAML"):
        load_recipe(path)


def test_overrides_are_typed_and_checked():
    recipe = load_recipe("tiny", ["seed=7", "model.overrides.num_layers=2"])
    assert recipe.seed == 7 and recipe.model.config().num_layers == 2
    with pytest.raises(RecipeError, match="unknown key 'sede'"):
        load_recipe("tiny", ["sede=7"])
    with pytest.raises(RecipeError, match="expected key=value"):
        load_recipe("tiny", ["seed"])


def test_unknown_model_preset():
    with pytest.raises(RecipeError, match="unknown model preset 'huge'"):
        load_recipe("tiny", ["model.preset=huge"])


def test_nested_types():
    @dataclasses.dataclass
    class Inner:
        weights: dict[str, float] = setting("w", factory=dict)
        tags: list[str] = setting("t", factory=list)
        mode: str | None = setting("m", None)

    ok = build(Inner, {"weights": {"a": 1, "b": 0.5}, "tags": ["x"], "mode": None}, "f.yaml")
    assert ok.weights == {"a": 1.0, "b": 0.5} and isinstance(ok.weights["a"], float)
    with pytest.raises(RecipeError, match=r"key 'tags\[1\]' expected a string"):
        build(Inner, {"tags": ["x", 3]}, "f.yaml")
    with pytest.raises(RecipeError, match=r"key 'weights\.a' expected a number"):
        build(Inner, {"weights": {"a": "heavy"}}, "f.yaml")


def test_cli_reports_bad_recipe_and_exits_nonzero(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nbogus: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "recipes", "show", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "unknown key 'bogus'" in proc.stderr and proc.stderr.count("\n") == 1


def test_float_accepts_exponent_without_dot(tmp_path):
    # YAML 1.1 (PyYAML) reads `1e-3` as a string; a float key must still take it.
    recipe = load_recipe("tiny", ["train.pretrain.lr=3e-4"])
    assert recipe.train.pretrain.lr == 3e-4
    with pytest.raises(RecipeError, match="expected a number"):
        load_recipe("tiny", ["train.pretrain.lr=fast"])

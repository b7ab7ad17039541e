"""Fixtures: a recipe (schema defaults, not tiny.yaml's tuning) whose run directory is the test's tmp_path."""

from __future__ import annotations

import pytest

from recipes import load_recipe


@pytest.fixture
def make_recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: test\nrun_dir: {tmp_path / 'run'}\n", encoding="utf-8")

    def make(*overrides: str):
        return load_recipe(path, list(overrides))

    return make

"""Fixtures for the training tests (helpers live in train_testkit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_testkit import build_data, new_run


@pytest.fixture(scope="session")
def data_template(tmp_path_factory) -> Path:
    """<dir>/tokenizer and <dir>/shards/{pretrain,finetune}/{train,val}, built once per session."""
    return build_data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def make_run(tmp_path, data_template):
    """make_run(name, **sections) -> recipe path (see train_testkit.new_run)."""
    return lambda name="run", **train: new_run(tmp_path, data_template, name, **train)

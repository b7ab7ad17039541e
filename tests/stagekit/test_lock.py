"""requirements/lock.py: the lock parser and the check `make test` runs before pytest."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lock(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("lock", ROOT / "requirements" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path)
    (tmp_path / "teacher.lock").write_text("")
    return module, tmp_path


def _pin(name: str, version: str) -> str:
    return f"{name}=={version} \\\n    --hash=sha256:{'0' * 64}\n    # via textbooks (pyproject.toml)\n"


def test_committed_locks_pin_every_package_once_with_hashes():
    for name in ("cpu.lock", "torch-cpu.lock", "teacher.lock"):
        text = (ROOT / "requirements" / name).read_text()
        pins = [line for line in text.splitlines() if line and not line[0].isspace() and "==" in line]
        assert pins, name
        assert all(line.endswith("\\") for line in pins), f"{name}: a pin without --hash"
        names = [line.split("==")[0].lower() for line in pins]
        assert len(names) == len(set(names)), name
    cpu = (ROOT / "requirements" / "cpu.lock").read_text()
    assert "\ntorch==2.13.0+cpu \\" in cpu and "nvidia-" not in cpu  # the CPU build, no CUDA wheels


def test_check_names_each_mismatch(lock, capsys):
    module, here = lock
    pytest_version = importlib.metadata.version("pytest")
    (here / "cpu.lock").write_text(
        _pin("pytest", pytest_version) + _pin("PyYAML", "0.0.1") + _pin("not-a-pkg", "1.0")
    )
    assert module.check() == 1
    err = capsys.readouterr().err
    assert "pyyaml: locked 0.0.1, installed " + importlib.metadata.version("pyyaml") in err
    assert "not-a-pkg: locked 1.0, installed nothing" in err
    assert "pytest:" not in err  # the matching pin is not reported


def test_check_passes_when_versions_match(lock, capsys):
    module, here = lock
    (here / "cpu.lock").write_text(
        _pin("pytest", importlib.metadata.version("pytest"))
        + _pin("PyYAML", importlib.metadata.version("pyyaml"))
    )
    assert module.check() == 0
    assert "matches" in capsys.readouterr().out

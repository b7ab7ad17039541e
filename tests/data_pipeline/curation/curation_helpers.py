"""Small real corpora and JSONL helpers for the curation tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.curation.executor import DocumentWorker, FilterWorker
from data_pipeline.curation.mixture import TokenizeWorker

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def stdlib_text(name: str) -> str:
    return (STDLIB / name).read_text(encoding="utf-8")


def write_records(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@dataclass
class KillableWorker(DocumentWorker):
    """Logs every record it processes; SIGKILLs its own process at record `kill_at` while `log_dir/kill` exists."""

    log_dir: str
    kill_at: str

    def process(self, records: list[dict]) -> list[int]:
        log = Path(self.log_dir)
        for r in records:
            with open(log / "processed.txt", "a", encoding="utf-8") as f:
                f.write(r["id"] + "\n")
            if r["id"] == self.kill_at and (log / "kill").exists():
                (log / "kill").unlink()
                os.kill(os.getpid(), signal.SIGKILL)
        return [len(r["text"]) for r in records]


@dataclass
class KillableFilter(FilterWorker, KillableWorker):
    """KillableWorker as a filter: drops the records whose text has an odd length."""

    def verdict(self, length: int) -> str | None:
        return "odd" if length % 2 else None


class KillableTokenizer(TokenizeWorker):
    """TokenizeWorker that logs every record id to $KILL_DIR/processed.txt and SIGKILLs its own process at
    record $KILL_AT while $KILL_DIR/kill exists."""

    def process(self, records: list[dict]) -> list[list]:
        log = Path(os.environ["KILL_DIR"])
        for r in records:
            with open(log / "processed.txt", "a", encoding="utf-8") as f:
                f.write(r["id"] + "\n")
            if r["id"] == os.environ["KILL_AT"] and (log / "kill").exists():
                (log / "kill").unlink()
                os.kill(os.getpid(), signal.SIGKILL)
        return super().process(records)


def script_env(**extra: str) -> dict[str, str]:
    """Environment for a test script that imports these helpers and the repo's packages."""
    path = os.pathsep.join([str(Path(__file__).parent), str(Path.cwd())])
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_in_own_session(cmd: list[str], env: dict[str, str]) -> int:
    """Run `cmd` in its own session and return its exit status; then SIGKILL what is left of its process group
    (a SIGKILLed driver leaves datatrove's manager process behind)."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    code = proc.wait(timeout=300)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return code

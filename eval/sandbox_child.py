"""The sandboxed side of one test run: `python -I -S -B sandbox_child.py REQUEST_FD RESPONSE_FD` (eval/sandbox.py).

It never decides a verdict. It reads one job (workdir, limits, layers, program, entry point) from the request
pipe, locks itself down, says `hello` (before any model code runs, so that message can be trusted), executes
the program (prompt + completion) and then answers calls of the entry point: arguments and results cross the
pipes as plain literals (`encode`/`decode`). The test's checks run in the trusted parent; whatever this
process writes to any descriptor can only ever be read there as the return value of the pending call.

Layers, each switchable off for tests only (the parent's `Limits.layers`):
1. rlimits (always): address space, CPU seconds, file size, open files, no core dumps;
2. seccomp-bpf (Linux x86-64, arm64): a deny-list of the syscalls that reach other processes or the kernel's
   wider surface (`DENY`); clone is allowed only with CLONE_THREAD (threads work, processes do not), clone3
   answers ENOSYS so libc falls back to clone; irreversible;
3. Landlock (Linux >= 5.13): no writes, deletes, renames or execve outside the working directory, no TCP
   bind/connect (ABI >= 4), no signals or abstract unix sockets beyond this process (ABI >= 6);
4. a PEP 578 audit hook, which cannot be removed: refuses process creation, signals, sockets, ctypes, and
   file-system changes (metadata included) outside the working directory (`dir_fd` and descriptors included).
   Its tables and helpers live in its closure, so patching this module (it runs as `__main__`) does not
   change it; the few spawning/signalling functions that raise no audit event are stubbed out.
Where seccomp is wanted but missing (another OS or machine), RLIMIT_NPROC=0 is the backstop against new
processes for non-root users, at the price of threads.

Standard library only: this file runs in an isolated interpreter (-I), outside the package; eval/sandbox.py
imports the codec and framing from it, so both sides speak the same format.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import resource
import struct
import sys

# ---- wire format (shared with eval/sandbox.py) ---------------------------------------------------------

HEADER = struct.Struct("!I")  # big-endian payload length, then UTF-8 JSON
MAX_FRAME = 16 << 20  # a larger frame is a protocol error: results are test values, not bulk data
TAGS = {"tuple": tuple, "set": set, "frozenset": frozenset}


def encode(value):
    """A plain literal as JSON-ready data; anything else (objects, functions, generators) is a TypeError."""
    if value is None or isinstance(value, bool):
        return value
    for kind in (int, float, str):  # subclasses (IntEnum, str subclasses) travel as their base type
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    for tag, kind in TAGS.items():
        if isinstance(value, kind):
            return {tag: [encode(v) for v in value]}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, complex):
        return {"complex": [value.real, value.imag]}
    raise TypeError(f"a {type(value).__name__} is not a plain literal")


def decode(data):
    """The inverse of `encode`, building only builtin literals: nothing the sender wrote can run here."""
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode(v) for v in data]
    if type(data) is dict and len(data) == 1:
        ((tag, body),) = data.items()
        if tag in TAGS and type(body) is list:
            return TAGS[tag](decode(v) for v in body)
        if tag == "dict" and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
            return {decode(k): decode(v) for k, v in body}
        if tag == "bytes" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "complex" and type(body) is list and len(body) == 2:
            return complex(float(body[0]), float(body[1]))
    raise ValueError(f"not an encoded literal: {str(data)[:80]}")


def frame(message: dict) -> bytes:
    payload = json.dumps(message).encode()
    return HEADER.pack(len(payload)) + payload


def read_frame(read) -> dict:
    """One message; `read(n)` returns exactly n bytes or raises. Oversized or malformed frames raise ValueError."""
    (size,) = HEADER.unpack(read(HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    message = json.loads(read(size))
    if type(message) is not dict:
        raise ValueError("a message must be a JSON object")
    return message


# ---- layer 1: rlimits ----------------------------------------------------------------------------------


def set_limits(memory_bytes: int, cpu_seconds: int, file_bytes: int) -> None:
    for limit, value in (
        (resource.RLIMIT_AS, memory_bytes),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_FSIZE, file_bytes),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(limit, (value, value))


# ---- layer 2: seccomp ----------------------------------------------------------------------------------

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
CLONE_THREAD = 0x00010000
CLONE_NEW_NAMESPACES = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)
TIOCSTI = 0x5412  # ioctl pushing bytes into a terminal's input queue
X32_SYSCALL_BIT = 0x40000000
# Per machine: (AUDIT_ARCH, {name: syscall number}) refused with EPERM. clone, clone3 and ioctl are handled
# separately. Names are the kernel's (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h).
_COMMON_NEW = {  # numbers shared by x86-64 and the generic table (added after 2019)
    "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "pidfd_open": 434, "pidfd_getfd": 438, "process_madvise": 440, "mount_setattr": 442,
}  # fmt: skip
DENY = {
    "x86_64": (0xC000003E, {
        "socket": 41, "connect": 42, "accept": 43, "bind": 49, "listen": 50, "socketpair": 53, "accept4": 288,
        "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "kill": 62, "tkill": 200, "tgkill": 234,
        "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297, "ptrace": 101, "process_vm_readv": 310,
        "process_vm_writev": 311, "kcmp": 312, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
        "unshare": 272, "setns": 308, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "add_key": 248, "request_key": 249, "keyctl": 250, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320, "reboot": 169,
        "name_to_handle_at": 303, "open_by_handle_at": 304, "shmget": 29, "shmat": 30, "shmctl": 31,
        "semget": 64, "semop": 65, "semctl": 66, "shmdt": 67, "msgget": 68, "msgsnd": 69, "msgrcv": 70,
        "msgctl": 71, "semtimedop": 220, "setrlimit": 160, "prlimit64": 302, **_COMMON_NEW,
    }, {"clone": 56, "clone3": 435, "ioctl": 16}),
    "aarch64": (0xC00000B7, {
        "socket": 198, "connect": 203, "accept": 202, "bind": 200, "listen": 201, "socketpair": 199,
        "accept4": 242, "execve": 221, "execveat": 281, "kill": 129, "tkill": 130, "tgkill": 131,
        "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240, "ptrace": 117, "process_vm_readv": 270,
        "process_vm_writev": 271, "kcmp": 272, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
        "unshare": 97, "setns": 268, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "add_key": 217,
        "request_key": 218, "keyctl": 219, "init_module": 105, "finit_module": 273, "delete_module": 106,
        "kexec_load": 104, "kexec_file_load": 294, "reboot": 142, "name_to_handle_at": 264,
        "open_by_handle_at": 265, "msgget": 186, "msgctl": 187, "msgrcv": 188, "msgsnd": 189, "semget": 190,
        "semctl": 191, "semtimedop": 192, "semop": 193, "shmget": 194, "shmctl": 195, "shmat": 196,
        "shmdt": 197, "setrlimit": 164, "prlimit64": 261, **_COMMON_NEW,
    }, {"clone": 220, "clone3": 435, "ioctl": 29}),
}  # fmt: skip


def seccomp_program(audit_arch: int, deny: dict, special: dict, refusal: int) -> list[tuple]:
    """Classic BPF over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]} (little-endian).

    Written with labels; `assemble` turns them into the relative jumps BPF wants."""
    # BPF_LD|W|ABS, BPF_JMP|JEQ|K, JMP|JGE|K, JMP|JSET|K, BPF_RET|K
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    code = [
        (ld, 0, 0, 4), (jeq, 0, "refuse", audit_arch),  # another ABI (e.g. i386 on x86-64): refuse all
        (ld, 0, 0, 0), (jge, "refuse", 0, X32_SYSCALL_BIT),  # x32 numbers on x86-64: refuse all
        *[(jeq, "refuse", 0, nr) for nr in sorted(deny.values())],
        (jeq, "enosys", 0, special["clone3"]),  # flags live in memory BPF cannot read; libc falls back to clone
        (jeq, "clone", 0, special["clone"]),
        (jeq, "ioctl", "allow", special["ioctl"]),
        ("clone", ld, 0, 0, 16), (jset, "refuse", 0, CLONE_NEW_NAMESPACES),  # args[0], the flags:
        (jset, "allow", "refuse", CLONE_THREAD),  # no new namespace, and a thread of this process
        ("ioctl", ld, 0, 0, 24), (jeq, "refuse", "allow", TIOCSTI),  # args[1]: faking terminal input
        ("allow", ret, 0, 0, 0x7FFF0000),  # SECCOMP_RET_ALLOW
        ("refuse", ret, 0, 0, 0x00050000 | refusal),  # SECCOMP_RET_ERRNO
        ("enosys", ret, 0, 0, 0x00050000 | errno.ENOSYS),
    ]  # fmt: skip
    return assemble(code)


def assemble(code: list[tuple]) -> list[tuple]:
    """(code, jt, jf, k) with an optional leading label; string jump targets become offsets from the next one."""
    labels = {insn[0]: i for i, insn in enumerate(code) if isinstance(insn[0], str)}
    out = []
    for i, insn in enumerate(code):
        op, jt, jf, k = insn[1:] if isinstance(insn[0], str) else insn
        jt, jf = (labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf))
        out.append((op, jt, jf, k))
    return out


def seccomp(libc: ctypes.CDLL, refusal: int = errno.EPERM) -> bool:
    """Install the filter (irreversible); False on machines without a table. `refusal` is the errno denied
    calls get: tests pass an unusual one to tell the filter's answer from the kernel's own EPERM."""
    table = DENY.get(platform.machine())
    if table is None:
        return False
    prog = seccomp_program(*table, refusal)
    raw = b"".join(struct.pack("HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HxxxxxxP", len(prog), ctypes.addressof(buf))  # struct sock_fprog {u16; ptr}
    return libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0) == 0


# ---- layer 3: Landlock ---------------------------------------------------------------------------------

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # the same on x86-64 and arm64
FS_EXECUTE, FS_WRITE_FILE, FS_REMOVE_DIR, FS_REMOVE_FILE = 1 << 0, 1 << 1, 1 << 4, 1 << 5
FS_MAKE_CHAR, FS_MAKE_DIR, FS_MAKE_REG, FS_MAKE_SOCK = 1 << 6, 1 << 7, 1 << 8, 1 << 9
FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM = 1 << 10, 1 << 11, 1 << 12
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
RULE_PATH_BENEATH = 1


def landlock(libc: ctypes.CDLL, workdir: str) -> int:
    """Restrict this process to writing beneath `workdir`; returns the Landlock ABI used (0: unavailable)."""
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    abi = syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # flag 1: query the ABI
    if abi < 1:
        return 0
    fs = FS_EXECUTE | FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG | FS_MAKE_SYM
    fs |= FS_MAKE_CHAR | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK
    fs |= (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0) | (FS_IOCTL_DEV if abi >= 5 else 0)
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    size = 8 * (3 if abi >= 6 else 2 if abi >= 4 else 1)  # older kernels reject fields they do not know
    ruleset = syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return 0
    allowed = fs & ~(FS_EXECUTE | FS_MAKE_CHAR | FS_MAKE_BLOCK | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_IOCTL_DEV)
    beneath = (ctypes.c_uint8 * 12)()  # struct landlock_path_beneath_attr is packed: u64 access, s32 fd
    dir_fd = os.open(workdir, os.O_PATH | os.O_DIRECTORY)
    ctypes.memmove(beneath, ctypes.byref(ctypes.c_uint64(allowed)), 8)
    ctypes.memmove(ctypes.addressof(beneath) + 8, ctypes.byref(ctypes.c_int32(dir_fd)), 4)
    rule = (ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH), beneath, ctypes.c_uint32(0))
    ok = syscall(SYS_ADD_RULE, *rule) == 0
    ok = ok and syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0
    os.close(dir_fd)
    os.close(ruleset)
    return abi if ok else 0


# ---- layer 4: the audit hook ---------------------------------------------------------------------------


def install_audit_hook(workdir: str) -> None:
    """Add the hook. Everything it consults is bound here, as closure cells and C functions taken from
    `posix` now: module globals (this module's, `os`'s, `os.path`'s) may be patched by the program later."""
    import posix

    lstat, readlink, getcwd, stat = posix.lstat, posix.readlink, posix.getcwd, posix.stat
    fsdecode, fspath = os.fsdecode, os.fspath
    root = os.path.realpath(workdir)
    s_ifmt, s_iflnk, s_ifdir = 0o170000, 0o120000, 0o040000
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    handle_flags = os.O_DIRECTORY | getattr(os, "O_PATH", 0)
    # Events that start processes, signal, open sockets, reach C code or walk the interpreter's objects
    # (which is how a program would find this hook's closure), with a few prefixes for whole families.
    blocked = frozenset({
        "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.posix_spawn", "os.posix_spawnp",
        "os.startfile", "signal.pthread_kill", "subprocess.Popen", "pty.spawn", "sys._current_frames",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "resource.setrlimit", "resource.prlimit",
    })  # fmt: skip
    blocked_prefixes = ("ctypes.", "socket.", "os.exec", "os.spawn")
    # Modules holding functions that raise no audit event, stubbed below: a fresh import would bring them back.
    no_import = frozenset({"_posixsubprocess", "posix", "_signal"})
    # {event: ((path arg, dir_fd arg or None), ...)}: every path an event changes must lie inside.
    fs_events = {
        "os.mkdir": ((0, 2),), "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.rename": ((0, 2), (1, 3)),
        "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),), "os.truncate": ((0, None),),
        "os.utime": ((0, 3),), "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.chflags": ((0, None),),
        "os.lchflags": ((0, None),), "os.mkfifo": ((0, 2),), "os.mknod": ((0, 3),),
        "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
    }  # fmt: skip

    def resolve(path: str, base: str) -> str:
        """Absolute path with every existing symlink followed (`os.path.realpath` without its globals)."""
        parts = (path if path.startswith("/") else base + "/" + path).split("/")
        resolved, hops = "", 0
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                resolved = resolved.rsplit("/", 1)[0]
                continue
            candidate = resolved + "/" + part
            try:
                is_link = lstat(candidate).st_mode & s_ifmt == s_iflnk
            except OSError:
                is_link = False
            if not is_link:
                resolved = candidate
                continue
            hops += 1
            if hops > 40:
                raise PermissionError("sandbox: too many symlinks")
            target = readlink(candidate)
            parts = target.split("/") + parts
            if target.startswith("/"):
                resolved = ""
        return resolved or "/"

    def opened(fd: int) -> str:
        """Where an open descriptor points (Linux /proc; elsewhere the event is refused)."""
        try:
            return readlink(f"/proc/self/fd/{int(fd)}")
        except OSError:
            raise PermissionError(f"sandbox: cannot tell where descriptor {fd} points") from None

    def where(path, dir_fd) -> str:
        """The resolved path an event names (a path, or a descriptor as `os.fchmod` passes); relative paths count
        from `dir_fd`'s directory when given."""
        if isinstance(path, int):
            return opened(path)
        text = fsdecode(fspath(path))
        if dir_fd is None or dir_fd < 0 or text.startswith("/"):  # events report a missing dir_fd as -1
            return resolve(text, getcwd())
        return resolve(text, opened(dir_fd))

    def inside(resolved: str) -> bool:
        return resolved == root or resolved.startswith(root + "/")

    def check_open(path, mode, flags) -> None:
        if isinstance(path, int) or path is None:  # an already-open descriptor
            return
        resolved = where(path, None)
        if inside(resolved):
            return
        if any(c in (mode or "") for c in "wax+") or (flags or 0) & write_flags:
            raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
        # `os.open` hides dir_fd from the hook: a descriptor of an outside directory would let a later
        # `open(name, dir_fd=fd)` write there, so such descriptors are never handed out.
        try:
            is_dir = stat(resolved).st_mode & s_ifmt == s_ifdir
        except OSError:
            is_dir = False
        if is_dir or (flags or 0) & handle_flags:
            raise PermissionError(f"sandbox: opening directory {path!r} outside the working directory")

    def check_symlink(args: tuple) -> None:
        target = fsdecode(fspath(args[0]))
        escapes = (
            ".." in target.split("/") if not target.startswith("/") else not inside(resolve(target, "/"))
        )
        if escapes:  # a relative target with `..` would point elsewhere once the link is moved
            raise PermissionError(f"sandbox: symlink to {target!r} may lead outside the working directory")

    def hook(event: str, args: tuple) -> None:
        if event in blocked or event.startswith(blocked_prefixes):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            check_open(*args[:3])
        elif event == "os.chdir":
            # Relative paths are checked against the working directory, while `os.open` hides its dir_fd: with
            # the cwd pinned at the top, a dir_fd (always inside) can only lead deeper than the check assumed.
            if isinstance(args[0], int) or where(args[0], None) != root:
                raise PermissionError("sandbox: the working directory cannot change")
        elif event == "import" and args[0] in no_import:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        elif event in fs_events:
            if event == "os.symlink":
                check_symlink(args)
            for path_at, dir_fd_at in fs_events[event]:
                path = args[path_at]
                dir_fd = args[dir_fd_at] if dir_fd_at is not None and dir_fd_at < len(args) else None
                if not inside(where(path, dir_fd)):
                    raise PermissionError(f"sandbox: {event} on {path!r} outside the working directory")

    # Functions that spawn or signal without raising an audit event are replaced before the program runs by
    # one that refuses (the modules stay importable: `subprocess` and `asyncio` import from them), and
    # `no_import` refuses a fresh copy of the modules.
    import _posixsubprocess
    import signal

    def refuse(*args, **kwargs):
        raise PermissionError("sandbox: spawning processes and signalling through pidfds are not allowed")

    for module, name in ((_posixsubprocess, "fork_exec"), (os, "pidfd_open"), (posix, "pidfd_open"),
                         (signal, "pidfd_send_signal")):  # fmt: skip
        if hasattr(module, name):
            setattr(module, name, refuse)
    sys.addaudithook(hook)


# ---- the job -------------------------------------------------------------------------------------------

LAYERS = ("seccomp", "landlock", "audit_hook")  # rlimits are always applied


def lock_down(job: dict) -> dict:
    """Apply the layers the job asks for (all, unless a test switched some off); returns which held."""
    workdir, wanted = job["workdir"], set(job["layers"])
    set_limits(job["memory_bytes"], job["cpu_seconds"], job["file_bytes"])  # before seccomp refuses setrlimit
    libc = ctypes.CDLL(None, use_errno=True)
    # Required for unprivileged Landlock and seccomp; also means nothing exec'd could regain privileges.
    no_new_privs = libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    held = {
        "rlimits": True,
        "landlock_abi": landlock(libc, workdir) if no_new_privs and "landlock" in wanted else 0,
        "seccomp": seccomp(libc) if no_new_privs and "seccomp" in wanted else False,
    }
    if "seccomp" in wanted and not held["seccomp"]:  # RLIMIT_NPROC counts threads too: a fallback only
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    if "audit_hook" in wanted:
        install_audit_hook(workdir)
    held["audit_hook"] = "audit_hook" in wanted
    return held


def describe(error: BaseException) -> list[str]:
    return [type(error).__name__, str(error)[:500]]


def main(request_fd: int, response_fd: int) -> None:
    def read(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = os.read(request_fd, n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def send(message: dict) -> None:
        data = memoryview(frame(message))
        while data:
            data = data[os.write(response_fd, data) :]

    job = read_frame(read)
    os.chdir(job["workdir"])
    layers = lock_down(job)
    os.closerange(3, min(request_fd, response_fd))  # nothing but the two pipes and /dev/null stays open
    os.closerange(max(request_fd, response_fd) + 1, 1 << 16)
    send({"hello": layers})  # the last message written before model code runs
    sys.path.extend(job["site_packages"])  # started with -S: packages import, .pth files are not run
    namespace: dict = {"__name__": "__candidate__"}
    try:
        exec(compile(job["program"], "<program>", "exec"), namespace)
        function = namespace[job["entry_point"]]
        if not callable(function):
            raise TypeError(f"{job['entry_point']} is not callable")
    except BaseException as e:  # SystemExit included: the program did not load
        send({"load_error": describe(e)})
        os._exit(0)
    send({"ready": True})
    while True:
        call = read_frame(read)
        try:
            answer = {
                "id": call["id"],
                "value": encode(function(*decode(call["args"]), **decode(call["kwargs"]))),
            }
        except BaseException as e:
            answer = {"id": call["id"], "error": describe(e)}
        send(answer)


if __name__ == "__main__":
    try:
        main(int(sys.argv[1]), int(sys.argv[2]))
    except EOFError:  # the parent closed the pipe: done
        pass
    os._exit(0)  # skip interpreter teardown

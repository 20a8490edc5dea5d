"""Minimal root filesystems made from this machine's Debian packages, and a way to run a command in one like a
container would: its own mount namespace, a read-only root, the wrapper mounted read-only at /step-tracer/bin,
a writable /out, any UID.

Kinds (files copied from installed packages, nothing downloaded):
- "busybox": only the statically linked /bin/busybox (package busybox-static) and applet links: no libc at all.
- "glibc": busybox plus the files of libc6 (no locales, no gconv) and coreutils' dynamically linked `env`.
- "musl": busybox plus the files of Debian's `musl` package: a libc, but not glibc.
None has Python. Building and running need root (chroot, mounts) and util-linux's unshare.

Run as a script (by `Chroot.command`, inside `unshare --mount`), this file is the mount-and-exec helper: it
imports only the standard library, because it runs as `python -I -S`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

APPLETS = ("sh", "env", "kill", "sleep", "cat", "echo", "printf", "true", "false", "id", "ls", "touch", "mkdir", "tr")
KINDS = ("busybox", "glibc", "musl")
MOUNT_POINTS = ("proc", "dev", "out", "step-tracer/bin")


def package_installed(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Status}", package], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0 and proc.stdout.strip() == "installed"


def package_files(package: str) -> list[str]:
    proc = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, check=True)
    return [line for line in proc.stdout.splitlines() if line.startswith("/") and line != "/."]


def missing_for(kind: str) -> list[str]:
    """What this machine lacks to make (and use) a root filesystem of `kind`; empty when it can."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool in ("dpkg-query", "unshare", "mount"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if "dpkg-query" in missing:
        return missing
    needed = {"busybox": ["busybox-static"], "glibc": ["busybox-static", "libc6", "coreutils"]}
    needed["musl"] = ["busybox-static", "musl"]
    missing += [p for p in needed[kind] if not package_installed(p)]
    return missing


def copy_path(root: Path, source: str) -> None:
    """Copy one path into `root` at the same place: directories as directories (even where this machine has a
    symlink, as with merged /usr), symlinks as symlinks, files with their modes."""
    target = root / source.lstrip("/")
    src = Path(source)
    if src.is_dir() and not (src.is_symlink() and not src.resolve().is_dir()):
        target.mkdir(parents=True, exist_ok=True)
    elif src.is_symlink():
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_symlink() and not target.exists():
            target.symlink_to(os.readlink(src))
    elif src.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def make_rootfs(kind: str, root: Path) -> Path:
    """Build a root filesystem of `kind` (see the module docstring) in the empty or absent directory `root`."""
    if kind not in KINDS:
        raise ValueError(kind)
    root.mkdir(parents=True, exist_ok=True)
    busybox = next(p for p in package_files("busybox-static") if p.endswith("/busybox"))
    (root / "bin").mkdir()
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for point in MOUNT_POINTS:
        (root / point).mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(mode=0o1777)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    if kind == "glibc":
        for path in package_files("libc6"):
            if "/share/" not in path and "/gconv" not in path:
                copy_path(root, path)
        env = next(p for p in package_files("coreutils") if p.endswith("/bin/env"))
        copy_path(root, env)
    elif kind == "musl":
        for path in package_files("musl"):
            if "/share/" not in path:
                copy_path(root, path)
    return root


# Left out of a package closure: runtime libraries of compiler features the launcher build does not use.
CLOSURE_SKIP = {"libasan8", "liblsan0", "libtsan2", "libubsan1", "libgomp1", "libitm1", "libquadmath0", "dpkg", "tar"}
# The image build's tools: Python 3.11 (the ABI of the dependencies copied from the test run) and a C toolchain.
BUILDER_PACKAGES = ("python3.11", "gcc", "binutils")


def package_closure(packages: Sequence[str]) -> list[str]:
    """`packages` and everything they Depend/Pre-Depend on, as installed here (first installed alternative)."""
    seen: set[str] = set()
    todo = list(packages)
    while todo:
        name = todo.pop()
        if name in seen or name in CLOSURE_SKIP:
            continue
        seen.add(name)
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Depends}, ${Pre-Depends}", name], capture_output=True, text=True, check=True
        )
        for group in filter(None, (g.strip() for g in proc.stdout.split(","))):
            choices = [alt.strip().split()[0].split(":")[0] for alt in group.split("|")]
            chosen = next((c for c in choices if package_installed(c)), None)
            if chosen is not None:  # None: a virtual package nothing here provides by that name
                todo.append(chosen)
    return sorted(p for p in seen if package_installed(p))


def make_builder_rootfs(root: Path, site_files: Sequence[tuple[Path, Path]]) -> Path:
    """A root filesystem like a python:3.11 image with gcc, from this machine's Debian packages: busybox for the
    shell, Debian's python3.11 and gcc, and `site_files` ((source, path inside site-packages)...) installed in
    /usr/local/lib/python3.11/dist-packages. Debian's PEP 668 marker is left out, as official Python images do."""
    make_rootfs("busybox", root)
    for applet in ("ln", "rm", "cp", "mv", "chmod", "sed", "which"):
        (root / "bin" / applet).symlink_to("busybox")
    unwanted = ("/share/doc", "/share/man", "/share/locale", "/share/info", "/gconv", "EXTERNALLY-MANAGED")
    for package in package_closure(BUILDER_PACKAGES):
        for path in package_files(package):
            if not any(part in path for part in unwanted):
                copy_path(root, path)
    (root / "usr/local/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/local/bin/python3").symlink_to("/usr/bin/python3.11")
    site = root / "usr/local/lib/python3.11/dist-packages"
    for source, relative in site_files:
        target = site / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return root


class Chroot:
    """Runs commands in a root filesystem as a step container would see it (see the module docstring)."""

    def __init__(self, root: Path, wrapper: Path, out: Path) -> None:
        self.root = root
        self.wrapper = wrapper
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        out.chmod(0o777)

    def command(
        self, argv: Sequence[str], env: Mapping[str, str], *, uid: int = 0, proc: bool = True, dev: bool = True
    ) -> list[str]:
        spec = {
            "root": str(self.root),
            "binds": [[str(self.wrapper), "step-tracer/bin", True], [str(self.out), "out", False]],
            "proc": proc,
            "dev": dev,
            "uid": uid,
            "argv": list(argv),
            "env": dict(env),
        }
        return ["unshare", "--mount", sys.executable, "-I", "-S", __file__, json.dumps(spec)]

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        uid: int = 0,
        proc: bool = True,
        timeout: float = 60,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.command(argv, env, uid=uid, proc=proc),
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
            capture_output=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )

    def popen(
        self, argv: Sequence[str], env: Mapping[str, str], *, uid: int = 0, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command(argv, env, uid=uid),
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
            **kwargs,
        )


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _enter(spec: dict[str, Any]) -> None:
    """Inside a fresh mount namespace: read-only root, the binds, /proc and /dev, then chroot, drop to the UID
    and exec. Every mount dies with the namespace, so nothing leaks onto the machine whatever happens."""
    root = spec["root"]
    _mount("--make-rprivate", "/")
    _mount("--bind", root, root)
    _mount("-o", "remount,bind,ro", root)
    for source, point, read_only in spec["binds"]:
        target = os.path.join(root, point)
        _mount("--bind", source, target)
        if read_only:
            _mount("-o", "remount,bind,ro", target)
    if spec["proc"]:
        _mount("-t", "proc", "proc", os.path.join(root, "proc"))
    if spec["dev"]:
        _mount("--bind", "/dev", os.path.join(root, "dev"))
    os.chroot(root)
    os.chdir("/")
    uid = spec["uid"]
    if uid:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    argv = spec["argv"]
    os.execve(argv[0], argv, spec["env"])


if __name__ == "__main__":
    try:
        _enter(json.loads(sys.argv[1]))
    except (OSError, subprocess.CalledProcessError) as err:
        sys.stderr.write(f"tests/rootfs.py: {err}\n")
        sys.exit(125)

"""Container resource counters from the wrapper's own cgroup (v1 or v2).

In Kubernetes the wrapper runs inside the step container, so its cgroup is the
container's: reading it before and after the step gives the container's CPU time,
disk I/O and OOM kills during the step, and its memory high-water mark.

Hot path: a snapshot is a handful of small reads. Which files to read is worked out
once per (proc_self_cgroup, root) pair and cached for the life of the process, so
the end-of-step snapshot does no probing. Nothing here raises: unreadable or absent
files become None fields.
"""

from __future__ import annotations

import os

PROC_SELF_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"


class Snapshot:
    """Raw cgroup counters at one instant, in the kernel's units (ns for CPU, bytes)."""

    __slots__ = ("cpu_ns", "io_read", "io_write", "memory_peak", "oom_kills", "version")

    def __init__(
        self,
        version: str,
        memory_peak: int | None = None,
        oom_kills: int | None = None,
        cpu_ns: int | None = None,
        io_read: int | None = None,
        io_write: int | None = None,
    ) -> None:
        self.version = version
        self.memory_peak = memory_peak
        self.oom_kills = oom_kills
        self.cpu_ns = cpu_ns
        self.io_read = io_read
        self.io_write = io_write

    def __repr__(self) -> str:
        return (
            f"Snapshot({self.version!r}, memory_peak={self.memory_peak}, oom_kills={self.oom_kills}, "
            f"cpu_ns={self.cpu_ns}, io_read={self.io_read}, io_write={self.io_write})"
        )


class _Layout:
    """The resolved files to read; None where the kernel or mount does not provide one."""

    __slots__ = ("cpu", "io", "memory_events", "memory_peak", "version")

    def __init__(
        self,
        version: str,
        memory_peak: str | None,
        memory_events: str | None,
        cpu: str | None,
        io: str | None,
    ) -> None:
        self.version = version
        self.memory_peak = memory_peak
        self.memory_events = memory_events
        self.cpu = cpu
        self.io = io


_layouts: dict[tuple[str, str], _Layout | None] = {}


def snapshot(proc_self_cgroup: str = PROC_SELF_CGROUP, root: str = CGROUP_ROOT) -> Snapshot | None:
    """Read the counters of this process's cgroup; None when nothing is readable."""
    key = (proc_self_cgroup, root)
    try:
        layout = _layouts[key]
    except KeyError:
        layout = _layouts[key] = _resolve(proc_self_cgroup, root)
    if layout is None:
        return None
    if layout.version == "v2":
        usage_usec = _key_value(_read(layout.cpu), b"usage_usec")
        io_read, io_write = _sum_io_stat(_read(layout.io))
        snap = Snapshot(
            "v2",
            memory_peak=_to_int(_read(layout.memory_peak)),
            oom_kills=_key_value(_read(layout.memory_events), b"oom_kill"),
            cpu_ns=None if usage_usec is None else usage_usec * 1000,
            io_read=io_read,
            io_write=io_write,
        )
    else:
        io_read, io_write = _sum_blkio(_read(layout.io))
        snap = Snapshot(
            "v1",
            memory_peak=_to_int(_read(layout.memory_peak)),
            oom_kills=_key_value(_read(layout.memory_events), b"oom_kill"),
            cpu_ns=_to_int(_read(layout.cpu)),
            io_read=io_read,
            io_write=io_write,
        )
    if (
        snap.memory_peak is None
        and snap.oom_kills is None
        and snap.cpu_ns is None
        and snap.io_read is None
        and snap.io_write is None
    ):
        return None
    return snap


def usage_attributes(before: Snapshot | None, after: Snapshot | None) -> dict[str, int | float]:
    """Span attributes for the step between two snapshots, omitting whatever is unknown.

    The memory peak is the cgroup's high-water mark at the end (it includes page
    cache, as the container's memory limit does); everything else is a delta.
    """
    attrs: dict[str, int | float] = {}
    if after is None:
        return attrs
    if after.memory_peak is not None:
        attrs["container.memory.peak"] = after.memory_peak
    if before is None or before.version != after.version:
        return attrs
    oom = _delta(before.oom_kills, after.oom_kills)
    if oom is not None:
        attrs["container.memory.oom_kills"] = oom
    cpu = _delta(before.cpu_ns, after.cpu_ns)
    if cpu is not None:
        attrs["container.cpu.time"] = cpu / 1e9
    read = _delta(before.io_read, after.io_read)
    if read is not None:
        attrs["container.disk.io.read"] = read
    write = _delta(before.io_write, after.io_write)
    if write is not None:
        attrs["container.disk.io.write"] = write
    return attrs


def _delta(before: int | None, after: int | None) -> int | None:
    """A counter that went backwards was reset or belongs to another cgroup: unknown."""
    if before is None or after is None or after < before:
        return None
    return after - before


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb", buffering=0) as f:
            return f.readall()
    except OSError:
        return None


def _to_int(data: bytes | None) -> int | None:
    if data is None:
        return None
    try:
        return int(data)
    except ValueError:
        return None


def _key_value(data: bytes | None, key: bytes) -> int | None:
    """Value of `key N` in a flat-keyed file; exact key match (oom_kill vs oom_kill_disable)."""
    if data is None:
        return None
    for line in data.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return _to_int(parts[1])
    return None


def _sum_io_stat(data: bytes | None) -> tuple[int | None, int | None]:
    """Sum rbytes/wbytes over the devices of a v2 io.stat (`MAJ:MIN rbytes=N wbytes=N ...`)."""
    if data is None:
        return None, None
    read = write = 0
    try:
        for line in data.splitlines():
            for field in line.split()[1:]:
                name, _, value = field.partition(b"=")
                if name == b"rbytes":
                    read += int(value)
                elif name == b"wbytes":
                    write += int(value)
    except ValueError:
        return None, None
    return read, write


def _sum_blkio(data: bytes | None) -> tuple[int | None, int | None]:
    """Sum Read/Write over the devices of a v1 blkio service-bytes file (`MAJ:MIN Read N`)."""
    if data is None:
        return None, None
    read = write = 0
    try:
        for line in data.splitlines():
            parts = line.split()
            if len(parts) == 3:
                if parts[1] == b"Read":
                    read += int(parts[2])
                elif parts[1] == b"Write":
                    write += int(parts[2])
    except ValueError:
        return None, None
    return read, write


def _resolve(proc_self_cgroup: str, root: str) -> _Layout | None:
    data = _read(proc_self_cgroup)
    if data is None:
        return None
    unified: str | None = None
    v1: dict[str, tuple[str, str]] = {}
    for line in data.splitlines():
        fields = line.split(b":", 2)
        if len(fields) != 3:
            continue
        try:
            controllers = fields[1].decode()
        except UnicodeDecodeError:
            continue
        path = os.fsdecode(fields[2])
        if not controllers:
            unified = path
            continue
        for name in controllers.split(","):
            v1[name] = (controllers, path)

    if unified is not None:
        d = _cgroup_dir(root, unified, "cgroup.controllers")
        if d is not None:
            return _layout(
                "v2",
                memory_peak=_existing(d, "memory.peak"),
                memory_events=_existing(d, "memory.events"),
                cpu=_existing(d, "cpu.stat"),
                io=_existing(d, "io.stat"),
            )

    mem = _v1_dir(root, v1, "memory")
    cpu = _v1_dir(root, v1, "cpuacct")
    blkio = _v1_dir(root, v1, "blkio")
    return _layout(
        "v1",
        memory_peak=_existing(mem, "memory.max_usage_in_bytes"),
        memory_events=_existing(mem, "memory.oom_control"),
        cpu=_existing(cpu, "cpuacct.usage"),
        io=_existing(blkio, "blkio.throttle.io_service_bytes") or _existing(blkio, "blkio.io_service_bytes_recursive"),
    )


def _layout(
    version: str, memory_peak: str | None, memory_events: str | None, cpu: str | None, io: str | None
) -> _Layout | None:
    if memory_peak is None and memory_events is None and cpu is None and io is None:
        return None
    return _Layout(version, memory_peak, memory_events, cpu, io)


def _existing(directory: str | None, name: str) -> str | None:
    if directory is None:
        return None
    path = directory + "/" + name
    return path if os.path.exists(path) else None


def _cgroup_dir(mount: str, path: str, probe: str) -> str | None:
    """`mount/path` if it is a cgroup, else `mount` itself.

    Without a cgroup namespace /proc/self/cgroup shows the host's path, while the
    container has only its own cgroup mounted at the controller root.
    """
    mount = mount.rstrip("/")
    path = path.strip("/")
    candidates = (mount + "/" + path, mount) if path else (mount,)
    for d in candidates:
        if os.path.exists(d + "/" + probe):
            return d
    return None


def _v1_dir(root: str, lines: dict[str, tuple[str, str]], controller: str) -> str | None:
    try:
        mount_name, path = lines[controller]
    except KeyError:
        return None
    root = root.rstrip("/")
    mounts = [mount_name, controller]
    if controller == "cpuacct":
        mounts += ["cpu,cpuacct", "cpuacct,cpu"]
    seen: set[str] = set()
    for m in mounts:
        if m in seen:
            continue
        seen.add(m)
        d = _cgroup_dir(root + "/" + m, path, "cgroup.procs")
        if d is not None:
            return d
    return None

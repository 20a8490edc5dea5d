"""cgroup counters: fake v1/v2 trees in the kernel's own file formats, plus this machine's cgroup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from step_tracer.wrapper.cgroup import Snapshot, snapshot, usage_attributes

REPO = Path(__file__).resolve().parents[2]

POD_PATH = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abc.scope"
V1_POD_PATH = "/kubepods/burstable/pod1234/abcdef0123456789"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _memory_events(oom_kill: int, oom_group_kill: int = 0) -> str:
    return f"low 0\nhigh 0\nmax 12\noom 3\noom_kill {oom_kill}\noom_group_kill {oom_group_kill}\n"


def _cpu_stat(usage_usec: int) -> str:
    return (
        f"usage_usec {usage_usec}\nuser_usec {usage_usec * 2 // 3}\nsystem_usec {usage_usec // 3}\n"
        "core_sched.force_idle_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"
        "nr_bursts 0\nburst_usec 0\n"
    )


def _io_stat(devices: dict[str, tuple[int, int]]) -> str:
    return "".join(
        f"{dev} rbytes={r} wbytes={w} rios={r // 4096} wios={w // 4096} dbytes=0 dios=0\n"
        for dev, (r, w) in devices.items()
    )


def _v2_tree(
    tmp_path: Path, cgroup_path: str = POD_PATH, mounted_at: str | None = None, peak: bool = True
) -> tuple[str, Path]:
    """A v2 host: /proc/self/cgroup names cgroup_path; its files live at root/mounted_at."""
    proc = tmp_path / "proc_self_cgroup"
    _write(proc, f"0::{cgroup_path}\n")
    root = tmp_path / "cgroup"
    d = root / (cgroup_path if mounted_at is None else mounted_at).strip("/")
    _write(d / "cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
    _write(d / "cgroup.procs", "1\n")
    if peak:
        _write(d / "memory.peak", "104857600\n")
    _write(d / "memory.current", "52428800\n")
    _write(d / "memory.events", _memory_events(0))
    _write(d / "memory.events.local", _memory_events(0))
    _write(d / "cpu.stat", _cpu_stat(1_000_000))
    _write(d / "io.stat", _io_stat({"8:0": (4096, 8192), "253:0": (4096, 8192)}))
    return str(proc), d


def _v1_proc_self_cgroup(path: str, hybrid: bool = False) -> str:
    lines = [
        f"12:hugetlb:{path}",
        f"11:memory:{path}",
        f"10:pids:{path}",
        f"9:cpu,cpuacct:{path}",
        f"8:blkio:{path}",
        f"7:net_cls,net_prio:{path}",
        f"1:name=systemd:{path}",
    ]
    if hybrid:
        lines.append("0::/")
    return "\n".join(lines) + "\n"


def _blkio(devices: dict[str, tuple[int, int]]) -> str:
    out = []
    for dev, (r, w) in devices.items():
        out += [
            f"{dev} Read {r}",
            f"{dev} Write {w}",
            f"{dev} Sync {w}",
            f"{dev} Async {r}",
            f"{dev} Discard 0",
            f"{dev} Total {r + w}",
        ]
    out.append(f"Total {sum(r + w for r, w in devices.values())}")
    return "\n".join(out) + "\n"


def _oom_control(oom_kill: int | None, under_oom: int = 0) -> str:
    text = f"oom_kill_disable 1\nunder_oom {under_oom}\n"
    return text if oom_kill is None else text + f"oom_kill {oom_kill}\n"


def _v1_tree(
    tmp_path: Path, cgroup_path: str = V1_POD_PATH, in_place: bool = True, hybrid: bool = False
) -> tuple[str, dict[str, Path]]:
    """A v1 host with cpu,cpuacct co-mounted (cpu and cpuacct are symlinks, as systemd does).

    in_place=False puts the files at the controller roots, as a container without a
    cgroup namespace sees them while /proc/self/cgroup still shows the host path.
    """
    proc = tmp_path / "proc_self_cgroup"
    _write(proc, _v1_proc_self_cgroup(cgroup_path, hybrid))
    root = tmp_path / "cgroup"
    if hybrid:
        _write(root / "unified" / "cgroup.controllers", "")
    sub = cgroup_path.strip("/") if in_place else ""
    dirs = {
        "memory": root / "memory" / sub,
        "cpuacct": root / "cpu,cpuacct" / sub,
        "blkio": root / "blkio" / sub,
    }
    for d in dirs.values():
        _write(d / "cgroup.procs", "1\n")
        _write(d / "tasks", "1\n")
    (root / "cpu").symlink_to("cpu,cpuacct")
    (root / "cpuacct").symlink_to("cpu,cpuacct")
    _write(dirs["memory"] / "memory.max_usage_in_bytes", "209715200\n")
    _write(dirs["memory"] / "memory.usage_in_bytes", "10485760\n")
    _write(dirs["memory"] / "memory.oom_control", _oom_control(0))
    _write(dirs["cpuacct"] / "cpuacct.usage", "5000000000\n")
    _write(dirs["cpuacct"] / "cpuacct.usage_percpu", "2500000000 2500000000 \n")
    _write(dirs["blkio"] / "blkio.throttle.io_service_bytes", _blkio({"8:0": (100, 200), "8:16": (1000, 2000)}))
    return str(proc), dirs


def test_v2_deltas_and_peak(tmp_path: Path) -> None:
    proc, d = _v2_tree(tmp_path)
    root = str(tmp_path / "cgroup")
    before = snapshot(proc, root)
    assert before is not None
    assert before.version == "v2"
    assert before.cpu_ns == 1_000_000_000
    assert (before.io_read, before.io_write) == (8192, 16384)

    _write(d / "memory.peak", "314572800\n")
    _write(d / "memory.events", _memory_events(oom_kill=2, oom_group_kill=7))
    _write(d / "cpu.stat", _cpu_stat(3_500_000))
    _write(
        d / "io.stat",
        _io_stat({"8:0": (4096 + 1000, 8192 + 3000), "253:0": (4096 + 24, 8192), "7:0": (5, 0)}),
    )
    after = snapshot(proc, root)

    assert usage_attributes(before, after) == {
        "container.memory.peak": 314572800,
        "container.memory.oom_kills": 2,
        "container.cpu.time": pytest.approx(2.5),
        "container.disk.io.read": 1029,
        "container.disk.io.write": 3000,
    }


def test_v2_without_memory_peak_omits_it(tmp_path: Path) -> None:
    proc, d = _v2_tree(tmp_path, peak=False)
    root = str(tmp_path / "cgroup")
    before = snapshot(proc, root)
    _write(d / "cpu.stat", _cpu_stat(1_250_000))
    after = snapshot(proc, root)
    assert after is not None
    assert after.memory_peak is None
    attrs = usage_attributes(before, after)
    assert "container.memory.peak" not in attrs
    assert attrs["container.cpu.time"] == pytest.approx(0.25)
    assert attrs["container.memory.oom_kills"] == 0
    assert attrs["container.disk.io.read"] == 0


def test_v2_host_path_with_container_mount(tmp_path: Path) -> None:
    proc, d = _v2_tree(tmp_path, mounted_at="/")
    assert d == tmp_path / "cgroup"
    before = snapshot(proc, str(d))
    assert before is not None
    assert before.version == "v2"
    assert before.memory_peak == 104857600
    assert before.cpu_ns == 1_000_000_000


def test_v2_empty_io_stat_is_zero_not_unknown(tmp_path: Path) -> None:
    proc, d = _v2_tree(tmp_path)
    _write(d / "io.stat", "")
    snap = snapshot(proc, str(tmp_path / "cgroup"))
    assert snap is not None
    assert (snap.io_read, snap.io_write) == (0, 0)


def test_v1_kubernetes_layout(tmp_path: Path) -> None:
    proc, dirs = _v1_tree(tmp_path)
    root = str(tmp_path / "cgroup")
    before = snapshot(proc, root)
    assert before is not None
    assert before.version == "v1"
    assert before.oom_kills == 0
    assert (before.io_read, before.io_write) == (1100, 2200)

    _write(dirs["memory"] / "memory.max_usage_in_bytes", "262144000\n")
    _write(dirs["memory"] / "memory.oom_control", _oom_control(3, under_oom=1))
    _write(dirs["cpuacct"] / "cpuacct.usage", "5750000000\n")
    _write(dirs["blkio"] / "blkio.throttle.io_service_bytes", _blkio({"8:0": (150, 200), "8:16": (1000, 2500)}))
    after = snapshot(proc, root)

    assert usage_attributes(before, after) == {
        "container.memory.peak": 262144000,
        "container.memory.oom_kills": 3,
        "container.cpu.time": pytest.approx(0.75),
        "container.disk.io.read": 50,
        "container.disk.io.write": 500,
    }


def test_v1_hybrid_host_path_with_container_mounts(tmp_path: Path) -> None:
    """Like this CI machine: a `0::/` line whose root holds no cgroup.controllers, so v1."""
    proc, dirs = _v1_tree(tmp_path, in_place=False, hybrid=True)
    assert dirs["memory"] == tmp_path / "cgroup" / "memory"
    snap = snapshot(proc, str(tmp_path / "cgroup"))
    assert snap is not None
    assert snap.version == "v1"
    assert snap.memory_peak == 209715200
    assert snap.cpu_ns == 5_000_000_000
    assert snap.io_write == 2200


def test_v1_separate_cpuacct_mount_and_blkio_fallback(tmp_path: Path) -> None:
    proc = tmp_path / "proc_self_cgroup"
    _write(proc, f"4:memory:{V1_POD_PATH}\n2:cpuacct:/\n1:cpu:/\n7:blkio:{V1_POD_PATH}\n")
    root = tmp_path / "cgroup"
    mem = root / "memory" / V1_POD_PATH.strip("/")
    _write(mem / "cgroup.procs", "")
    _write(mem / "memory.max_usage_in_bytes", "4096\n")
    _write(mem / "memory.oom_control", _oom_control(None))
    _write(root / "cpuacct" / "cgroup.procs", "")
    _write(root / "cpuacct" / "cpuacct.usage", "7\n")
    blkio = root / "blkio" / V1_POD_PATH.strip("/")
    _write(blkio / "cgroup.procs", "")
    _write(blkio / "blkio.io_service_bytes_recursive", _blkio({"8:0": (11, 22), "259:0": (33, 44)}))

    snap = snapshot(str(proc), str(root))
    assert snap is not None
    assert snap.version == "v1"
    assert snap.memory_peak == 4096
    assert snap.oom_kills is None
    assert snap.cpu_ns == 7
    assert (snap.io_read, snap.io_write) == (44, 66)
    assert "container.memory.oom_kills" not in usage_attributes(snap, snap)


def test_nothing_readable_is_none(tmp_path: Path) -> None:
    assert snapshot(str(tmp_path / "missing"), str(tmp_path)) is None
    proc, _ = _v1_tree(tmp_path)
    assert snapshot(proc, str(tmp_path / "elsewhere")) is None
    assert usage_attributes(None, None) == {}


def test_garbage_values_become_unknown(tmp_path: Path) -> None:
    proc, d = _v2_tree(tmp_path)
    _write(d / "memory.peak", "max\n")
    _write(d / "io.stat", "8:0 rbytes=lots wbytes=1\n")
    snap = snapshot(proc, str(tmp_path / "cgroup"))
    assert snap is not None
    assert snap.memory_peak is None
    assert (snap.io_read, snap.io_write) == (None, None)
    assert snap.cpu_ns == 1_000_000_000


def test_resolution_is_cached_per_process(tmp_path: Path) -> None:
    proc, d = _v2_tree(tmp_path)
    root = str(tmp_path / "cgroup")
    assert snapshot(proc, root) is not None
    Path(proc).write_text("0::/moved/elsewhere\n")
    _write(d / "cpu.stat", _cpu_stat(2_000_000))
    snap = snapshot(proc, root)
    assert snap is not None
    assert snap.cpu_ns == 2_000_000_000


def test_usage_attributes_edge_cases() -> None:
    before = Snapshot("v2", memory_peak=10, oom_kills=1, cpu_ns=5_000, io_read=100, io_write=100)
    after = Snapshot("v2", memory_peak=20, oom_kills=1, cpu_ns=4_000, io_read=None, io_write=150)
    assert usage_attributes(before, after) == {
        "container.memory.peak": 20,
        "container.memory.oom_kills": 0,
        "container.disk.io.write": 50,
    }
    assert usage_attributes(None, after) == {"container.memory.peak": 20}
    other = Snapshot("v1", memory_peak=30, oom_kills=0, cpu_ns=9_000, io_read=0, io_write=0)
    assert usage_attributes(before, other) == {"container.memory.peak": 30}


def test_real_cgroup_counts_child_cpu() -> None:
    before = snapshot()
    if before is None or before.cpu_ns is None:
        pytest.skip("this machine's cgroup CPU counter is not readable")
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3:\n    pass\n"
    subprocess.run([sys.executable, "-c", burn], check=True)
    after = snapshot()
    assert after is not None
    assert after.version == before.version
    attrs = usage_attributes(before, after)
    assert attrs["container.cpu.time"] >= 0.2

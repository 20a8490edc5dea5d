"""Process-tree RSS sampler, on real process trees."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from step_tracer.wrapper.sampler import TreeSampler

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20

# Each child touches 60 MiB (bytes * n writes every page) then waits for stdin EOF;
# the parent says "ready" once both children have, then waits the same way.
CHILD = "import sys\nb = b'x' * (60 << 20)\nprint('ready', flush=True)\nsys.stdin.read()\n"
PARENT = f"""
import subprocess, sys
cmd = [sys.executable, '-c', {CHILD!r}]
kids = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
for k in kids:
    assert k.stdout.readline().strip() == 'ready'
print('ready', flush=True)
sys.stdin.read()
for k in kids:
    k.wait()
"""


def test_peak_sums_the_whole_tree() -> None:
    sampler = TreeSampler(0.05)
    with subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as parent:
        assert parent.stdin is not None and parent.stdout is not None
        try:
            assert parent.stdout.readline().strip() == "ready"
            due_before = sampler.next_due
            sampler.sample(parent.pid)
            sampler.sample(parent.pid)
        finally:
            parent.stdin.close()
            parent.wait(timeout=30)
    assert sampler.samples == 2
    assert sampler.peak_rss >= 0.9 * 120 * MIB
    assert sampler.last_rss >= 0.9 * 120 * MIB
    assert sampler.next_due > due_before
    assert sampler.cpu_s > 0
    assert sampler.import_cpu_s <= sampler.cpu_s


def test_vanished_pid_does_not_raise() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    sampler = TreeSampler(1.0)
    sampler.sample(proc.pid)
    assert sampler.samples == 1
    assert sampler.peak_rss == 0


def test_peak_is_kept_after_the_tree_shrinks() -> None:
    sampler = TreeSampler(1.0)
    sampler.sample(os.getpid())
    own = sampler.peak_rss
    assert own > 0
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    sampler.sample(proc.pid)
    assert sampler.last_rss == 0
    assert sampler.peak_rss == own


def test_disabled_sampler_never_imports_psutil() -> None:
    code = (
        "import os, sys\n"
        "from step_tracer.wrapper.sampler import TreeSampler\n"
        "s = TreeSampler(0)\n"
        "s.sample(os.getpid())\n"
        "print('psutil' in sys.modules, s.samples, s.next_due)\n"
        "s = TreeSampler(0.5)\n"
        "print('psutil' in sys.modules)\n"
        "s.sample(os.getpid())\n"
        "print('psutil' in sys.modules, s.samples, s.peak_rss > 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.splitlines() == ["False 0 inf", "False", "True 1 True"]


def test_next_due_is_one_interval_ahead() -> None:
    start = time.monotonic()
    sampler = TreeSampler(30.0)
    assert sampler.enabled
    assert sampler.next_due >= start + 30.0
    sampler.sample(os.getpid())
    assert sampler.next_due >= start + 30.0
    assert not TreeSampler(0).enabled

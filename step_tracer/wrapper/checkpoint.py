"""Measurements of a step that Tekton is about to kill, saved while the wrapper still can.

Tekton SIGKILLs the wrapper at the step timeout, so a timed-out step's span is made by the sidecar from the
start record. Shortly before the deadline the start record is rewritten with what was measured so far (memory
peak, cgroup CPU and I/O), so the span of the step that ran out of time, the one worth looking at, is not
empty. Runs inside the wait loop as its sampler, wrapping the memory sampler when there is one.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~20 ms here)
if TYPE_CHECKING:
    from collections.abc import Callable

    from step_tracer.wrapper.process import Sampler

#: Before Tekton's deadline, counted from our own process start: Tekton's timer starts when it starts us, and the
#: record must be written before the SIGKILL even on a loaded node.
RESERVE_S = 1.0


def due_before(step_timeout_s: float) -> float:
    """Seconds after the wrapper process started at which to save: 1 s before the timeout, a quarter of short
    timeouts."""
    return max(step_timeout_s - min(RESERVE_S, step_timeout_s * 0.25), 0.0)


def process_age() -> float:
    """Seconds since this process started (its start time in /proc/self/stat, against CLOCK_BOOTTIME); 0.0 when
    unknown. The interpreter's own start-up is part of the step's time as Tekton counts it."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return max(time.clock_gettime(time.CLOCK_BOOTTIME) - started, 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


class Checkpoint:
    __slots__ = ("at", "inner", "next_due", "save")

    def __init__(self, at: float, save: Callable[[], None], inner: Sampler | None) -> None:
        """`at`: time.monotonic() deadline; `save` writes the record (and must not raise)."""
        self.at = at
        self.save = save
        self.inner = inner
        self.next_due = min(at, inner.next_due) if inner is not None else at

    def sample(self, pid: int) -> None:
        now = time.monotonic()
        due = self.at <= now
        if self.inner is not None and (due or self.inner.next_due <= now):
            try:
                self.inner.sample(pid)  # when due, also the freshest memory figure for the record
            except Exception:
                self.inner = None  # the memory sampler failed; the checkpoint still matters
        if due:
            self.at = float("inf")
            self.save()
        self.next_due = min(self.at, self.inner.next_due) if self.inner is not None else self.at

"""Peak resident set of the step's whole process tree, sampled from the wait loop.

wait4's ru_maxrss only gives the largest single descendant, so a step that runs
many processes at once (make -j, a test runner's workers) needs sampling of the
sum. The wrapper is single-threaded: it calls `sample()` whenever `next_due` has
passed. psutil is imported on the first sample only, so short steps and a
disabled sampler never pay for it.

The sum counts shared pages (fork copy-on-write, shared libraries) once per
process, so it overstates the true footprint; it matches what `ps` users expect.
"""

from __future__ import annotations

import time

_INF = float("inf")


class TreeSampler:
    """Keeps the largest summed RSS seen over a process tree, and what sampling cost."""

    __slots__ = ("cpu_s", "import_cpu_s", "interval_s", "last_rss", "next_due", "peak_rss", "samples")

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.peak_rss = 0
        self.last_rss = 0
        self.samples = 0
        self.cpu_s = 0.0
        self.import_cpu_s = 0.0
        self.next_due = time.monotonic() + interval_s if interval_s > 0 else _INF

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def sample(self, root_pid: int) -> None:
        """Add one sample of root_pid plus all its descendants; a no-op when disabled.

        `cpu_s` includes the one-off psutil import, which is also kept in
        `import_cpu_s` so a benchmark can report the steady per-sample cost.
        """
        if self.interval_s <= 0:
            return
        start = time.process_time()
        import psutil

        if self.samples == 0:
            self.import_cpu_s = time.process_time() - start
        total = 0
        try:
            root = psutil.Process(root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = []
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        self.last_rss = total
        if total > self.peak_rss:
            self.peak_rss = total
        self.samples += 1
        self.cpu_s += time.process_time() - start
        self.next_due = time.monotonic() + self.interval_s

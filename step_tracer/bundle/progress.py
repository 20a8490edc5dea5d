"""A one-line progress bar on stderr for registry round trips (pulls and pushes can take a while)."""

from __future__ import annotations

from typing import TextIO

WIDTH = 24


class Progress:
    """Counts units of work; draws only when given a stream (the CLI passes one for a tty or --progress)."""

    def __init__(self, stream: TextIO | None = None, total: int = 0) -> None:
        self.stream = stream
        self.total = total
        self.done = 0
        self._drawn = False

    def advance(self, label: str, units: int = 1) -> None:
        self.done += units
        self.total = max(self.total, self.done)
        self._draw(label)

    def _draw(self, label: str) -> None:
        if self.stream is None:
            return
        filled = WIDTH * self.done // self.total if self.total else WIDTH
        bar = "#" * filled + "-" * (WIDTH - filled)
        text = label if len(label) <= 48 else label[:45] + "..."
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {text:<48}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line so later messages start on their own."""
        if self.stream is not None and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

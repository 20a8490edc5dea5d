"""Local exporters: an OTLP JSON lines file (the default without a collector) and the console.

Both write one `json_codec` line per export, the format the Collector's otlpjsonfile receiver reads, so a file
written on a laptop can be replayed into a real backend later.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs a step ~20 ms
if TYPE_CHECKING:
    from typing import TextIO


def append_line(path: str, line: str) -> None:
    """Append `line` + newline with one write on an O_APPEND descriptor.

    A single append-mode write keeps lines whole when several wrapped steps (parallel steps sharing a volume)
    finish at once. Files and missing parent directories get the usual modes minus the umask. Raises OSError.
    """
    # A lone surrogate (undecodable argv bytes) only occurs inside a JSON string: the escape \udcff is valid.
    data = (line + "\n").encode("utf-8", "backslashreplace")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if not parent:
            raise
        os.makedirs(parent, 0o777, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    try:
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):
        raise OSError(f"short write ({written} of {len(data)} bytes; disk full?)")


def write_console(stream: TextIO, line: str) -> None:
    """The same JSON line on `stream` (stderr in practice: the step owns stdout). Raises OSError."""
    stream.write(line + "\n")
    stream.flush()

"""`step-tracer replay`: export spans that were written out instead of exported.

The sidecar writes what it could not ship by its drain deadline to its stdout, one OTLP JSON
ExportTraceServiceRequest per line; the cluster's log pipeline keeps those lines. This reads them back (from
`kubectl logs`, with or without `--timestamps`/`--prefix`, a CRI log file, or spool records) and exports them
with the usual OTEL_* settings. Delivery is at-least-once: a span the collector accepted just after the
sidecar's deadline comes again with the same ids.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TextIO

from step_tracer.otlp import json_codec
from step_tracer.span import Batch

MARKER = '{"resourceSpans"'
#: A line longer than this is not one of ours (the sidecar's lines hold one span of at most 1 MiB of record).
MAX_LINE = 8 << 20
#: Spans sent per request.
CHUNK = 512
#: A replay is not a step's hot path: give the collector time, unless STEP_TRACER_EXPORT_DEADLINE says otherwise.
DEFAULT_DEADLINE = 30.0
#: Replayed logs may be old: any time since 1970 is accepted (not more than an hour ahead, as in the sidecar).
PAST_NS = 2**62


class Counts:
    __slots__ = ("failed", "lines", "malformed", "sent", "skipped", "unfinished")

    def __init__(self) -> None:
        self.lines = self.skipped = self.malformed = self.unfinished = self.sent = self.failed = 0


def requests(lines: Iterable[str], counts: Counts) -> Iterator[Batch]:
    """The batches of every line holding an OTLP JSON request, after any log prefix; the rest is counted."""
    from step_tracer.sidecar.admit import Rejected, normalise

    now = time.time_ns()
    for line in lines:
        counts.lines += 1
        start = line.find(MARKER)
        if start < 0 or len(line) > MAX_LINE:
            counts.skipped += line.strip() != ""
            continue
        try:
            batches = json_codec.decode(line[start:].strip())
        except ValueError:
            counts.malformed += 1
            continue
        for batch in batches:
            spans = []
            for span in batch.spans:
                if span.end_ns == 0:
                    counts.unfinished += 1  # a spool `.start`: its step's end is unknown
                    continue
                try:
                    spans.append(normalise(span, now, past_ns=PAST_NS))
                except Rejected:
                    counts.malformed += 1
            if spans:
                yield Batch(batch.resource, spans)


def _lines(sources: Iterable[str]) -> Iterator[str]:
    for source in sources:
        # Closed below; stdin is not ours to close.
        stream: IO[str] = sys.stdin if source == "-" else open(source, encoding="utf-8", errors="replace")  # noqa: SIM115
        try:
            yield from stream
        finally:
            if stream is not sys.stdin:
                stream.close()


class _Err:
    """stderr without the wrapper's "(the step's result is unchanged)" suffix, which means nothing here."""

    def __init__(self, err: TextIO) -> None:
        self.err = err

    def write(self, text: str) -> int:
        from step_tracer.export import SUFFIX

        return self.err.write(text.replace(SUFFIX, ""))

    def flush(self) -> None:
        self.err.flush()


def replay(sources: Iterable[str], env: os._Environ[str] | dict[str, str], err: TextIO) -> int:
    """Export what `sources` hold; 0 when every span was delivered, 1 otherwise (counts on `err`)."""
    from step_tracer.export import export
    from step_tracer.export.settings import Settings

    def warn(message: str) -> None:
        err.write(message + "\n")

    settings = Settings.from_env(env, warn)
    if not env.get("STEP_TRACER_EXPORT_DEADLINE"):
        settings.deadline = DEFAULT_DEADLINE
    counts = Counts()
    chunk: list[Batch] = []
    abandoned = False

    def flush() -> None:
        nonlocal abandoned
        size = sum(len(b.spans) for b in chunk)
        outcome = export(chunk, settings, err=_Err(err))  # type: ignore[arg-type]
        if outcome.ok:
            counts.sent += size
        else:
            counts.failed += size
        abandoned = abandoned or outcome.abandoned
        chunk.clear()

    try:
        for batch in requests(_lines(sources), counts):
            chunk.append(batch)
            if sum(len(b.spans) for b in chunk) >= CHUNK:
                flush()
        if chunk:
            flush()
    except OSError as exc:
        err.write(f"step-tracer replay: {exc}\n")
        counts.failed += 1
    parts = [f"{counts.sent} span(s) exported"]
    if counts.failed:
        parts.append(f"{counts.failed} not")
    for count, what in (
        (counts.skipped, "line(s) without an OTLP JSON request skipped"),
        (counts.malformed, "malformed request(s) or span(s) skipped"),
        (counts.unfinished, "unfinished start record(s) skipped"),
    ):
        if count:
            parts.append(f"{count} {what}")
    err.write(f"step-tracer replay: {', '.join(parts)} from {counts.lines} line(s)\n")
    err.flush()
    code = 1 if counts.failed else 0
    if abandoned:  # an export thread is still in a call: leave without waiting for it
        os._exit(code)
    return code

"""Getting finished spans out of the wrapper process, without the OpenTelemetry SDK.

`export` never raises and never outlives its deadline: a step's result must not depend on whether a
collector is up. Network export runs in a daemon thread the caller stops waiting for at `settings.deadline`,
because a collector that accepts and then hangs defeats socket timeouts (a trickle of bytes resets them); the
caller must then leave with os._exit so the abandoned thread cannot hold the process. Each failure is one
stderr line.
"""

from __future__ import annotations

import os
from time import monotonic, sleep

from step_tracer.span import Batch

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs a step ~20 ms
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Protocol, TextIO

    from step_tracer.export.settings import Settings

    class Transport(Protocol):
        def send(self, payload: bytes, timeout: float) -> None: ...

        def close(self) -> None: ...


SUFFIX = " (the step's result is unchanged)"
FIRST_BACKOFF = 0.1
ATTEMPT_MARGIN = 0.05


class ExportError(Exception):
    """One failed attempt. `retry_after` is the collector's own wait hint (Retry-After, gRPC RetryInfo)."""

    def __init__(self, message: str, retryable: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class Outcome:
    """`ok`: every configured exporter delivered. `abandoned`: a network thread is still running."""

    __slots__ = ("abandoned", "ok")

    def __init__(self, ok: bool, abandoned: bool = False) -> None:
        self.ok = ok
        self.abandoned = abandoned

    def __repr__(self) -> str:
        return f"Outcome(ok={self.ok}, abandoned={self.abandoned})"


class _Job:
    """State shared with the network thread; the thread writes, the caller reads after `done` or deadline."""

    __slots__ = ("attempts", "done", "error", "last")

    def __init__(self) -> None:
        import _thread

        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.error: str | None = None
        self.last = ""
        self.attempts = 0


def export(batches: Iterable[Batch], settings: Settings, *, err: TextIO) -> Outcome:
    """Send the sampled spans of `batches` to every configured exporter; one line on `err` per failure."""
    try:
        return _export(batches, settings, err)
    except Exception as exc:  # the step's result must never depend on us
        _say(err, f"step-tracer: span not exported: internal error: {type(exc).__name__}: {exc}{SUFFIX}")
        return Outcome(False)


def _export(batches: Iterable[Batch], settings: Settings, err: TextIO) -> Outcome:
    if settings.disabled or not settings.exporters:
        return Outcome(True)
    sampled = []
    for batch in batches:
        spans = [s for s in batch.spans if s.trace_flags & 1]
        if spans:
            sampled.append(Batch(batch.resource, spans))
    if not sampled:
        return Outcome(True)
    count = sum(len(b.spans) for b in sampled)
    noun = "span" if count == 1 else f"{count} spans"
    started = monotonic()
    job = _start(sampled, settings) if "otlp" in settings.exporters else None
    ok = True
    if "file" in settings.exporters or "console" in settings.exporters:
        from step_tracer.export import files
        from step_tracer.otlp import json_codec

        line = json_codec.encode(sampled)
        if "file" in settings.exporters:
            try:
                files.append_line(settings.file_path, line)
            except OSError as exc:
                ok = False
                _say(err, f"step-tracer: {noun} not written to {settings.file_path}: {_os_reason(exc)}{SUFFIX}")
        if "console" in settings.exporters:
            try:
                files.write_console(err, line)
            except (OSError, ValueError):
                ok = False  # stderr itself is gone: nowhere left to say so
    if job is None:
        return Outcome(ok)
    from _thread import TIMEOUT_MAX

    remaining = started + settings.deadline - monotonic()
    finished = job.done.acquire(timeout=min(max(remaining, 0.0), TIMEOUT_MAX))
    if finished and job.error is None:
        return Outcome(ok)
    from step_tracer.export.settings import redact

    if finished:
        reason = job.error
    else:
        reason = f"no answer within the {settings.deadline:g} s export deadline"
        if job.last:
            reason += f" (earlier attempt: {job.last})"
    _say(err, f"step-tracer: {noun} not exported to {redact(settings.endpoint)}: {reason}{SUFFIX}")
    return Outcome(False, abandoned=not finished)


def _start(batches: list[Batch], settings: Settings) -> _Job:
    import _thread

    job = _Job()
    deadline_at = monotonic() + settings.deadline
    _thread.start_new_thread(_ship, (job, batches, settings, deadline_at))
    return job


def _ship(job: _Job, batches: list[Batch], settings: Settings, deadline_at: float) -> None:
    """Thread body: encode, connect, send with retries until success, a permanent error or the deadline."""
    try:
        transport: Transport
        if settings.protocol == "grpc":
            from step_tracer.export.grpc import GrpcTransport
            from step_tracer.otlp import proto_codec

            payload = proto_codec.encode(batches)
            transport = GrpcTransport(settings)
        else:
            from step_tracer.export.http import HttpTransport

            if settings.protocol == "http/json":
                from step_tracer.otlp import json_codec

                payload = json_codec.encode(batches).encode("utf-8", "backslashreplace")
            else:
                from step_tracer.otlp import proto_codec

                payload = proto_codec.encode(batches)
            transport = HttpTransport(settings)
        try:
            job.error = _retry(job, transport, payload, settings.timeout, deadline_at)
        finally:
            transport.close()
    except ExportError as exc:
        job.error = exc.message
    except Exception as exc:
        job.error = f"{type(exc).__name__}: {exc}"
    finally:
        job.done.release()


def _retry(job: _Job, transport: Transport, payload: bytes, timeout: float, deadline_at: float) -> str | None:
    """Exponential backoff from FIRST_BACKOFF with jitter; a server's hint wins; never past the deadline."""
    backoff = FIRST_BACKOFF
    while True:
        remaining = deadline_at - monotonic()
        job.attempts += 1
        try:
            # End the attempt a little before the caller stops waiting, so a silent collector is reported
            # as such and the thread is not abandoned.
            transport.send(payload, min(timeout, max(remaining - ATTEMPT_MARGIN, 0.01)))
            return None
        except ExportError as exc:
            job.last = exc.message
            if not exc.retryable:
                return exc.message
            jitter = 0.5 + int.from_bytes(os.urandom(2), "little") / 65536
            delay = exc.retry_after if exc.retry_after is not None else backoff * jitter
            backoff *= 2
            if monotonic() + delay > deadline_at - 2 * ATTEMPT_MARGIN:
                tries = "1 attempt" if job.attempts == 1 else f"{job.attempts} attempts"
                return f"{exc.message} ({tries}; no time left to retry)"
            sleep(delay)


def partial_success(reply: bytes) -> str | None:
    """Why the collector dropped spans it accepted (ExportTracePartialSuccess), or None when it kept them all.

    The spec forbids retrying these, and a malformed reply is not worth failing an export that got a 2xx/OK.
    """
    from step_tracer.otlp.proto_codec import read_fields

    rejected, message = 0, ""
    try:
        for field, value in read_fields(reply):
            if field == 1 and isinstance(value, bytes):
                for inner, item in read_fields(value):
                    if inner == 1 and isinstance(item, int):
                        rejected = item
                    elif inner == 2 and isinstance(item, bytes):
                        message = item.decode("utf-8", "replace")
    except ValueError:
        return None
    if not rejected:
        return None
    return f"collector rejected {rejected} span{'s' if rejected != 1 else ''}" + (
        f": {one_line(message)}" if message else ""
    )


def one_line(text: str, limit: int = 200) -> str:
    """`text` fit for the middle of a log line: control characters blanked, whitespace collapsed, bounded."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _os_reason(exc: OSError) -> str:
    """ "Permission denied" rather than "[Errno 13] Permission denied: '/path'": the line names the path."""
    return exc.strerror or str(exc)


def _say(err: TextIO, line: str) -> None:
    try:
        err.write(line + "\n")
        err.flush()
    except (OSError, ValueError):
        pass

"""Exporting a batch of SDK spans with a hard bound on how long the sidecar waits for it.

The SDK exporters retry inside `export` (with backoff, until their own timeout) and their shutdown can block on
a dead collector, so every export runs in one worker thread and the main loop waits for it with a deadline
(select on a pipe the worker writes to, so SIGTERM still wakes the main loop at once). A record is deleted
only after `export` returned SUCCESS.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from step_tracer.export.settings import Settings, redact

ExportFn = Callable[[Sequence[ReadableSpan]], bool]


def exporter_mode(env: Mapping[str, str], warn: Callable[[str], None]) -> str:
    """otlp (the SDK default), console or none, from OTEL_TRACES_EXPORTER and OTEL_SDK_DISABLED."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    chosen = [item.strip().lower() for item in env.get("OTEL_TRACES_EXPORTER", "").split(",") if item.strip()]
    if not chosen or "otlp" in chosen:
        return "otlp"
    if "console" in chosen or "file" in chosen:
        if "file" in chosen:
            warn("OTEL_TRACES_EXPORTER=file is not supported by the sidecar; writing spans to stdout instead")
        return "console"
    if "none" in chosen:
        return "none"
    warn(f"ignoring OTEL_TRACES_EXPORTER={env.get('OTEL_TRACES_EXPORTER')!r}; using otlp")
    return "otlp"


def build_exporter(settings: Settings, mode: str, warn: Callable[[str], None]) -> tuple[ExportFn, str]:
    """(export function returning success, description for log lines).

    The timeout is passed explicitly: the SDK reads OTEL_EXPORTER_OTLP_TIMEOUT as seconds, the spec says
    milliseconds (Settings follows the spec). Endpoint, headers, certificates and compression come from the
    OTEL_* variables, read by the SDK exporter itself.
    """
    if mode == "none":
        return (lambda _spans: True), "nowhere (OTEL_TRACES_EXPORTER=none)"
    exporter: SpanExporter
    if mode == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter()
        return _calling(exporter), "stdout"
    protocol = settings.protocol
    if protocol == "http/json":
        warn("OTLP protocol http/json is not supported by the SDK exporter; using http/protobuf")
        protocol = "http/protobuf"
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            exporter = GrpcExporter(timeout=settings.timeout)
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            exporter = HttpExporter(timeout=settings.timeout)
    except Exception as err:  # a bad certificate path, an unknown credential provider...
        warn(f"cannot build the OTLP {protocol} exporter ({err}); spans stay in the spool")
        return (lambda _spans: False), f"a broken {protocol} exporter"
    return _calling(exporter), f"{redact(settings.endpoint)} ({protocol})"


def _calling(exporter: SpanExporter) -> ExportFn:
    def export(spans: Sequence[ReadableSpan]) -> bool:
        return exporter.export(spans) is SpanExportResult.SUCCESS

    return export


def quiet_sdk_logs(debug: bool) -> None:
    """The SDK and urllib3 log every retry at WARNING: in the sidecar's log that is noise, our own lines say it
    once. With STEP_TRACER_DEBUG=1 their warnings are shown."""
    if debug:
        logging.basicConfig(level=logging.WARNING, format="step-tracer sidecar: %(name)s: %(message)s")
    else:
        logging.getLogger().addHandler(logging.NullHandler())  # no handler at all would mean logging.lastResort


class Worker:
    """Runs one export at a time in a daemon thread; `fd` becomes readable when it finishes."""

    def __init__(self, export: ExportFn) -> None:
        self._export = export
        self._cond = threading.Condition()
        self._job: Sequence[ReadableSpan] | None = None
        self._result: bool | None = None
        self._busy = False
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="step-tracer-export", daemon=True)
        self._thread.start()

    @property
    def fd(self) -> int:
        return self._r

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._busy

    def submit(self, spans: Sequence[ReadableSpan]) -> None:
        with self._cond:
            if self._busy:
                raise RuntimeError("an export is still running")
            self._job, self._result, self._busy = spans, None, True
            self._cond.notify_all()

    def result(self) -> bool | None:
        """The finished export's success, or None while it runs."""
        try:
            while os.read(self._r, 64):
                pass
        except BlockingIOError:
            pass
        with self._cond:
            return None if self._busy else self._result

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._job is not None)
                job, self._job = self._job, None
            assert job is not None
            try:
                ok = self._export(job)
            except Exception:  # an exporter bug must not kill the thread and strand the main loop
                ok = False
            with self._cond:
                self._result, self._busy = ok, False
            os.write(self._w, b"x")

"""The real tracing backends for the tests: the OpenTelemetry Collector and Jaeger v2, built from their Go modules
by `hack/build-otel`, started on 127.0.0.1 free ports with configurations the tests write (or the shipped
deploy/collector one), and a client for Jaeger's HTTP query API.

Jaeger v1.75.0's query extension serves its API v3 (`/api/v3/traces/{id}`, `/api/v3/traces?query.*`, OTLP JSON
under `result`) and the classic UI API (`/api/traces/{id}`); the client reads v3, which keeps what OTLP says
(span kind, status code and message, typed attributes, resource) where the classic API turns them into tags.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.real.gobuild import built

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "collector"
#: The shipped Collector configuration (deploy/collector): its listen addresses and backend come from the
#: environment variables below, with in-cluster defaults, so the tests run the file unchanged.
SHIPPED_CONFIG = DEPLOY / "collector.yaml"


def otel_bin_dir() -> Path:
    return built("otel")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Polls `ready` until it holds; a server that exits or never gets ready fails with its own log."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Server:
    """A backend process with its log in a file, stopped with SIGTERM (SIGKILL after 10 s)."""

    def __init__(self, argv: Sequence[str], workdir: Path, name: str, env: Mapping[str, str] | None = None):
        self.log = workdir / f"{name}.log"
        self.name = name
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env={**os.environ, **(env or {})}
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- Jaeger ----------------------------------------------------------------------------------------------------


@dataclass
class Span:
    """One span as Jaeger's API v3 returns it, with the resource it came with."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int
    status_message: str
    events: list[str] = field(default_factory=list)


def _hex_id(value: str | None, size: int) -> str:
    """OTLP JSON ids are hex; protobuf's JSON mapping (some servers) sends bytes as base64. Accept both."""
    if not value:
        return ""
    if len(value) == size * 2 and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    return base64.b64decode(value).hex()


def any_value(v: Mapping[str, Any]) -> Any:
    """An OTLP JSON AnyValue as Python (int64s arrive as strings in JSON)."""
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "arrayValue" in v:
        return [any_value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return attributes(v["kvlistValue"].get("values", []))
    if "bytesValue" in v:
        return base64.b64decode(v["bytesValue"])
    return None


def attributes(kvs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {kv["key"]: any_value(kv.get("value", {})) for kv in kvs}


_KINDS = {"SPAN_KIND_UNSPECIFIED": 0, "SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3}
_KINDS |= {"SPAN_KIND_PRODUCER": 4, "SPAN_KIND_CONSUMER": 5}
_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def _enum(value: Any, names: Mapping[str, int]) -> int:
    return names.get(value, 0) if isinstance(value, str) else int(value or 0)


def otlp_spans(traces_data: Mapping[str, Any]) -> list[Span]:
    """Every span of an OTLP JSON TracesData / ExportTraceServiceRequest."""
    out = []
    for rs in traces_data.get("resourceSpans") or []:
        resource = attributes(rs.get("resource", {}).get("attributes", []))
        for ss in rs.get("scopeSpans") or []:
            for s in ss.get("spans") or []:
                status = s.get("status") or {}
                out.append(
                    Span(
                        trace_id=_hex_id(s.get("traceId"), 16),
                        span_id=_hex_id(s.get("spanId"), 8),
                        parent_span_id=_hex_id(s.get("parentSpanId"), 8),
                        name=s.get("name", ""),
                        kind=_enum(s.get("kind"), _KINDS),
                        start_ns=int(s.get("startTimeUnixNano", 0)),
                        end_ns=int(s.get("endTimeUnixNano", 0)),
                        attributes=attributes(s.get("attributes", [])),
                        resource=resource,
                        status_code=_enum(status.get("code"), _CODES),
                        status_message=status.get("message", ""),
                        events=[e.get("name", "") for e in s.get("events") or []],
                    )
                )
    return out


#: The attribute Jaeger's query service adds to a span it has something to say about (not from the sender).
JAEGER_WARNINGS = "@jaeger@warnings"


def as_sent(span: Span) -> Span:
    """`span` without what Jaeger adds to it (`JAEGER_WARNINGS`): as the sender sent it."""
    return replace(span, attributes={k: v for k, v in span.attributes.items() if k != JAEGER_WARNINGS})


class Jaeger(Server):
    """Jaeger v2 (all-in-one: OTLP gRPC in, in-memory storage, query API) on 127.0.0.1 free ports."""

    def __init__(self, workdir: Path, binary: Path | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.otlp_grpc_port, self.query_port, self.health_port = free_port(), free_port(), free_port()
        self.query_grpc_port = free_port()
        config = workdir / "jaeger.yaml"
        config.write_text(
            json.dumps(
                {
                    "service": {
                        "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
                        "pipelines": {
                            "traces": {"receivers": ["otlp"], "exporters": ["jaeger_storage_exporter"]},
                        },
                        # no metrics endpoint: the default one (:8888) would collide between runs
                        "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
                    },
                    "extensions": {
                        "healthcheckv2": {
                            "use_v2": True,
                            "http": {"endpoint": f"127.0.0.1:{self.health_port}"},
                        },
                        "jaeger_query": {
                            "storage": {"traces": "memstore"},
                            # on by default: Jaeger would trace its own queries to 127.0.0.1:4317, whoever
                            # listens there, and block its shutdown retrying when nobody does
                            "enable_tracing": False,
                            "http": {"endpoint": f"127.0.0.1:{self.query_port}"},
                            "grpc": {"endpoint": f"127.0.0.1:{self.query_grpc_port}"},
                        },
                        "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 100000}}}},
                    },
                    "receivers": {
                        "otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{self.otlp_grpc_port}"}}},
                    },
                    "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
                },
                indent=1,
            )
        )
        binary = binary or otel_bin_dir() / "jaeger"
        super().__init__([str(binary), "--config", str(config)], workdir, "jaeger")
        wait_until("jaeger", lambda: _http_ok(self.url + "/api/v3/services"), self.proc, self.log, 60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    @property
    def otlp_grpc(self) -> str:
        return f"127.0.0.1:{self.otlp_grpc_port}"

    def _get(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def trace(self, trace_id: str) -> list[Span]:
        """The spans Jaeger holds for `trace_id` (none when it holds no such trace). Jaeger adds its own
        `@jaeger@warnings` attribute to some (e.g. a parent not in the trace): see `JAEGER_WARNINGS`."""
        body = self._get(f"/api/v3/traces/{trace_id}")
        return otlp_spans(body.get("result", {})) if body else []

    def classic_trace(self, trace_id: str) -> dict[str, Any] | None:
        """The same trace through the classic API the UI reads (`/api/traces/{id}`)."""
        body = self._get(f"/api/traces/{trace_id}")
        data = (body or {}).get("data") or []
        return data[0] if data else None

    def services(self) -> list[str]:
        body = self._get("/api/v3/services") or {}
        return list(body.get("services") or [])

    def find(self, service: str, *, since: datetime | None = None, limit: int = 100) -> list[Span]:
        """Spans of the traces in which `service` has a span, started from `since` (default: a day back)."""
        now = datetime.now(UTC)
        start = since or now - timedelta(days=1)
        query = {
            "query.service_name": service,
            "query.start_time_min": start.isoformat(),
            "query.start_time_max": (now + timedelta(hours=1)).isoformat(),
            "query.num_traces": str(limit),
        }
        body = self._get("/api/v3/traces", query)
        return otlp_spans(body.get("result", {})) if body else []

    def wait_for(self, trace_id: str, count: int, timeout: float = 30.0) -> list[Span]:
        """The trace once Jaeger holds at least `count` spans of it (the Collector batches, Jaeger stores
        asynchronously); what it holds at the deadline otherwise, for the caller's assertion to show."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.trace(trace_id)
            if len(spans) >= count or time.monotonic() > deadline:
                return spans
            time.sleep(0.2)


# --- the Collector ---------------------------------------------------------------------------------------------


class Collector(Server):
    """The OpenTelemetry Collector (hack/otelcol) on 127.0.0.1 free ports, running `config` with `env`."""

    def __init__(
        self,
        workdir: Path,
        config: Path,
        env: Mapping[str, str],
        grpc_port: int,
        http_port: int,
        *,
        spans_dir: Path | None = None,
        file_out: Path | None = None,
    ):
        self.grpc_port, self.http_port = grpc_port, http_port
        #: where the configuration's otlpjsonfile receiver looks for step-tracer's `file` exporter output
        self.spans_dir = spans_dir
        #: where the configuration's own `file` exporter writes what the Collector received
        self.file_out = file_out
        super().__init__([str(otel_bin_dir() / "otelcol"), "--config", str(config)], workdir, "otelcol", env)
        wait_until(
            "otelcol", lambda: _listening(self.grpc_port) and _listening(self.http_port), self.proc, self.log, 60
        )

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def exported(self, trace_id: str, count: int, timeout: float = 30.0) -> list[Span]:
        """The spans of `trace_id` in the Collector's own `file` exporter output, once it holds `count` of them
        (the exporter flushes every second)."""
        assert self.file_out is not None
        deadline = time.monotonic() + timeout
        while True:
            text = self.file_out.read_text() if self.file_out.exists() else ""
            # Only whole lines: the exporter may be writing the last one (other senders share the Collector).
            complete = text[: text.rfind("\n") + 1]
            spans = [s for line in complete.splitlines() if line for s in otlp_spans(json.loads(line))]
            mine = [s for s in spans if s.trace_id == trace_id]
            if len(mine) >= count or time.monotonic() > deadline:
                return mine
            time.sleep(0.2)


def validate(config: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`otelcol validate --config CONFIG`: the real Collector's own check of a configuration."""
    return subprocess.run(
        [str(otel_bin_dir() / "otelcol"), "validate", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def shipped_env(grpc_port: int, http_port: int, backend: str) -> dict[str, str]:
    """The environment that points the shipped configuration's listen addresses (OTLP, its own metrics) and
    backend at test ports.

    deploy/collector/collector.yaml reads them as `${env:VAR:-default}` (the Collector's own env provider): the
    defaults are the in-cluster ones (0.0.0.0:4317/4318, the backend's Service), the test sets 127.0.0.1."""
    return {
        "OTELCOL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{grpc_port}",
        "OTELCOL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{http_port}",
        "OTELCOL_BACKEND_ENDPOINT": backend,
        "OTELCOL_BACKEND_INSECURE": "true",
        "OTELCOL_METRICS_HOST": "127.0.0.1",
        "OTELCOL_METRICS_PORT": str(free_port()),
    }


def collector_config(workdir: Path, jaeger: Jaeger, *, spool_glob: str, file_out: Path) -> tuple[Path, int, int]:
    """The tests' Collector configuration (the shipped pipeline plus what proves the file format): OTLP gRPC and
    HTTP in, memory_limiter and batch, OTLP out to Jaeger and the Collector's own `file` exporter; a second
    pipeline whose `otlpjsonfile` receiver reads step-tracer's `file` exporter output (`spool_glob`) into
    Jaeger. Returns (config path, gRPC port, HTTP port)."""
    grpc_port, http_port = free_port(), free_port()
    config = {
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                    "http": {"endpoint": f"127.0.0.1:{http_port}"},
                }
            },
            "otlpjsonfile": {
                # the receiver would add the file's name as an attribute to every span: keep them as written
                "include": [spool_glob],
                "include_file_name": False,
                "start_at": "beginning",
                "poll_interval": "100ms",
            },
        },
        "processors": {
            "memory_limiter": {"check_interval": "1s", "limit_percentage": 80, "spike_limit_percentage": 20},
            "batch": {"timeout": "200ms"},
        },
        "exporters": {
            "otlp_grpc/jaeger": {"endpoint": jaeger.otlp_grpc, "tls": {"insecure": True}},
            "file": {"path": str(file_out)},
        },
        "service": {
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["memory_limiter", "batch"],
                    "exporters": ["otlp_grpc/jaeger", "file"],
                },
                "traces/from-step-tracer-file": {
                    "receivers": ["otlpjsonfile"],
                    "processors": ["batch"],
                    "exporters": ["otlp_grpc/jaeger"],
                },
            },
        },
    }
    path = workdir / "otelcol.yaml"
    path.write_text(json.dumps(config, indent=1))
    return path, grpc_port, http_port

"""`step-tracer show --from-jaeger URL --trace ID` against a local HTTP server answering as Jaeger's api_v3 does.

The answer below is written from Jaeger's own source (jaegertracing/jaeger, v2 line):
cmd/jaeger/internal/extension/jaegerquery/internal/apiv3/http_gateway.go (`returnTrace` wraps the trace as
`{"result": TracesData}`; `tryHandleError` answers `{"error": {"httpCode", "message"}}` with 404 for a missing
trace, "No traces found" when storage returns none), snapshots/GetTrace.json (the rendered shape: hex ids,
numeric `kind` and `status.code`, zero fields left out) and internal/jptrace/traces.go (the result is rendered by
the Collector's ptrace.JSONMarshaler: int64s as strings). The api_v3 OpenAPI description says the same.

The stand-in answers as a real Jaeger does: tests/real/test_real_backends.py sends this same trace through the
real Collector to a real Jaeger v2 and expects the same text from it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from step_tracer import jaeger
from step_tracer.show import TREE, show_jaeger

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.otlp_receiver import Blackhole

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
T0 = 1_700_000_000_000_000_000
S = 1_000_000_000


def _ns(seconds: float) -> str:
    return str(T0 + int(seconds * S))


def _span(name: str, span_id: str, parent: str, start: float, end: float, **extra: Any) -> dict[str, Any]:
    span: dict[str, Any] = {"traceId": TRACE_ID, "spanId": span_id, "name": name, "kind": 1}
    if parent:
        span["parentSpanId"] = parent
    span.update({"startTimeUnixNano": _ns(start), "endTimeUnixNano": _ns(end), "status": {}})
    span.update(extra)
    return span


def _attrs(result: str, code: int) -> list[dict[str, Any]]:
    return [
        {"key": "cicd.pipeline.task.run.result", "value": {"stringValue": result}},
        {"key": "process.exit.code", "value": {"intValue": str(code)}},
        {"key": "tekton.step.name", "value": {"stringValue": "x"}},
    ]


# Tekton's controller spans and step-tracer's step spans, as two resources, the way Jaeger returns a trace that
# two services sent: one resourceSpans entry per resource.
TRACES_DATA: dict[str, Any] = {
    "resourceSpans": [
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "pipelinerun-reconciler"}}]},
            "scopeSpans": [
                {
                    "scope": {"name": "PipelineRunReconciler"},
                    "spans": [
                        _span("PipelineRun:ReconcileKind", "a000000000000001", "", 0, 60),
                        _span("TaskRun:ReconcileKind", "a000000000000002", "a000000000000001", 1, 59),
                    ],
                }
            ],
        },
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "step-tracer"}}]},
            "scopeSpans": [
                {
                    "scope": {"name": "step-tracer", "version": "0.1.0"},
                    "spans": [
                        _span("clone", "b000000000000001", "a000000000000002", 2, 12, attributes=_attrs("success", 0)),
                        _span(
                            "build",
                            "b000000000000002",
                            "a000000000000002",
                            12,
                            57,
                            attributes=_attrs("failure", 2),
                            status={"code": 2, "message": "exit code 2"},
                        ),
                    ],
                }
            ],
        },
    ]
}

GOLDEN = (
    "trace 4bf92f3577b34da6a3ce929d0e0e4736  4 spans  1m00s  1 failed step\n"
    "  step                       result   exit  0s          30.0s       1m00s\n"
    "  PipelineRun:ReconcileKind                 █████████████████████████████  1m00s\n"
    "  └─ TaskRun:ReconcileKind                  ████████████████████████████▌  58.0s\n"
    "✓    ├─ clone                success     0   ████▊                         10.0s\n"
    "✗    └─ build                failure     2        █████████████████████▌   45.0s\n"
)


class FakeJaeger:
    """Answers GET {base}/api/v3/traces/{id} as Jaeger does; `mode` breaks it the ways a real one can break."""

    def __init__(self, base_path: str = "") -> None:
        self.base_path = base_path
        self.mode = "ok"
        self.requests: list[tuple[str, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append((self.path, dict(self.headers.items())))
                fake.answer(self)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}{base_path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        if self.mode == "not-json":
            return self._send(handler, 200, b"<html>Jaeger UI</html>", "text/html")
        if self.mode == "huge":
            return self._send(handler, 200, b" " * (2 * 1024 * 1024), "application/json")
        if self.mode == "internal":
            return self._error(handler, 500, "storage is on fire\n\x1b[2J")
        if self.mode == "other-json":
            return self._send(handler, 200, b'{"data": [{"traceID": "x", "spans": []}]}', "application/json")
        if handler.path != f"{self.base_path}/api/v3/traces/{TRACE_ID}":
            return self._error(handler, 404, "No traces found")
        body = {"result": TRACES_DATA} if self.mode == "ok" else TRACES_DATA  # "bare": gateways before the envelope
        return self._send(handler, 200, json.dumps(body).encode(), "application/json")

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, code: int, body: bytes, content_type: str) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _error(self, handler: BaseHTTPRequestHandler, code: int, message: str) -> None:
        # Go's http.Error: text/plain, the JSON error, a newline.
        body = json.dumps({"error": {"httpCode": code, "message": message}}) + "\n"
        self._send(handler, code, body.encode(), "text/plain; charset=utf-8")

    def __enter__(self) -> FakeJaeger:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_jaeger(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeJaeger]:
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    with FakeJaeger() as fake:
        yield fake


def run(url: str, trace_id: str = TRACE_ID, **kwargs: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = show_jaeger(url, trace_id, out=out, err=err, color=False, width=80, **kwargs)
    return code, out.getvalue(), err.getvalue()


def test_a_trace_from_jaeger_as_a_waterfall(fake_jaeger: FakeJaeger) -> None:
    assert run(fake_jaeger.url) == (0, GOLDEN, "")
    path, headers = fake_jaeger.requests[0]
    assert path == f"/api/v3/traces/{TRACE_ID}" and headers["Accept"] == "application/json"


def test_the_id_may_be_upper_case_and_the_url_end_in_a_slash(fake_jaeger: FakeJaeger) -> None:
    assert run(fake_jaeger.url + "/", TRACE_ID.upper())[:2] == (0, GOLDEN)


def test_the_tree_view_and_a_bare_traces_data_answer(fake_jaeger: FakeJaeger) -> None:
    fake_jaeger.mode = "bare"

    code, out, _ = run(fake_jaeger.url, view=TREE)

    assert code == 0
    assert out.endswith(
        "└─ TaskRun:ReconcileKind  58.0s\n   ├─ clone  10.0s  success  exit=0\n   └─ build  45.0s  failure  exit=2\n"
    )


def test_a_base_path_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    with FakeJaeger("/jaeger") as fake:
        assert run(fake.url)[:2] == (0, GOLDEN)


def test_user_and_password_go_in_a_header_and_never_in_what_is_printed(fake_jaeger: FakeJaeger) -> None:
    url = fake_jaeger.url.replace("http://", "http://ci:s3cret@")

    code, _, err = run(url, "0" * 32)

    assert code == 1 and "s3cret" not in err and "ci@" not in err
    assert fake_jaeger.requests[0][1]["Authorization"] == "Basic Y2k6czNjcmV0"


@pytest.mark.parametrize(
    ("mode", "trace_id", "expected"),
    [
        ("ok", "1" * 32, "step-tracer: no trace {id} in Jaeger at {url} (No traces found)\n"),
        ("internal", TRACE_ID, "step-tracer: Jaeger at {url} answered HTTP 500: storage is on fire \\x1b[2J\n"),
        ("not-json", TRACE_ID, "step-tracer: Jaeger at {url} answered something that is not JSON ("),
        ("other-json", TRACE_ID, "step-tracer: Jaeger at {url} answered JSON that is not an api_v3 trace"),
        ("huge", TRACE_ID, "step-tracer: the answer from Jaeger at {url} is over 1 MiB; not read\n"),
    ],
)
def test_every_problem_is_one_line(
    fake_jaeger: FakeJaeger, monkeypatch: pytest.MonkeyPatch, mode: str, trace_id: str, expected: str
) -> None:
    monkeypatch.setattr(jaeger, "MAX_BYTES", 1024 * 1024)
    fake_jaeger.mode = mode

    code, out, err = run(fake_jaeger.url, trace_id)

    assert (code, out) == (1, "")
    assert err.startswith(expected.format(id=trace_id, url=fake_jaeger.url)) and err.count("\n") == 1, err


def test_jaeger_down_is_one_line(dead_port: int) -> None:
    code, out, err = run(f"http://127.0.0.1:{dead_port}")

    assert (code, out) == (1, "")
    assert err == f"step-tracer: cannot read from Jaeger at http://127.0.0.1:{dead_port}: connection refused " + (
        "(is it running, and is that its query port, 16686 by default?)\n"
    )


def test_jaeger_that_never_answers_is_one_line(blackhole: Blackhole) -> None:
    code, out, err = run(f"http://127.0.0.1:{blackhole.port}", timeout=0.2)

    assert (code, out) == (1, "")
    assert err == f"step-tracer: cannot read from Jaeger at http://127.0.0.1:{blackhole.port}: no answer within 0.2s\n"


@pytest.mark.parametrize(
    ("url", "trace_id", "expected"),
    [
        ("localhost:16686", TRACE_ID, "--from-jaeger wants Jaeger's http(s) query URL"),
        ("file:///etc/passwd", TRACE_ID, "--from-jaeger wants Jaeger's http(s) query URL"),
        ("http://127.0.0.1:1", "4bf9/../../api", "--trace for Jaeger is a whole trace id"),
        ("http://127.0.0.1:1", "", "--trace for Jaeger is a whole trace id"),
        ("http://127.0.0.1:1", "f" * 33, "--trace for Jaeger is a whole trace id"),
    ],
)
def test_bad_arguments_are_refused_before_any_request(url: str, trace_id: str, expected: str) -> None:
    code, out, err = run(url, trace_id)

    assert (code, out) == (1, "")
    assert err.startswith(f"step-tracer: {expected}") and err.count("\n") == 1


def test_the_command(fake_jaeger: FakeJaeger) -> None:
    launcher = str(Path(sys.executable).parent / "step-tracer")
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "80"}

    shown = subprocess.run(
        [launcher, "show", "--from-jaeger", fake_jaeger.url, "--trace", TRACE_ID],
        capture_output=True,
        text=True,
        env=env,
    )
    without_id = subprocess.run([launcher, "show", "--from-jaeger", fake_jaeger.url], capture_output=True, text=True)
    with_file = subprocess.run(
        [launcher, "show", "x.jsonl", "--from-jaeger", fake_jaeger.url, "--trace", TRACE_ID],
        capture_output=True,
        text=True,
    )

    assert (shown.returncode, shown.stdout, shown.stderr) == (0, GOLDEN, "")
    assert without_id.returncode == 2 and without_id.stderr.startswith("step-tracer: --from-jaeger needs --trace ID")
    assert with_file.returncode == 2 and "not FILE or --last" in with_file.stderr

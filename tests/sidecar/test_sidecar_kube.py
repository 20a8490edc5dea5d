"""A standalone TaskRun's span context, read by the sidecar through the kubernetes client from a real local HTTP
server that answers like the API server (the hidden --kube-api / STEP_TRACER_KUBE_API replaces in-cluster config)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from step_tracer.sidecar import kube
from tests.otlp_receiver import HttpReceiver
from tests.sidecar.test_sidecar_pod import Pod, Sidecar, step_span, write_step

TRACEPARENT = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


class FakeApiServer:
    """GET /apis/tekton.dev/<version>/namespaces/<ns>/taskruns/<name>, answered from `answers[version]`: a list
    of (status code, body) consumed in order, the last one repeated."""

    def __init__(self) -> None:
        self.answers: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                code, body = server.answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append(path)
            parts = path.split("?")[0].strip("/").split("/")
            # apis/tekton.dev/<version>/namespaces/<ns>/taskruns/<name>
            if len(parts) != 7 or parts[:2] != ["apis", "tekton.dev"] or parts[3] != "namespaces":
                return 404, status(404, "NotFound")
            queue = self.answers.get(parts[2])
            if not queue:
                return 404, status(404, "NotFound")
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def status(code: int, reason: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}


def taskrun(span_context: dict[str, str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "tekton.dev/v1", "kind": "TaskRun", "metadata": {"name": "standalone-1"}}
    body["status"] = {"podName": "standalone-1-pod"}
    if span_context is not None:
        body["status"]["spanContext"] = span_context
    return body


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.close()


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    pod = Pod(tmp_path)
    pod.write_podinfo(pod.taskrun_labels("standalone-1"), namespace="ci")
    return pod


def start(pod: Pod, api: FakeApiServer, receiver: HttpReceiver, **extra: str) -> Sidecar:
    env = pod.env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, STEP_TRACER_KUBE_API=api.url, **extra)
    return Sidecar(pod, env)


def carrier(pod: Pod) -> dict[str, str]:
    data: dict[str, str] = json.loads((pod.spool / "taskrun-context.json").read_text())
    return data


def test_the_status_context_is_written_before_ready(pod: Pod, api: FakeApiServer, http_receiver: HttpReceiver) -> None:
    api.answers["v1"] = [(200, taskrun({"traceparent": TRACEPARENT, "tracestate": "t=1"}))]
    with start(pod, api, http_receiver) as sidecar:
        sidecar.wait_ready()
        assert carrier(pod) == {"traceparent": TRACEPARENT, "tracestate": "t=1"}
        assert api.requests == ["/apis/tekton.dev/v1/namespaces/ci/taskruns/standalone-1"]
        assert sidecar.stop()[0] == 0
    assert http_receiver.spans == []  # Tekton owns this TaskRun's span


def test_v1beta1_when_v1_is_not_served(pod: Pod, api: FakeApiServer, http_receiver: HttpReceiver) -> None:
    api.answers["v1beta1"] = [(200, taskrun({"traceparent": TRACEPARENT}))]
    with start(pod, api, http_receiver) as sidecar:
        sidecar.wait_ready()
        assert carrier(pod) == {"traceparent": TRACEPARENT}
        assert [p.split("/")[3] for p in api.requests] == ["v1", "v1beta1"]
        assert sidecar.stop()[0] == 0


def test_a_context_that_tekton_writes_a_moment_later_is_waited_for(
    pod: Pod, api: FakeApiServer, http_receiver: HttpReceiver
) -> None:
    api.answers["v1"] = [(200, taskrun(None)), (200, taskrun(None)), (200, taskrun({"traceparent": TRACEPARENT}))]
    with start(pod, api, http_receiver) as sidecar:
        sidecar.wait_ready()
        assert carrier(pod) == {"traceparent": TRACEPARENT}
        assert len(api.requests) == 3
        assert sidecar.stop()[0] == 0


def test_no_context_within_the_budget_falls_back_to_derived_ids(
    pod: Pod, api: FakeApiServer, http_receiver: HttpReceiver
) -> None:
    api.answers["v1"] = [(200, taskrun(None))]
    with start(pod, api, http_receiver, STEP_TRACER_DEBUG="1") as sidecar:
        sidecar.wait_ready()
        assert not (pod.spool / "taskrun-context.json").exists()
        assert len(api.requests) >= 2
        assert sidecar.stop()[0] == 0
    assert "no span context for TaskRun ci/standalone-1" in sidecar.stderr
    assert [s.name for s in http_receiver.spans] == ["standalone-1"]  # the derived TaskRun span


@pytest.mark.parametrize("debug", ["1", ""])
def test_forbidden_is_said_once_debug_or_not(
    pod: Pod, api: FakeApiServer, http_receiver: HttpReceiver, debug: str
) -> None:
    api.answers["v1"] = [(403, status(403, "Forbidden"))]
    with start(pod, api, http_receiver, STEP_TRACER_DEBUG=debug) as sidecar:
        sidecar.wait_ready()
        assert not (pod.spool / "taskrun-context.json").exists()
        assert len(api.requests) == 1  # no retry: permissions do not change within seconds
        assert sidecar.stop()[0] == 0
    mentions = [line for line in sidecar.stderr.splitlines() if "403" in line]
    assert len(mentions) == 1, sidecar.stderr
    assert "rbac.yaml" in mentions[0]


def test_an_annotation_means_no_lookup(pod: Pod, api: FakeApiServer, http_receiver: HttpReceiver) -> None:
    annotation = json.dumps({"traceparent": TRACEPARENT})
    pod.write_podinfo(pod.taskrun_labels("standalone-1"), {"tekton.dev/taskrunSpanContext": annotation})
    api.answers["v1"] = [(200, taskrun({"traceparent": TRACEPARENT}))]
    with start(pod, api, http_receiver) as sidecar:
        sidecar.wait_ready()
        write_step(pod, step_span(0))
        http_receiver.wait_for_spans(1)
        assert sidecar.stop()[0] == 0
    assert api.requests == []


def test_an_unreachable_api_server_does_not_hold_readiness_for_long(pod: Pod, http_receiver: HttpReceiver) -> None:
    from tests.otlp_receiver import free_port

    env = pod.env(
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint, STEP_TRACER_KUBE_API=f"http://127.0.0.1:{free_port()}"
    )
    with Sidecar(pod, env) as sidecar:
        sidecar.wait_ready(timeout=20)
        assert not (pod.spool / "taskrun-context.json").exists()
        assert sidecar.stop()[0] == 0


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (taskrun({"traceparent": TRACEPARENT}), {"traceparent": TRACEPARENT}),
        (taskrun({"traceparent": TRACEPARENT, "tracestate": ""}), {"traceparent": TRACEPARENT}),
        (taskrun({"traceparent": "00-" + "0" * 32 + "-" + "b" * 16 + "-01"}), None),
        (taskrun({"traceparent": "garbage"}), None),
        (taskrun({}), None),
        (taskrun(None), None),
        ({"status": "weird"}, None),
        ([], None),
    ],
)
def test_carrier_from_accepts_only_valid_contexts(obj: Any, expected: dict[str, str] | None) -> None:
    assert kube.carrier_from(obj) == expected

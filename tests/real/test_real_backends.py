"""Spans through the real OpenTelemetry Collector into a real Jaeger v2 (both built by hack/build-otel), read back
through Jaeger's query API: the wrapper's own exporters (OTLP/HTTP protobuf and JSON, gRPC), the sidecar of a
TaskRun run on Tekton's own code, and the `file` exporter's output read by the Collector's `otlpjsonfile`
receiver. Also: the shipped deploy/collector configuration, checked and run by the same Collector binary."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.real.conftest import TASKS
from tests.real.e2e import OTLP_SECRET, PATHS, Rig, compare, expected_result, new_span_context
from tests.real.otel import (
    DEPLOY,
    REPO,
    SHIPPED_CONFIG,
    Collector,
    Jaeger,
    Span,
    as_sent,
    free_port,
    otlp_spans,
    shipped_env,
    validate,
)

LAUNCHER = Path(sys.executable).parent / "step-tracer"
BEHAVIOURS = TASKS / "behaviours.yaml"
RESULT = "cicd.pipeline.task.run.result"
STATUS_UNSET, STATUS_ERROR = 0, 2
KIND_INTERNAL = 1


def wrapped(cmd: list[str], env: dict[str, str], tmp_path: Path, *attrs: str) -> int:
    """`step-tracer run` around `cmd` with `env` over a clean HOME: its exit code (the command's)."""
    argv = [str(LAUNCHER), "run", *(a for kv in attrs for a in ("--attr", kv)), "--", *cmd]
    full = {**os.environ, "HOME": str(tmp_path), **env}
    proc = subprocess.run(argv, env=full, capture_output=True, text=True, timeout=60, check=False)
    assert "step-tracer:" not in proc.stderr, proc.stderr
    return proc.returncode


def barrier(collector: Collector, jaeger: Jaeger, tmp_path: Path) -> None:
    """Returns once a span sent now through `collector` is in Jaeger. What was sent before it is in an earlier or
    the same batch of the Collector's pipeline, so by then it has been stored too (a late duplicate included)."""
    trace_id, parent, _ = new_span_context()
    env = {"TRACEPARENT": f"00-{trace_id}-{parent}-01", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.http_endpoint}
    assert wrapped(["true"], env, tmp_path) == 0
    one_span(jaeger, trace_id)


def one_span(jaeger: Jaeger, trace_id: str) -> Span:
    spans = jaeger.wait_for(trace_id, 1)
    assert len(spans) == 1, spans
    return spans[0]


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json", "grpc"])
def test_the_wrappers_span_reaches_jaeger_through_the_collector(
    collector: Collector, jaeger: Jaeger, tmp_path: Path, protocol: str
) -> None:
    trace_id, parent, _ = new_span_context()
    service = f"backends-{protocol.replace('/', '-')}"
    env = {
        "TRACEPARENT": f"00-{trace_id}-{parent}-01",
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.grpc_endpoint if protocol == "grpc" else collector.http_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
    }
    assert wrapped(["sh", "-c", "exit 3"], env, tmp_path, "team=build") == 3

    span = one_span(jaeger, trace_id)
    assert span.parent_span_id == parent
    assert span.kind == KIND_INTERNAL
    assert span.attributes[RESULT] == "failure"
    assert span.attributes["process.exit.code"] == 3
    assert span.attributes["error.type"] == "exit_code_3"
    assert span.attributes["team"] == "build"
    assert span.status_code == STATUS_ERROR and span.status_message
    assert span.resource["service.name"] == service
    assert span.resource["telemetry.sdk.name"] == "step-tracer"
    assert 0 < span.start_ns < span.end_ns
    # What the Collector received (its own `file` exporter) is what Jaeger stored.
    assert collector.exported(trace_id, 1) == [as_sent(span)]
    # Found by service as well as by id, and the classic API the UI reads has it as a child of the parent.
    assert [s.span_id for s in jaeger.find(service)] == [span.span_id]
    classic = jaeger.classic_trace(trace_id)
    assert classic is not None
    (ui_span,) = classic["spans"]
    assert {"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent} in ui_span["references"]


def test_a_successful_step_has_an_unset_status_in_jaeger(collector: Collector, jaeger: Jaeger, tmp_path: Path) -> None:
    trace_id, parent, _ = new_span_context()
    env = {"TRACEPARENT": f"00-{trace_id}-{parent}-01", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.http_endpoint}
    assert wrapped(["true"], env, tmp_path) == 0
    span = one_span(jaeger, trace_id)
    assert (span.attributes[RESULT], span.attributes["process.exit.code"]) == ("success", 0)
    assert span.status_code == STATUS_UNSET
    assert "error.type" not in span.attributes


def test_the_file_exporters_output_is_what_the_collectors_otlpjsonfile_receiver_reads(
    collector: Collector, jaeger: Jaeger, tmp_path: Path
) -> None:
    """README: the `file` exporter writes OTLP JSON ExportTraceServiceRequests, one a line, the format of the
    Collector's otlpjsonfile receiver. The real receiver reads the file, and Jaeger ends up with every span as
    the file has it: ids, parent, name, kind, times, attributes, resource, status."""
    assert collector.spans_dir is not None
    trace_id, parent, _ = new_span_context()
    out = collector.spans_dir / f"{trace_id}.jsonl"
    env = {
        "TRACEPARENT": f"00-{trace_id}-{parent}-01",
        "OTEL_TRACES_EXPORTER": "file",
        "STEP_TRACER_FILE": str(out),
        "OTEL_SERVICE_NAME": "backends-file",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
    }
    assert wrapped(["sh", "-c", "echo hi"], env, tmp_path, "n=1") == 0
    # the wrapper dies of the signal that killed the command, as the command did
    assert wrapped(["sh", "-c", "kill -TERM $$"], env, tmp_path, "n=2") == -15
    assert wrapped(["sh", "-c", "exit 7"], env, tmp_path, "n=3", 'quote=a "b" \\ ü') == 7

    lines = out.read_text().splitlines()
    assert len(lines) == 3
    written = sorted((s for line in lines for s in otlp_spans(json.loads(line))), key=lambda s: s.start_ns)
    stored = sorted(map(as_sent, jaeger.wait_for(trace_id, 3)), key=lambda s: s.start_ns)
    assert stored == written
    assert [s.attributes["n"] for s in stored] == ["1", "2", "3"]
    assert [s.status_code for s in stored] == [STATUS_UNSET, STATUS_ERROR, STATUS_ERROR]
    assert stored[1].attributes["error.type"] == "SIGTERM"
    assert stored[2].attributes["quote"] == 'a "b" \\ ü'


@pytest.mark.root
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("task", ["results-and-continue", "fails-then-skips"])
def test_a_taskruns_step_spans_reach_jaeger_through_the_collector(
    rig: Rig, collector: Collector, jaeger: Jaeger, tmp_path: Path, task: str, path: str
) -> None:
    """The sidecar ships through its Secret's endpoint (here the Collector) and Jaeger holds exactly one span per
    executed step, each a child of the TaskRun's span context, with Tekton's result and exit code."""
    otlp_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.http_endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    base = rig.run([BEHAVIOURS], task, "unpatched")
    traced = rig.run([BEHAVIOURS], task, path, otlp_env=otlp_env)
    trace_id, parent = traced.traceparent.split("-")[1:3]
    executed = [s for s in traced.steps() if s.get("terminationReason") != "Skipped"]

    jaeger.wait_for(trace_id, len(executed))
    barrier(collector, jaeger, tmp_path)
    spans = jaeger.trace(trace_id)
    problems = [r.line() for r in compare(task, base, traced, spans) if r.problems]
    assert not problems, "\n".join(problems)
    assert len(spans) == len(executed) and len({s.span_id for s in spans}) == len(spans)
    by_step = {s.attributes["tekton.step.name"]: s for s in spans}
    for state in executed:
        span = by_step[state["name"]]
        assert span.parent_span_id == parent
        assert span.attributes[RESULT] == expected_result(state)
        assert (span.status_code == STATUS_ERROR) == (expected_result(state) != "success")
        assert span.resource["k8s.pod.name"] == traced.pod["metadata"]["name"]
    assert not rig.spans_of(traced), "the sidecar exported to the rig's receiver, not to its Secret's endpoint"


def test_the_shipped_collector_configuration_is_valid(tmp_path: Path) -> None:
    """`otelcol validate` on deploy/collector/collector.yaml as shipped (in-cluster defaults), and its refusal of
    a broken value, so the check is known to look."""
    ok = validate(SHIPPED_CONFIG)
    assert ok.returncode == 0, ok.stderr
    broken = validate(SHIPPED_CONFIG, {"OTELCOL_BACKEND_INSECURE": "maybe"})
    assert broken.returncode != 0 and "insecure" in broken.stderr


def test_the_shipped_collector_configuration_carries_spans_to_jaeger(jaeger: Jaeger, tmp_path: Path) -> None:
    """The shipped file, run unchanged: the test points its `${env:...}` addresses at 127.0.0.1 ports."""
    grpc_port, http_port = free_port(), free_port()
    env = shipped_env(grpc_port, http_port, jaeger.otlp_grpc)
    assert validate(SHIPPED_CONFIG, env).returncode == 0
    shipped = Collector(tmp_path, SHIPPED_CONFIG, env, grpc_port, http_port)
    try:
        for endpoint, protocol in [(shipped.http_endpoint, "http/protobuf"), (shipped.grpc_endpoint, "grpc")]:
            trace_id, parent, _ = new_span_context()
            otlp = {
                "TRACEPARENT": f"00-{trace_id}-{parent}-01",
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            }
            assert wrapped(["sh", "-c", "exit 1"], otlp, tmp_path) == 1
            span = one_span(jaeger, trace_id)
            assert (span.parent_span_id, span.attributes[RESULT]) == (parent, "failure")
    finally:
        shipped.stop()


def test_the_shipped_manifests_point_at_the_collector_they_deploy() -> None:
    """The sidecar's Secret and Tekton's config-tracing name the Service and ports the Collector listens on, the
    Deployment mounts the ConfigMap the kustomization generates, and its image is the release hack/otelcol pins."""
    import yaml

    def load(name: str) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load((DEPLOY / name).read_text())
        return doc

    kustomization, deployment, service = load("kustomization.yaml"), load("deployment.yaml"), load("service.yaml")
    config = load("collector.yaml")
    namespace = kustomization["namespace"]
    host = f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(f":-0.0.0.0:{ports['otlp-grpc']}}}")
    assert protocols["http"]["endpoint"].endswith(f":-0.0.0.0:{ports['otlp-http']}}}")

    secret = load("step-tracer-otlp.yaml")
    assert secret["metadata"]["name"] == OTLP_SECRET and "namespace" not in secret["metadata"]
    assert secret["stringData"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{host}:{ports['otlp-http']}"
    tracing = load("config-tracing.yaml")
    assert (tracing["metadata"]["name"], tracing["metadata"]["namespace"]) == ("config-tracing", "tekton-pipelines")
    assert tracing["data"] == {"enabled": "true", "endpoint": f"http://{host}:{ports['otlp-http']}/v1/traces"}

    pod = deployment["spec"]["template"]["spec"]
    (generated,) = kustomization["configMapGenerator"]
    assert pod["volumes"][0]["configMap"]["name"] == generated["name"]
    assert generated["files"] == ["collector.yaml"]
    (container,) = pod["containers"]
    assert container["args"] == [f"--config={container['volumeMounts'][0]['mountPath']}/collector.yaml"]
    pinned = re.search(r"go\.opentelemetry\.io/collector/otelcol v(\S+)", (REPO / "hack/otelcol/go.mod").read_text())
    assert pinned is not None and container["image"].endswith(":" + pinned[1])


def test_show_from_a_real_jaeger_is_what_the_stand_in_shows(collector: Collector, jaeger: Jaeger) -> None:
    """`step-tracer show --from-jaeger` on a trace sent through the Collector to Jaeger: the same text as from
    tests/show's stand-in, so the stand-in answers as Jaeger does."""
    from tests.show.test_show_jaeger import GOLDEN, TRACES_DATA, run

    request = urllib.request.Request(
        collector.http_endpoint + "/v1/traces",
        data=json.dumps(TRACES_DATA).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).close()
    deadline = time.monotonic() + 30
    while True:  # the Collector batches and Jaeger stores asynchronously: ask until all four spans are there
        code, out, _ = run(jaeger.url)
        if (code == 0 and "4 spans" in out) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (code, out) == (0, GOLDEN)

"""A PipelineRun through Tekton's own PipelineRun and TaskRun reconcilers with Tekton's tracing on, Tekton and
the sidecars exporting to a real Collector, read back through a real Jaeger's API: one trace from Tekton's
PipelineRun span through its TaskRun spans to one span per executed step, on both tracing paths, with every
TaskRun's outcome what it is without step-tracer."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real.conftest import TASKS
from tests.real.e2e import RESULT_ATTR, Rig, expected_result
from tests.real.otel import Collector, Jaeger
from tests.real.otel import Span as JaegerSpan
from tests.real.pipelines import PipelineRunResult, run_pipeline

pytestmark = pytest.mark.root

PIPELINE = TASKS / "pipeline-docker-build.yaml"
SPAN_CONTEXT = "tekton.dev/taskrunSpanContext"
PIPELINERUN_RECONCILER = "pipelinerun-reconciler"


def _run(rig: Rig, path: str, tmp_path: Path) -> PipelineRunResult:
    return run_pipeline(
        rig,
        [PIPELINE],
        path,
        name=f"docker-build-{path}",
        tracing_endpoint=rig.tekton_tracing_endpoint,
        workspaces={"workspace": "pvc:workspace"},
        claims={"workspace": tmp_path},
    )


def _steps(run: PipelineRunResult) -> dict[tuple[str, str], tuple[int | None, str | None]]:
    out = {}
    for tr in run.taskruns:
        task = tr["metadata"]["labels"]["tekton.dev/pipelineTask"]
        for s in tr["status"].get("steps") or []:
            out[(task, s["name"])] = ((s.get("terminated") or {}).get("exitCode"), s.get("terminationReason"))
    return out


@pytest.fixture(scope="module")
def backend_rig(
    rig: Rig, collector: Collector, jaeger: Jaeger, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    """The session rig's images, exporting to the real Collector; spans read back from Jaeger."""
    with Rig(tmp_path_factory.mktemp("backend-rig"), rig.images, rig.default) as r:
        r.use_backend(collector, jaeger)
        yield r


@pytest.fixture(scope="module")
def unpatched(backend_rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> PipelineRunResult:
    return _run(backend_rig, "unpatched", tmp_path_factory.mktemp("ws"))


def _trace_in_jaeger(jaeger: Jaeger, trace: str, steps: int) -> list[JaegerSpan]:
    """The trace once Jaeger holds a span for every executed step and Tekton's PipelineRun span."""
    deadline = time.monotonic() + 60
    while True:
        spans = jaeger.trace(trace)
        have = sum(1 for s in spans if "tekton.step.name" in s.attributes)
        root = any(not s.parent_span_id for s in spans)
        if (have >= steps and root) or time.monotonic() > deadline:
            return spans
        time.sleep(0.5)


@pytest.mark.parametrize("path", ["inject", "webhook"])
def test_one_trace_from_tektons_pipelinerun_span_to_every_step(
    backend_rig: Rig, jaeger: Jaeger, unpatched: PipelineRunResult, path: str, tmp_path: Path
) -> None:
    run = _run(backend_rig, path, tmp_path)
    # Tekton's verdict is the same as without step-tracer: the PipelineRun, every TaskRun, every step.
    assert run.succeeded == unpatched.succeeded == "True"
    assert _steps(run) == _steps(unpatched)
    assert _steps(run)[("build-container", "push-sbom")] == (4, "Continued")

    traces = {tr["metadata"]["annotations"][SPAN_CONTEXT].split("-")[1] for tr in run.taskruns}
    assert len(traces) == 1, "every TaskRun of the PipelineRun in one trace"
    (trace,) = traces
    spans = _trace_in_jaeger(jaeger, trace, len(_steps(run)))
    by_id: dict[str, JaegerSpan] = {s.span_id: s for s in spans}
    tekton = [s for s in spans if s.resource.get("service.name") in ("pipelinerun-reconciler", "taskrun-reconciler")]
    steps = [s for s in spans if "tekton.step.name" in s.attributes]
    assert tekton and len(spans) == len(tekton) + len(steps), "only Tekton's spans and step spans"

    # One root, Tekton's PipelineRun span; nothing orphaned.
    roots = [s for s in spans if not s.parent_span_id]
    assert [(r.resource["service.name"], r.name) for r in roots] == [(PIPELINERUN_RECONCILER, "PipelineRun:Reconciler")]
    assert all(s.parent_span_id in by_id for s in spans if s.parent_span_id), "a span whose parent is not in the trace"
    # Tekton's TaskRun spans sit under the span its PipelineRun reconciler created each TaskRun in, as the steps do.
    for tr in run.taskruns:
        parent = tr["metadata"]["annotations"][SPAN_CONTEXT].split("-")[2]
        children = {s.name for s in spans if s.parent_span_id == parent}
        assert "TaskRun:ReconcileKind" in children, (tr["metadata"]["name"], children)

    # Exactly one span per executed step, none duplicated, each under the span Tekton created its TaskRun in.
    assert len({(s.trace_id, s.span_id) for s in steps}) == len(steps)
    expected = Counter(_steps(run).keys())
    seen = Counter((s.attributes["cicd.pipeline.task.name"], s.attributes["tekton.step.name"]) for s in steps)
    assert seen == expected
    contexts = {tr["metadata"]["labels"]["tekton.dev/pipelineTask"]: tr for tr in run.taskruns}
    for s in steps:
        tr = contexts[str(s.attributes["cicd.pipeline.task.name"])]
        parent = tr["metadata"]["annotations"][SPAN_CONTEXT].split("-")[2]
        assert s.parent_span_id == parent
        assert (by_id[parent].resource["service.name"], by_id[parent].name) == (PIPELINERUN_RECONCILER, "createTaskRun")
        state = next(x for x in tr["status"]["steps"] if x["name"] == s.attributes["tekton.step.name"])
        assert s.attributes[RESULT_ATTR] == expected_result(state)
        assert s.attributes["process.exit.code"] == state["terminated"]["exitCode"]
        assert s.attributes["cicd.pipeline.name"] == "docker-build-like"
        assert s.resource["k8s.pod.name"] == tr["status"]["podName"]

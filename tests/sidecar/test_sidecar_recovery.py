"""Steps whose end the sidecar never sees, and the TaskRun span it emits only for derived contexts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from step_tracer.context import SpanContext
from step_tracer.tekton import podinfo
from tests.otlp_receiver import HttpReceiver, ReceivedSpan
from tests.sidecar.test_sidecar_pod import TASKRUN_UID, Pod, Sidecar, step_span, write_step


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    return Pod(tmp_path)


def env_for(pod: Pod, receiver: HttpReceiver, **extra: str) -> dict[str, str]:
    """A 4 s drain deadline: unfinished steps then get 1 s (a quarter) to show their end before recovery."""
    settings = {"STEP_TRACER_DRAIN_DEADLINE": "4", **extra}
    return pod.env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, K8S_NODE_NAME="node-3", **settings)


def test_a_step_past_its_timeout_is_recovered_as_a_timeout_at_drain(pod: Pod, http_receiver: HttpReceiver) -> None:
    pod.spool.mkdir()
    started = time.time_ns() - 5_000_000_000
    killed = step_span(0, start_ns=started, timeout=1.5)  # Tekton SIGKILLed its wrapper at 1.5 s
    write_step(pod, killed, end=False)
    with Sidecar(pod, env_for(pod, http_receiver)) as sidecar:
        sidecar.wait_ready()
        time.sleep(0.3)
        assert http_receiver.spans == []  # an unfinished step is not reported while nothing says it is lost
        assert sidecar.stop()[0] == 0
    (span,) = http_receiver.spans
    assert (span.span_id, span.start_ns, span.end_ns) == (killed.span_id, started, started + 1_500_000_000)
    assert span.attributes["cicd.pipeline.task.run.result"] == "timeout"
    assert span.attributes["error.type"] == "timeout"
    assert span.status_code == 2
    assert span.resource["k8s.node.name"] == "node-3"
    assert pod.records() == (set(), set())
    assert "(1 recovered)" in sidecar.stderr


@pytest.mark.parametrize("timeout", [3600.0, None])
def test_a_step_within_its_timeout_is_recovered_as_end_not_observed(
    pod: Pod, http_receiver: HttpReceiver, timeout: float | None
) -> None:
    pod.spool.mkdir()
    lost = step_span(0, start_ns=time.time_ns() - 1_000_000_000, timeout=timeout)
    write_step(pod, lost, end=False)
    with Sidecar(pod, env_for(pod, http_receiver)) as sidecar:
        sidecar.wait_ready()
        signalled = time.time_ns()
        assert sidecar.stop()[0] == 0
    exited = time.time_ns()
    (span,) = http_receiver.spans
    assert span.attributes["cicd.pipeline.task.run.result"] == "error"
    assert span.attributes["error.type"] == "step_end_not_observed"
    assert span.status_code == 2
    assert signalled <= span.end_ns <= exited


def test_a_later_step_starting_recovers_an_unfinished_earlier_one(pod: Pod, http_receiver: HttpReceiver) -> None:
    """With onError: continue, a step killed at its timeout is followed by the next one: its start says so."""
    first, second = step_span(0), step_span(1)
    with Sidecar(pod, env_for(pod, http_receiver)) as sidecar:
        sidecar.wait_ready()
        write_step(pod, first, end=False)
        time.sleep(0.3)
        assert http_receiver.spans == []
        write_step(pod, second, end=False)
        (recovered,) = http_receiver.wait_for_spans(1)
        assert sidecar.proc.poll() is None  # found while running, not at drain
        assert recovered.span_id == first.span_id
        assert recovered.attributes["error.type"] == "step_end_not_observed"
        write_step(pod, second, start=False)
        http_receiver.wait_for_spans(2)
        write_step(pod, first, start=False)  # an end that shows up after all is not shipped a second time
        pod.wait_empty()
        assert sidecar.stop()[0] == 0
    assert sorted(s.span_id for s in http_receiver.spans) == sorted([first.span_id, second.span_id])
    assert "already reported as not observed" in sidecar.stderr


def test_an_end_that_arrives_just_after_sigterm_wins_over_recovery(pod: Pod, http_receiver: HttpReceiver) -> None:
    """A pod deletion signals the steps and the sidecar together: the wrappers' ends come a moment later."""
    step = step_span(0)
    with Sidecar(pod, env_for(pod, http_receiver, STEP_TRACER_DRAIN_DEADLINE="10")) as sidecar:  # 2 s grace
        sidecar.wait_ready()
        write_step(pod, step, end=False)
        sidecar.proc.send_signal(15)
        time.sleep(0.5)
        write_step(pod, step, start=False)
        assert sidecar.proc.wait(30) == 0
    (span,) = http_receiver.spans
    assert span.attributes["cicd.pipeline.task.run.result"] == "success"
    assert span.end_ns == step.end_ns


# -- the TaskRun span ----------------------------------------------------------------------------------------


def derived() -> SpanContext:
    return podinfo.derived_context(TASKRUN_UID)


def split(spans: list[ReceivedSpan]) -> tuple[list[ReceivedSpan], list[ReceivedSpan]]:
    """(TaskRun spans, step spans)."""
    ids = derived()
    taskrun = [s for s in spans if s.span_id == ids.span_id]
    return taskrun, [s for s in spans if s.span_id != ids.span_id]


@pytest.mark.parametrize(
    ("on_error", "result"), [("stopAndFail", "failure"), ("continue", "success")], ids=["failing", "on-error-continue"]
)
def test_the_taskrun_span_is_emitted_for_derived_contexts(
    pod: Pod, http_receiver: HttpReceiver, on_error: str, result: str
) -> None:
    pod.write_podinfo(pod.taskrun_labels())
    steps = json.dumps([{"name": "build", "image": "b", "onError": on_error}, {"name": "test", "image": "t"}])
    parent = derived()
    first = step_span(0, parent, name="build", exit_code=2)
    second = step_span(1, parent, name="test")
    with Sidecar(pod, env_for(pod, http_receiver, STEP_TRACER_STEPS=steps)) as sidecar:
        sidecar.wait_ready()
        before = time.time_ns()
        write_step(pod, first)
        write_step(pod, second)
        http_receiver.wait_for_spans(2)
        assert split(http_receiver.spans)[0] == []  # only at drain: the TaskRun is not over before
        assert sidecar.stop()[0] == 0
    (taskrun,), step_spans = split(http_receiver.spans)
    assert len(step_spans) == 2
    assert (taskrun.trace_id, taskrun.span_id, taskrun.parent_span_id) == (parent.trace_id, parent.span_id, "")
    assert taskrun.trace_id == TASKRUN_UID.replace("-", "")
    assert taskrun.name == "build-run-1"
    assert taskrun.start_ns <= min(before, first.start_ns)
    assert taskrun.end_ns >= max(s.end_ns for s in step_spans)
    assert taskrun.attributes["cicd.pipeline.task.name"] == "build"
    assert taskrun.attributes["cicd.pipeline.task.run.id"] == TASKRUN_UID
    assert taskrun.attributes["tekton.taskrun.name"] == "build-run-1"
    assert taskrun.attributes["cicd.pipeline.task.run.result"] == result
    if result == "failure":
        assert taskrun.attributes["error.type"] == "exit_code_2"
        assert taskrun.status_code == 2
    else:
        assert "error.type" not in taskrun.attributes
    assert taskrun.resource["k8s.pod.name"] == "build-pod"
    assert taskrun.resource["k8s.namespace.name"] == "ci"
    assert taskrun.resource["k8s.node.name"] == "node-3"
    assert "k8s.container.name" not in taskrun.resource


def test_a_recovered_step_fails_the_taskrun_span(pod: Pod, http_receiver: HttpReceiver) -> None:
    pod.write_podinfo(pod.taskrun_labels())
    with Sidecar(pod, env_for(pod, http_receiver)) as sidecar:
        sidecar.wait_ready()
        write_step(pod, step_span(0, derived(), start_ns=time.time_ns() - 10**10, timeout=2.0), end=False)
        assert sidecar.stop()[0] == 0
    (taskrun,), (step,) = split(http_receiver.spans)
    assert step.attributes["cicd.pipeline.task.run.result"] == "timeout"
    assert taskrun.attributes["cicd.pipeline.task.run.result"] == "failure"
    assert taskrun.attributes["error.type"] == "timeout"


def test_no_taskrun_span_when_tekton_gave_the_context_in_an_annotation(pod: Pod, http_receiver: HttpReceiver) -> None:
    tekton = SpanContext("1" * 32, "2" * 16)
    carrier = json.dumps({"traceparent": tekton.traceparent()})
    pod.write_podinfo(pod.taskrun_labels(), {"tekton.dev/taskrunSpanContext": carrier})
    with Sidecar(pod, env_for(pod, http_receiver)) as sidecar:
        sidecar.wait_ready()
        write_step(pod, step_span(0, tekton))
        http_receiver.wait_for_spans(1)
        assert sidecar.stop()[0] == 0
    assert [s.parent_span_id for s in http_receiver.spans] == ["2" * 16]
    assert not (pod.spool / "taskrun-context.json").exists()  # no API lookup either


def test_no_taskrun_span_when_the_status_context_was_read(pod: Pod, http_receiver: HttpReceiver) -> None:
    pod.write_podinfo(pod.taskrun_labels())
    pod.spool.mkdir()
    tekton = SpanContext("3" * 32, "4" * 16)
    (pod.spool / "taskrun-context.json").write_text(json.dumps({"traceparent": tekton.traceparent()}))
    with Sidecar(pod, env_for(pod, http_receiver)) as sidecar:
        sidecar.wait_ready()
        write_step(pod, step_span(0, tekton))
        http_receiver.wait_for_spans(1)
        assert sidecar.stop()[0] == 0
    assert len(http_receiver.spans) == 1


def test_no_taskrun_span_when_the_steps_had_their_own_parent(pod: Pod, http_receiver: HttpReceiver) -> None:
    """TRACEPARENT in the steps' environment (contract case 1): no step refers to the derived ids."""
    pod.write_podinfo(pod.taskrun_labels())
    with Sidecar(pod, env_for(pod, http_receiver)) as sidecar:
        sidecar.wait_ready()
        write_step(pod, step_span(0, SpanContext("5" * 32, "6" * 16)))
        http_receiver.wait_for_spans(1)
        assert sidecar.stop()[0] == 0
    assert len(http_receiver.spans) == 1


def test_the_taskrun_span_still_comes_when_no_step_was_traced(pod: Pod, http_receiver: HttpReceiver) -> None:
    pod.write_podinfo(pod.taskrun_labels())
    with Sidecar(pod, env_for(pod, http_receiver)) as sidecar:
        sidecar.wait_ready()
        assert sidecar.stop()[0] == 0
    (taskrun,), steps = split(http_receiver.spans)
    assert steps == []
    assert taskrun.attributes["cicd.pipeline.task.run.result"] == "success"

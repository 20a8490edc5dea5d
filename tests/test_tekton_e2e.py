"""Patched Tasks run end to end in the Tekton stand-in: patcher -> pod -> wrapper in every step -> spool -> sidecar ->
a real OTLP receiver. Attribute names and ids are the runtime contract's (notes/tekton-contract.md), computed here
independently of step-tracer's own code.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pytest

from step_tracer.inject.model import InjectOptions
from step_tracer.inject.runner import patch_text
from tests.otlp_receiver import HttpReceiver, ReceivedSpan
from tests.tekton_harness import DEFAULT_PATH, Harness, Image, PipelineInfo, TaskRun, TaskRunResult, wait_until

pytestmark = pytest.mark.timeout(180)

VENV_BIN = Path(sys.executable).parent
WRAPPER = str(VENV_BIN / "step-tracer")
RESULT = "cicd.pipeline.task.run.result"
TOOL_SCRIPT = 'echo "tool: $*"; [ "$1" != fail ]'
IMAGES = {
    # The step-tracer image: its PATH finds the installed launcher as `step-tracer`.
    "local": Image(path=f"{VENV_BIN}:{DEFAULT_PATH}"),
    "python": Image(path=f"{VENV_BIN}:{DEFAULT_PATH}"),
    "tool": Image(entrypoint=("/bin/sh", "-c", TOOL_SCRIPT, "tool")),
}


def _resolve(image: str) -> list[str] | None:
    """The registry lookup the patcher needs for command-less steps: the same answer the harness gives Tekton."""
    found = IMAGES.get(image)
    return list(found.entrypoint or found.cmd) if found else None


OPTIONS = InjectOptions(wrapper=WRAPPER, sidecar_image="local", resolve_entrypoints=True, resolve=_resolve)


def task(name: str, *steps: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tekton.dev/v1",
        "kind": "Task",
        "metadata": {"name": name},
        "spec": {**spec, "steps": list(steps)},
    }


def patch(resource: dict[str, Any]) -> dict[str, Any]:
    result = patch_text(json.dumps(resource), OPTIONS, source=f"{resource['metadata']['name']}.json")
    assert not result.unwrapped, result.unwrapped
    patched: dict[str, Any] = json.loads(result.text)
    return patched


def otlp_env(endpoint: str) -> dict[str, str]:
    """What the step-tracer-otlp Secret holds; the sidecar gets it through envFrom."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}


@pytest.fixture
def harness(tmp_path: Path, http_receiver: HttpReceiver) -> Harness:
    return Harness(tmp_path, images=IMAGES, secrets={"step-tracer-otlp": otlp_env(http_receiver.endpoint)})


def tekton_parent() -> tuple[str, str, dict[str, str]]:
    """(trace id, span id, annotations) as Tekton puts the PipelineRun's createTaskRun span on a TaskRun."""
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    carrier = json.dumps({"traceparent": f"00-{trace_id}-{span_id}-01"})
    return trace_id, span_id, {"tekton.dev/taskrunSpanContext": carrier}


def derived_ids(taskrun_uid: str) -> tuple[str, str]:
    """Contract case 4: trace id = the UID's hex digits, TaskRun span id = sha256("step-tracer/taskrun/" + uid)."""
    span_id = hashlib.sha256(b"step-tracer/taskrun/" + taskrun_uid.encode()).hexdigest()[:16]
    return taskrun_uid.replace("-", "").lower(), span_id


def step_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return sorted(
        (s for s in spans if "tekton.step.name" in s.attributes),
        key=lambda s: int(str(s.attributes["tekton.step.index"])),
    )


# -- one TaskRun, every kind of step --------------------------------------------------------------------------------

FIVE_STEPS = task(
    "five",
    {"name": "build", "image": "busybox", "command": ["sh", "-c"], "args": ["echo built > $(results.artifact.path)"]},
    {"name": "lint", "image": "busybox", "onError": "continue", "script": "echo 'lint failed' >&2\nexit 3"},
    {
        "name": "report",
        "image": "python",
        "script": "#!/usr/bin/env python3\nimport sys\nprint('report', *sys.argv[1:])",
        "args": ["--fast"],
    },
    {"name": "package", "image": "tool", "args": ["$(params.version)"]},
    {"name": "publish", "image": "busybox", "timeout": "2s", "command": ["sleep", "30"]},
    params=[{"name": "version", "default": "1.0"}],
    results=[{"name": "artifact"}],
)


def test_five_step_taskrun_gives_one_span_per_step_under_the_taskrun_span(
    harness: Harness, http_receiver: HttpReceiver
) -> None:
    trace_id, parent_id, annotations = tekton_parent()
    pipeline = PipelineInfo("release", "release-run-7", str(uuid.uuid4()), "five-task")
    taskrun = TaskRun(name="five-run", namespace="builds", annotations=annotations, pipeline=pipeline)
    result = harness.run(patch(FIVE_STEPS), taskrun)

    assert [(s.name, s.reason, s.exit_code) for s in result.steps[:4]] == [
        ("build", "Completed", 0), ("lint", "Continued", 3), ("report", "Completed", 0), ("package", "Completed", 0),
    ]  # fmt: skip
    assert result.steps[4].container_exit != 0
    assert result.results == {"artifact": "built\n"}
    assert result.step("report").stdout == b"report --fast\n"
    assert result.step("package").stdout == b"tool: 1.0\n"
    assert result.step("lint").stderr == b"lint failed\n"

    spans = http_receiver.spans
    steps = step_spans(spans)
    assert len(spans) == len(steps) == 5, [s.name for s in spans]  # Tekton owns the TaskRun span here
    assert [s.name for s in steps] == ["build", "lint", "report", "package", "publish"]
    assert {(s.trace_id, s.parent_span_id) for s in steps} == {(trace_id, parent_id)}
    assert [s.attributes[RESULT] for s in steps] == ["success", "failure", "success", "success", "timeout"]
    assert [s.attributes["process.exit.code"] for s in steps[:4]] == [0, 3, 0, 0]
    images = ["busybox", "busybox", "python", "tool", "busybox"]
    for index, (span, image) in enumerate(zip(steps, images, strict=True)):
        got = {k: v for k, v in span.attributes.items() if k.startswith(("cicd.pipeline.", "tekton."))}
        got.pop(RESULT)
        got.pop("tekton.trace.parent_source", None)  # the wrapper's own diagnostics, not in the contract
        # The timed-out step's measurements, saved by the wrapper just before Tekton's SIGKILL.
        measured = got.pop("tekton.step.measured_until", None)
        assert (measured is not None) == (span.name == "publish")
        assert got == {
            "cicd.pipeline.name": "release",
            "cicd.pipeline.run.id": pipeline.pipeline_run_uid,
            "cicd.pipeline.task.name": "five-task",
            "cicd.pipeline.task.run.id": taskrun.uid,
            "tekton.pipelinerun.name": "release-run-7",
            "tekton.taskrun.name": "five-run",
            "tekton.task.name": "five",
            "tekton.pipeline.task.name": "five-task",
            "tekton.step.name": span.name,
            "tekton.step.index": index,
            "tekton.step.image": image,
            **({"tekton.step.on_error": "continue"} if span.name == "lint" else {}),
            **({"tekton.step.timeout": 2.0} if span.name == "publish" else {}),
        }
        assert {k: span.resource.get(k) for k in ("k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid")} == {
            "k8s.namespace.name": "builds",
            "k8s.pod.name": result.pod.name,
            "k8s.pod.uid": result.pod.uid,
        }
        assert span.resource["k8s.container.name"] == f"step-{span.name}"
        assert span.resource["k8s.node.name"] == "harness-node"
        assert span.start_ns <= span.end_ns
    assert all(a.end_ns <= b.start_ns for a, b in itertools.pairwise(steps))
    peak = steps[4].attributes["process.memory.peak"]  # measured although Tekton SIGKILLed the wrapper
    assert isinstance(peak, int) and peak > 0


def test_standalone_taskrun_is_one_trace_with_a_derived_taskrun_span(
    harness: Harness, http_receiver: HttpReceiver
) -> None:
    taskrun = TaskRun(name="alone")
    harness.run(
        patch(
            task(
                "alone",
                {"name": "a", "image": "busybox", "command": ["true"]},
                {"name": "b", "image": "busybox", "script": "exit 0"},
            )
        ),
        taskrun,
    )
    trace_id, taskrun_span_id = derived_ids(taskrun.uid)
    spans = http_receiver.spans
    steps = step_spans(spans)
    (root,) = [s for s in spans if s not in steps]
    assert [s.name for s in steps] == ["a", "b"]
    assert {s.trace_id for s in spans} == {trace_id}
    assert (root.span_id, root.parent_span_id) == (taskrun_span_id, "")
    assert {s.parent_span_id for s in steps} == {taskrun_span_id}
    assert root.attributes["tekton.taskrun.name"] == "alone"
    assert root.attributes["cicd.pipeline.task.run.id"] == taskrun.uid
    assert root.attributes[RESULT] == "success"
    assert root.start_ns <= steps[0].start_ns and steps[-1].end_ns <= root.end_ns


# -- a TaskRun cut short ----------------------------------------------------------------------------------------------


def spool_has_start(running_pod_root: Path) -> bool:
    return any((running_pod_root / "volumes" / "step-tracer-spool").glob("*.start"))


def test_pod_deletion_mid_step_gives_a_cancellation_span(harness: Harness, http_receiver: HttpReceiver) -> None:
    trace_id, parent_id, annotations = tekton_parent()
    running = harness.start(
        patch(
            task(
                "cancel-me",
                {"name": "long", "image": "busybox", "command": ["sleep", "60"]},
                {"name": "next", "image": "busybox", "command": ["true"]},
            )
        ),
        TaskRun(annotations=annotations),
    )
    wait_until(lambda: spool_has_start(running.pod.root), 30, "the step's start record")
    running.delete(grace=30)
    result = running.wait(60)
    assert result.deleted
    (span,) = http_receiver.spans
    assert (span.name, span.trace_id, span.parent_span_id) == ("long", trace_id, parent_id)
    assert span.attributes[RESULT] == "cancellation"


def test_wrapper_killed_mid_step_gives_a_recovered_span(harness: Harness, http_receiver: HttpReceiver) -> None:
    trace_id, parent_id, annotations = tekton_parent()
    running = harness.start(
        patch(
            task(
                "kill-me",
                {"name": "long", "image": "busybox", "command": ["sleep", "60"]},
                {"name": "next", "image": "busybox", "command": ["true"]},
            )
        ),
        TaskRun(annotations=annotations),
    )
    wait_until(lambda: spool_has_start(running.pod.root), 30, "the step's start record")
    running.kill_child(0)  # the entrypoint's child is the wrapper
    result = running.wait(60)
    assert [(s.reason, s.container_exit, s.started) for s in result.steps] == [
        ("Error", 255, True),
        ("Skipped", 1, False),
    ]
    (span,) = http_receiver.spans
    assert (span.name, span.trace_id, span.parent_span_id) == ("long", trace_id, parent_id)
    assert (span.attributes[RESULT], span.attributes["error.type"]) == ("error", "step_end_not_observed")
    assert span.end_ns >= span.start_ns > 0


# -- many TaskRuns, a collector that restarts ----------------------------------------------------------------------


class _Link:
    """One proxied connection; `busy` from the first byte of a request until its answer went back."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.lock = threading.Lock()
        self.busy = False
        self.closing = False

    def close(self) -> None:
        for conn in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class RestartingCollector:
    """A TCP front for the receiver on a fixed port that goes down and comes back on the same address, as a
    collector Deployment does when it restarts.

    Going down is a graceful server shutdown (Go's http.Server.Shutdown, what the collector runs on SIGTERM):
    no new connections, in-flight exports still get their answer, idle keep-alive connections are closed. Cutting
    a request the collector already accepted would make any OTLP client send it again (OTLP is at-least-once),
    which is not what a restart does to a client.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._links: list[_Link] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self, drain: float = 10.0) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            links, self._links = self._links, []
        deadline = time.monotonic() + drain
        for link in links:
            while True:
                with link.lock:
                    if not link.busy or time.monotonic() > deadline:
                        link.closing = True
                        break
                time.sleep(0.005)
            link.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._requests, args=(link,), daemon=True).start()
            threading.Thread(target=self._answers, args=(link,), daemon=True).start()

    def _requests(self, link: _Link) -> None:
        try:
            while data := link.client.recv(65536):
                with link.lock:
                    if link.closing:
                        break
                    link.busy = True
                    link.upstream.sendall(data)
        except OSError:
            pass
        link.close()

    def _answers(self, link: _Link) -> None:
        try:
            while data := link.upstream.recv(65536):
                link.client.sendall(data)
                with link.lock:
                    link.busy = False
        except OSError:
            pass
        link.close()


@pytest.fixture
def collector(http_receiver: HttpReceiver) -> Iterator[RestartingCollector]:
    front = RestartingCollector(http_receiver.port)
    front.start()
    yield front
    front.stop()


@pytest.mark.timeout(900)
def test_200_taskruns_with_two_collector_restarts_lose_and_duplicate_nothing(
    tmp_path: Path, http_receiver: HttpReceiver, collector: RestartingCollector
) -> None:
    """Slow (1.5 to 2.5 minutes on 2 cores): 200 standalone TaskRuns, two at a time, the collector down for a second
    twice; every TaskRun gives its step span and its TaskRun span, exactly once."""
    harness = Harness(tmp_path, images=IMAGES, secrets={"step-tracer-otlp": otlp_env(collector.endpoint)})
    patched = patch(task("quick", {"name": "only", "image": "busybox", "command": ["true"]}))
    runs = [TaskRun(name=f"quick-{i}") for i in range(200)]
    outages = {60, 130}
    down = threading.Event()

    def one(taskrun: TaskRun) -> TaskRunResult:
        return harness.run(patched, taskrun, timeout=120)

    results: dict[str, TaskRunResult] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {pool.submit(one, run): run.name for run in runs}
        for done, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            assert results[futures[future]].succeeded
            if done in outages:
                collector.stop()
                down.set()
                threading.Timer(1.0, collector.start).start()
    assert down.is_set()
    try:
        spans = http_receiver.wait_for_spans(400, timeout=30)
    except AssertionError as failure:
        # Say what the sidecars of the TaskRuns without spans said: the receiver alone cannot tell why.
        traces = {s.trace_id for s in http_receiver.spans}
        silent = [r.name for r in runs if derived_ids(r.uid)[0] not in traces]
        logs = {name: [c.stderr.decode(errors="replace") for c in results[name].sidecars] for name in silent}
        raise AssertionError(f"no spans from {silent}; their sidecars said: {logs}") from failure
    keys = Counter((s.trace_id, s.span_id) for s in spans)
    assert len(spans) == len(keys) == 400, [k for k, n in keys.items() if n > 1][:5]
    per_trace = Counter(s.trace_id for s in spans)
    assert per_trace == {derived_ids(r.uid)[0]: 2 for r in runs}


# -- patched vs original -------------------------------------------------------------------------------------------

_GO_LOG_TIME = re.compile(rb"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", re.M)

COMPARED = [
    task(
        "scripts",
        {
            "name": "sh",
            "image": "busybox",
            "script": 'echo "args: $*"\necho to-stderr >&2\nprintf %s "$(params.msg)" > $(results.msg.path)',
            "args": ["one", "two three"],
        },
        {
            "name": "py",
            "image": "python",
            "script": "#!/usr/bin/env python3\nimport sys\nprint(sys.argv[1:])\nsys.stderr.write('err\\n')\n"
            "open('$(step.results.py.path)', 'w').write('from python')\n",
            "args": ["a", "$(params.list[*])"],
            "results": [{"name": "py"}],
        },
        {
            "name": "bash",
            "image": "busybox",
            "script": '#!/bin/bash\narr=("$@")\necho "${#arr[@]} ${arr[1]}"\nexit 6',
            "args": ["a", "b c"],
        },
        {"name": "never", "image": "busybox", "script": "echo never"},
        params=[{"name": "msg", "default": "hello"}, {"name": "list", "type": "array", "default": ["x", "y z"]}],
        results=[{"name": "msg"}],
    ),
    task(
        "commands",
        {"name": "printf", "image": "busybox", "command": ["printf", "%s|"], "args": ["$(params.list[*])", "end"]},
        {
            "name": "cwd",
            "image": "busybox",
            "workingDir": "$(workspaces.w.path)/sub",
            "command": ["sh", "-c", 'basename "$PWD"; cat; exit 4'],
            "onError": "continue",
        },
        {"name": "after", "image": "busybox", "command": ["sh", "-c", "echo after-continue; echo warn >&2"]},
        {"name": "fails", "image": "busybox", "command": ["sh", "-c", "exit 9"]},
        {"name": "never", "image": "busybox", "command": ["echo", "never"]},
        params=[{"name": "list", "type": "array", "default": ["p", "q r"]}],
        workspaces=[{"name": "w"}],
    ),
    task(
        "args",
        {"name": "hello", "image": "tool", "args": ["hello", "world"]},
        {"name": "fail", "image": "tool", "args": ["fail"], "onError": "continue"},
        {"name": "param", "image": "tool", "args": ["$(params.x)", "$(context.taskRun.name)"]},
        {"name": "last-fails", "image": "tool", "args": ["fail"]},
        {"name": "never", "image": "tool", "args": ["never"]},
        params=[{"name": "x", "default": "ex"}],
    ),
]


def outcome(result: TaskRunResult) -> tuple[list[tuple[Any, ...]], dict[str, str]]:
    steps = [
        (
            s.name,
            s.reason,
            s.exit_code,
            s.container_exit,
            s.started,
            s.stdout,
            _GO_LOG_TIME.sub(b"", s.stderr),
            s.results,
        )
        for s in result.steps
    ]
    return steps, result.results


@pytest.mark.parametrize("original", COMPARED, ids=[t["metadata"]["name"] for t in COMPARED])
def test_patched_task_behaves_like_the_original(harness: Harness, original: dict[str, Any]) -> None:
    run = TaskRun(name="same", uid=str(uuid.uuid4()), workspaces=["w"] if original["spec"].get("workspaces") else [])
    before = harness.run(original, run)
    after = harness.run(patch(original), run)
    assert outcome(after) == outcome(before)
    assert [s.reason for s in before.steps].count("Skipped") == 1  # the comparison covers a skipped step too


def test_patched_step_sees_the_original_environment(harness: Harness) -> None:
    """Only TRACEPARENT (and TRACESTATE) may be added; STEP_TRACER_SPOOL/PODINFO are the harness's path overrides."""
    original = task(
        "env",
        {"name": "command", "image": "busybox", "command": ["env"], "env": [{"name": "A", "value": "1"}]},
        {"name": "script", "image": "busybox", "script": "exec env", "env": [{"name": "B", "value": "2"}]},
    )
    run = TaskRun(name="env")

    def environments(result: TaskRunResult) -> list[list[str]]:
        # PWD: sh exports its working directory, which is a per-pod scratch directory here.
        drop = ("TRACEPARENT=", "TRACESTATE=", "STEP_TRACER_SPOOL=", "STEP_TRACER_PODINFO=", "PWD=")
        return [
            sorted(line for line in s.stdout.decode().splitlines() if not line.startswith(drop)) for s in result.steps
        ]

    before = harness.run(original, run)
    after = harness.run(patch(original), run)
    assert environments(before)[0] == ["A=1", f"PATH={DEFAULT_PATH}"]
    assert environments(after) == environments(before)
    assert all(b"TRACEPARENT=00-" in s.stdout for s in after.steps)


def test_step_timeout_keeps_tektons_outcome(harness: Harness) -> None:
    """Tekton: a step past its timeout ends TimeoutExceeded, exit 1, and skips the rest even under onError: continue
    (entrypointer.go checks the deadline before onError)."""
    original = task(
        "timeout",
        {"name": "slow", "image": "busybox", "timeout": "2s", "onError": "continue", "command": ["sleep", "30"]},
        {"name": "after", "image": "busybox", "command": ["echo", "after"]},
    )
    run = TaskRun(name="timeout")
    before = harness.run(original, run)
    assert [(s.reason, s.exit_code) for s in before.steps] == [("TimeoutExceeded", 1), ("Skipped", 1)]
    after = harness.run(patch(original), run)
    assert [(s.reason, s.exit_code, s.stdout) for s in after.steps] == [
        (s.reason, s.exit_code, s.stdout) for s in before.steps
    ]


def test_image_entrypoint_with_dollar_signs_survives_patching(tmp_path: Path, http_receiver: HttpReceiver) -> None:
    """Tekton hands a looked-up ENTRYPOINT to its entrypoint in the TEKTON_PLATFORM_COMMANDS env value, the patched
    step has it in `command`: the kubelet expands `$$` and `$(NAME)` in both, so both runs must print the same."""
    images = {**IMAGES, "dollar": Image(entrypoint=("/bin/echo", "$$", "$(A)"))}
    harness = Harness(tmp_path, images=images, secrets={"step-tracer-otlp": otlp_env(http_receiver.endpoint)})
    original = task(
        "dollar", {"name": "echo", "image": "dollar", "args": ["x"], "env": [{"name": "A", "value": "expanded"}]}
    )
    options = InjectOptions(
        wrapper=WRAPPER, sidecar_image="local", resolve_entrypoints=True, resolve=lambda i: list(images[i].entrypoint)
    )
    patched = json.loads(patch_text(json.dumps(original), options, source="dollar.json").text)
    run = TaskRun(name="dollar")
    before = harness.run(original, run)
    assert before.steps[0].stdout == b"$ expanded x\n"
    assert harness.run(patched, run).steps[0].stdout == before.steps[0].stdout

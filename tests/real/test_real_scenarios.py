"""TaskRun scenarios on Tekton's own code (its reconciler builds the pods, its entrypoint runs the steps, the process
kubelet runs the pods): a five-step TaskRun in a PipelineRun, a standalone TaskRun, a pod deleted or a wrapper
SIGKILLed mid-step, many TaskRuns through a collector that restarts. Attribute names and ids are the runtime
contract's (README "The span", "In a Tekton pod"), computed here independently of step-tracer's code."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import platform
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pytest

from step_tracer.webhook.mutate import WebhookOptions
from tests.otlp_receiver import ReceivedSpan
from tests.real.collector import RestartingCollector
from tests.real.conftest import TASKS
from tests.real.e2e import PATHS, RESULT_ATTR, Rig, Run, compare, inject
from tests.real.podrunner import PodRunner
from tests.registry import RegistryServer

SCENARIOS = TASKS / "scenarios.yaml"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PIPELINE_RUN_UID = "5d0c8a34-6b7e-4f0f-9a51-0e6c7b9f1a2d"
PIPELINE = {
    "tekton.dev/pipeline": "release",
    "tekton.dev/pipelineRun": "release-run-7",
    "tekton.dev/pipelineRunUID": PIPELINE_RUN_UID,
    "tekton.dev/pipelineTask": "five-task",
}

pytestmark = pytest.mark.root


def derived_ids(taskrun_uid: str) -> tuple[str, str]:
    """The contract's ids without a span context: trace id = the UID's hex digits, TaskRun span id =
    sha256("step-tracer/taskrun/" + uid)[:16]."""
    span_id = hashlib.sha256(b"step-tracer/taskrun/" + taskrun_uid.encode()).hexdigest()[:16]
    return taskrun_uid.replace("-", "").lower(), span_id


def step_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return sorted(
        (s for s in spans if "tekton.step.name" in s.attributes),
        key=lambda s: int(str(s.attributes["tekton.step.index"])),
    )


def assert_like_unpatched(task: str, base: Run, traced: Run, rig: Rig) -> None:
    problems = [r.line() for r in compare(task, base, traced, rig.spans_of(traced)) if r.problems]
    assert not problems, "\n".join(problems)


def _comparable(span: ReceivedSpan) -> tuple[Any, ...]:
    """A span minus what differs between any two TaskRuns: times, pids, usage, ids, names of the run and its pod."""
    volatile = (
        "process.pid",
        "process.parent_pid",
        "process.cpu.",
        "process.memory.",
        "process.disk.",
        "container.",
        "tekton.step.measured_until",
        "tekton.taskrun.name",
        "cicd.pipeline.task.run.id",
    )
    attributes = {k: v for k, v in span.attributes.items() if not k.startswith(volatile)}
    script = re.fullmatch(r"/tekton/scripts/(script-\d+)-[a-z0-9]{5}", str(attributes.get("process.command")))
    if script:
        # The file name is random per pod. A patched Task's script has the wrapper as its interpreter
        # (`run-script`), which names the script's own interpreter as the executable; the webhook's
        # `run -- /tekton/scripts/...` names the script file (deploy/webhook/README.md).
        attributes["process.command"] = f"/tekton/scripts/{script.group(1)}-*"
        for key in ("process.executable.name", "process.executable.path"):
            attributes.pop(key, None)
    resource = {k: v for k, v in span.resource.items() if k not in ("k8s.pod.name", "k8s.pod.uid")}
    return (span.name, span.kind, span.status_code, sorted(attributes.items()), sorted(resource.items()))


def test_five_steps_in_a_pipelinerun_give_one_span_each_under_the_taskrun_span(rig: Rig) -> None:
    """Every kind of step, the same on both paths: what the unpatched run did, and spans equal but for ids."""
    base = rig.run([SCENARIOS], "five", "unpatched", labels=PIPELINE)
    assert [(s["name"], s.get("terminationReason"), s["terminated"]["exitCode"]) for s in base.steps()] == [
        ("build", "Completed", 0), ("lint", "Continued", 3), ("report", "Completed", 0),
        ("package", "Completed", 0), ("publish", "TimeoutExceeded", 1), ("after-publish", "Skipped", 1),
    ]  # fmt: skip
    assert base.logs("step-report")[0] == "report --fast\n"
    assert base.logs("step-package")[0] == "package 1.0\n"
    names = ["build", "lint", "report", "package", "publish"]
    images = ["busybox", "busybox", "registry.example/python:3", "busybox", "busybox"]
    comparable = {}
    for path in PATHS:
        run = rig.run([SCENARIOS], "five", path, labels=PIPELINE)
        assert_like_unpatched("five", base, run, rig)
        spans = rig.spans_of(run)
        steps = step_spans(spans)
        assert len(spans) == len(steps) == 5, [s.name for s in spans]  # Tekton owns the TaskRun span here
        assert [s.name for s in steps] == names
        _, trace_id, parent_id, _ = run.traceparent.split("-")
        assert {(s.trace_id, s.parent_span_id) for s in steps} == {(trace_id, parent_id)}
        assert [s.attributes[RESULT_ATTR] for s in steps] == ["success", "failure", "success", "success", "timeout"]
        assert [s.attributes["process.exit.code"] for s in steps[:4]] == [0, 3, 0, 0]
        for index, (span, image) in enumerate(zip(steps, images, strict=True)):
            got = {k: v for k, v in span.attributes.items() if k.startswith(("cicd.pipeline.", "tekton."))}
            got.pop(RESULT_ATTR)
            got.pop("tekton.trace.parent_source", None)  # the wrapper's own diagnostics, not in the contract
            # The timed-out step's measurements, saved by the wrapper just before Tekton's SIGKILL.
            measured = got.pop("tekton.step.measured_until", None)
            assert (measured is not None) == (span.name == "publish")
            assert got == {
                "cicd.pipeline.name": "release",
                "cicd.pipeline.run.id": PIPELINE_RUN_UID,
                "cicd.pipeline.task.name": "five-task",
                "cicd.pipeline.task.run.id": run.uid,
                "tekton.pipelinerun.name": "release-run-7",
                "tekton.taskrun.name": run.pod["metadata"]["labels"]["tekton.dev/taskRun"],
                "tekton.task.name": "five",
                "tekton.pipeline.task.name": "five-task",
                "tekton.step.name": span.name,
                "tekton.step.index": index,
                "tekton.step.image": image,
                **({"tekton.step.on_error": "continue"} if span.name in ("lint", "publish") else {}),
                **({"tekton.step.timeout": 2.0} if span.name == "publish" else {}),
            }, span.name
            meta = run.pod["metadata"]
            assert span.resource["k8s.namespace.name"] == meta["namespace"]
            assert span.resource["k8s.pod.name"] == meta["name"]
            assert span.resource["k8s.container.name"] == f"step-{span.name}"
            assert span.resource["k8s.node.name"] == "step-tracer-node"
            assert span.start_ns <= span.end_ns
        assert all(a.end_ns <= b.start_ns for a, b in itertools.pairwise(steps))
        peak = steps[4].attributes["process.memory.peak"]  # measured although Tekton SIGKILLed the wrapper
        assert isinstance(peak, int) and peak > 0
        comparable[path] = sorted(map(_comparable, steps), key=repr)
    assert comparable["inject"] == comparable["webhook"]


def test_a_standalone_taskrun_is_one_trace_with_a_derived_taskrun_span(rig: Rig) -> None:
    """No `tekton.dev/taskrunSpanContext` (a TaskRun no PipelineRun made): ids derived from the TaskRun's UID, and
    the sidecar emits the TaskRun span."""
    for path in PATHS:
        run = rig.run([SCENARIOS], "two-quick-steps", path, span_context=False)
        trace_id, taskrun_span_id = derived_ids(run.uid)
        spans = rig.spans_of(run)
        steps = step_spans(spans)
        (root,) = [s for s in spans if s not in steps]
        assert [s.name for s in steps] == ["a", "b"]
        assert {s.trace_id for s in spans} == {trace_id}
        assert (root.span_id, root.parent_span_id) == (taskrun_span_id, "")
        assert {s.parent_span_id for s in steps} == {taskrun_span_id}
        assert root.attributes["tekton.taskrun.name"] == run.pod["metadata"]["labels"]["tekton.dev/taskRun"]
        assert root.attributes["cicd.pipeline.task.run.id"] == run.uid
        assert root.attributes[RESULT_ATTR] == "success"
        assert root.start_ns <= steps[0].start_ns and steps[-1].end_ns <= root.end_ns


# -- a TaskRun cut short ----------------------------------------------------------------------------------------------


def when_step_started(action: Callable[[PodRunner], None], timeout: float = 60) -> Callable[[PodRunner], None]:
    """`action(runner)` once the first step's wrapper has written its start record to the spool."""

    def during(runner: PodRunner) -> None:
        spool = runner.workdir / "volumes" / "step-tracer-spool"
        deadline = time.monotonic() + timeout
        while not any(spool.glob("*.start")):
            if time.monotonic() > deadline or runner.phase in ("Succeeded", "Failed"):
                return
            time.sleep(0.05)
        action(runner)

    return during


@pytest.mark.parametrize("path", PATHS)
def test_a_pod_deleted_mid_step_gives_a_cancellation_span(rig: Rig, path: str) -> None:
    run = rig.run([SCENARIOS], "one-long-step", path, grace_seconds=30, during=when_step_started(PodRunner.delete))
    (span,) = rig.spans_of(run)
    _, trace_id, parent_id, _ = run.traceparent.split("-")
    assert (span.name, span.trace_id, span.parent_span_id) == ("long", trace_id, parent_id)
    assert span.attributes[RESULT_ATTR] == "cancellation"
    assert run.runner.status("step-long").exit_code != 0


def kill_wrapper(runner: PodRunner) -> None:
    """SIGKILL the first step's wrapper: the child of Tekton's entrypoint, PID 1 of the step's container."""
    (step,) = [c for c in runner.containers if c.name == "step-long"]
    assert step.pid is not None
    # Go starts the child from any of its threads, and each thread lists its own children.
    children = [
        pid for task in Path(f"/proc/{step.pid}/task").iterdir() for pid in (task / "children").read_text().split()
    ]
    assert len(children) == 1, children
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(children[0]), signal.SIGKILL)


@pytest.mark.parametrize("path", PATHS)
def test_a_wrapper_killed_mid_step_gives_a_recovered_span(rig: Rig, path: str) -> None:
    run = rig.run([SCENARIOS], "one-long-step", path, during=when_step_started(kill_wrapper))
    assert [(s["name"], s.get("terminationReason")) for s in run.steps()] == [("long", "Error"), ("next", "Skipped")]
    (span,) = rig.spans_of(run)
    _, trace_id, parent_id, _ = run.traceparent.split("-")
    assert (span.name, span.trace_id, span.parent_span_id) == ("long", trace_id, parent_id)
    assert (span.attributes[RESULT_ATTR], span.attributes["error.type"]) == ("error", "step_end_not_observed")
    assert span.end_ns >= span.start_ns > 0


# -- traced and not: the same steps -------------------------------------------------------------------------------


def test_scripts_args_and_workspaces_match_the_unpatched_run(rig: Rig) -> None:
    """Script interpreters, positional args, array params, step results, a working directory in a workspace,
    stdin, onError: continue, a failing step and the one it skips: the same as the unpatched run."""
    base = rig.run([SCENARIOS], "scripts", "unpatched", workspaces={"w": "emptyDir"})
    assert [s.get("terminationReason") for s in base.steps()][-2:] == ["Error", "Skipped"]
    assert base.logs("step-printf")[0] == "x|y z|end|"
    for path in PATHS:
        assert_like_unpatched("scripts", base, rig.run([SCENARIOS], "scripts", path, workspaces={"w": "emptyDir"}), rig)


def test_a_traced_step_sees_the_environment_it_had_untraced(rig: Rig) -> None:
    """Only TRACEPARENT (and TRACESTATE) may be added to what a step's command sees."""

    def environments(run: Run) -> list[list[str]]:
        # HOSTNAME: the pod's name, which differs per TaskRun.
        drop = ("TRACEPARENT=", "TRACESTATE=", "HOSTNAME=")
        return [
            sorted(line for line in run.logs(f"step-{s}")[0].splitlines() if not line.startswith(drop))
            for s in ("command", "script")
        ]

    base = rig.run([SCENARIOS], "environment", "unpatched")
    assert "A=1" in environments(base)[0] and "B=2" in environments(base)[1]
    for path in PATHS:
        run = rig.run([SCENARIOS], "environment", path)
        assert environments(run) == environments(base), path
        assert all("TRACEPARENT=00-" in run.logs(f"step-{s}")[0] for s in ("command", "script"))


def test_a_pod_tekton_starts_at_once_waits_for_the_container_sidecar(rig: Rig) -> None:
    """The webhook with a classic (container) sidecar on a pod with no sidecars, which Tekton marks ready at
    creation: the first step must wait until our sidecar is ready, or its span could be lost."""
    run = rig.run([SCENARIOS], "two-quick-steps", "webhook", webhook=WebhookOptions(native_sidecar=False))
    assert [c["name"] for c in run.pod["spec"]["containers"]][-1] == "sidecar-step-tracer"
    assert [(s["name"], s.get("terminationReason")) for s in run.steps()] == [("a", "Completed"), ("b", "Completed")]
    spans = step_spans(rig.spans_of(run))
    assert [s.name for s in spans] == ["a", "b"]
    ready = (run.runner.workdir / "volumes" / "step-tracer-spool" / ".ready").stat().st_mtime_ns
    assert ready <= min(s.start_ns for s in spans)


def test_an_image_entrypoint_with_dollar_signs_runs_as_it_did_untraced(rig: Rig, tmp_path: Path) -> None:
    """Tekton hands a looked-up ENTRYPOINT to its entrypoint in the TEKTON_PLATFORM_COMMANDS env value, a patched
    step has it in `command`, where the kubelet expands `$$` and `$(NAME)`: the step must print what it printed."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    with RegistryServer(tmp_path / "registry") as registry:
        raw = registry.raw()
        config = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        config["config"] = {"Entrypoint": ["/bin/echo", "$$", "$(A)"]}
        blob = json.dumps(config).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": raw.put_blob("dollar", blob),
                       "size": len(blob)},
            "layers": [],
        }  # fmt: skip
        raw.put_manifest("dollar", "1", json.dumps(manifest).encode(), OCI_MANIFEST)
        step = {
            "name": "echo",
            "image": f"{registry.host}/dollar:1",
            "args": ["x"],
            "env": [{"name": "A", "value": "expanded"}],
        }
        task = {
            "apiVersion": "tekton.dev/v1",
            "kind": "Task",
            "metadata": {"name": "dollar"},
            "spec": {"steps": [step]},
        }
        (files := [tmp_path / "dollar.yaml"])[0].write_text(json.dumps(task))
        base = rig.run(files, "dollar", "unpatched")
        assert base.logs("step-echo")[0] == "$ expanded x\n"
        for path in PATHS:
            run = rig.run(files, "dollar", path, inject_args=["--resolve-entrypoints"])
            assert_like_unpatched("dollar", base, run, rig)


# -- many TaskRuns, a collector that restarts ----------------------------------------------------------------------


@pytest.fixture
def collector(rig: Rig) -> Iterator[RestartingCollector]:
    front = RestartingCollector(rig.receiver.port)
    front.start()
    yield front
    front.stop()


#: TaskRuns, at once, collector outages (after how many TaskRuns ended): sized to keep tests/real short.
RUNS, AT_ONCE, OUTAGES = 16, 4, (5, 11)


def test_taskruns_through_two_collector_restarts_lose_and_duplicate_nothing(
    rig: Rig, collector: RestartingCollector, tmp_path: Path
) -> None:
    """Standalone TaskRuns, several pods at once, the collector down for a second twice: every TaskRun gives
    its step span and its TaskRun span, exactly once."""
    patched = inject([SCENARIOS], tmp_path / "patched")  # once: every run is the same patched Task
    otlp = {**rig.otlp_env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint}

    def one(i: int) -> Run:
        return rig.run(patched, "two-quick-steps", "patched", span_context=False, otlp_env=otlp, timeout=120)

    runs: list[Run] = []
    with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        futures = [pool.submit(one, i) for i in range(RUNS)]
        for done, future in enumerate(as_completed(futures), 1):
            run = future.result()
            assert run.runner.phase == "Succeeded", run.steps()
            runs.append(run)
            if done in OUTAGES:
                collector.stop()
                time.sleep(1.0)
                collector.start()
    expected = {derived_ids(r.uid)[0]: r for r in runs}
    deadline = time.monotonic() + 30
    while True:
        spans = [s for s in rig.receiver.spans if s.trace_id in expected]
        if len({s.span_id for s in spans}) >= 3 * RUNS or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    per_trace = Counter(s.trace_id for s in spans)
    silent = {r.pod["metadata"]["name"]: r.runner.status("step-tracer").stderr for t, r in expected.items()
              if per_trace[t] != 3}  # fmt: skip
    assert not silent, f"TaskRuns without their 3 spans; their sidecars said: {silent}"
    keys = Counter((s.trace_id, s.span_id) for s in spans)
    assert len(spans) == len(keys) == 3 * RUNS, [k for k, n in keys.items() if n > 1][:5]

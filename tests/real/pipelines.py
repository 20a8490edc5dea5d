"""PipelineRuns on Tekton's own controller code (hack/tekton's `tekton-controller`), their pods run by the
process kubelet, Tekton's tracing on: Tekton emits the PipelineRun and TaskRun spans and writes the span
contexts the steps parent on, as on a cluster.

The controller prints each pod its TaskRun reconciler creates; the pod runs in a thread (mutated by our webhook
first on the `webhook` path, as the API server would at its creation; on the `inject` path the Pipeline and
Tasks were patched by `step-tracer inject` before), and its status goes back to the controller, which reconciles
until the PipelineRun is done.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.real.e2e import OTLP_SECRET, RESULT_ATTR, Rig, admit, exit_code_agrees, expected_result, inject
from tests.real.images import tekton_bin_dir
from tests.real.otel import Jaeger
from tests.real.otel import Span as JaegerSpan
from tests.real.podrunner import PodRunner


@dataclass
class PipelineRunResult:
    path: str
    pipelinerun: dict[str, Any]
    taskruns: list[dict[str, Any]]
    runners: dict[str, PodRunner] = field(default_factory=dict)

    @property
    def succeeded(self) -> str:
        for cond in self.pipelinerun.get("status", {}).get("conditions") or []:
            if cond.get("type") == "Succeeded":
                return str(cond.get("status"))
        return "Unknown"

    def taskrun(self, pipeline_task: str) -> dict[str, Any]:
        for tr in self.taskruns:
            if tr["metadata"].get("labels", {}).get("tekton.dev/pipelineTask") == pipeline_task:
                return tr
        raise KeyError(pipeline_task)


SPAN_CONTEXT = "tekton.dev/taskrunSpanContext"
PIPELINERUN_RECONCILER = "pipelinerun-reconciler"


def step_outcomes(run: PipelineRunResult) -> dict[tuple[str, str], tuple[int | None, str | None]]:
    """(pipeline task, step) -> (exit code, termination reason), as Tekton recorded them."""
    out = {}
    for tr in run.taskruns:
        task = tr["metadata"]["labels"]["tekton.dev/pipelineTask"]
        for s in tr["status"].get("steps") or []:
            out[(task, s["name"])] = ((s.get("terminated") or {}).get("exitCode"), s.get("terminationReason"))
    return out


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


def check_traces(run: PipelineRunResult, jaeger: Jaeger, *, single: bool = True) -> set[str]:
    """The PipelineRun's traces in Jaeger (returned): in each, Tekton's PipelineRun span the only root, Tekton's
    TaskRun spans and exactly one span per executed step under the span Tekton created each TaskRun in, nothing
    orphaned, each step span saying the result and exit code Tekton recorded.

    `single`: the whole PipelineRun is one trace. Tekton's real controller does not promise that: a reconcile
    that reads the PipelineRun from a stale informer cache starts a second root span, and its status write, on
    conflict, replaces the stored span context (see test_cluster_tekton.py); TaskRuns created before that keep
    the first trace. Each trace must still be whole."""
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for tr in run.taskruns:
        by_trace.setdefault(tr["metadata"]["annotations"][SPAN_CONTEXT].split("-")[1], []).append(tr)
    if single:
        assert len(by_trace) == 1, "every TaskRun of the PipelineRun in one trace"
    outcomes = step_outcomes(run)
    for trace, taskruns in by_trace.items():
        tasks = {tr["metadata"]["labels"]["tekton.dev/pipelineTask"] for tr in taskruns}
        executed = {key: value for key, value in outcomes.items() if key[0] in tasks and value[1] != "Skipped"}
        _check_trace(run, jaeger, trace, taskruns, executed)
    return set(by_trace)


def _check_trace(
    run: PipelineRunResult,
    jaeger: Jaeger,
    trace: str,
    taskruns: list[dict[str, Any]],
    executed: dict[tuple[str, str], tuple[int | None, str | None]],
) -> None:
    spans = _trace_in_jaeger(jaeger, trace, len(executed))
    by_id: dict[str, JaegerSpan] = {s.span_id: s for s in spans}
    tekton = [s for s in spans if s.resource.get("service.name") in ("pipelinerun-reconciler", "taskrun-reconciler")]
    steps = [s for s in spans if "tekton.step.name" in s.attributes]
    assert tekton and len(spans) == len(tekton) + len(steps), "only Tekton's spans and step spans"

    # One root, Tekton's PipelineRun span; nothing orphaned.
    roots = [s for s in spans if not s.parent_span_id]
    assert [(r.resource["service.name"], r.name) for r in roots] == [(PIPELINERUN_RECONCILER, "PipelineRun:Reconciler")]
    assert roots[0].attributes.get("pipelinerun") == run.pipelinerun["metadata"]["name"]
    assert all(s.parent_span_id in by_id for s in spans if s.parent_span_id), "a span whose parent is not in the trace"
    # Tekton's TaskRun spans sit under the span its PipelineRun reconciler created each TaskRun in, as the steps do.
    for tr in taskruns:
        parent = tr["metadata"]["annotations"][SPAN_CONTEXT].split("-")[2]
        children = {s.name for s in spans if s.parent_span_id == parent}
        assert "TaskRun:ReconcileKind" in children, (tr["metadata"]["name"], children)

    # Exactly one span per executed step, none duplicated, each under the span Tekton created its TaskRun in.
    assert len({(s.trace_id, s.span_id) for s in steps}) == len(steps)
    seen = Counter((s.attributes["cicd.pipeline.task.name"], s.attributes["tekton.step.name"]) for s in steps)
    assert seen == Counter(executed.keys())
    contexts = {tr["metadata"]["labels"]["tekton.dev/pipelineTask"]: tr for tr in taskruns}
    for s in steps:
        tr = contexts[str(s.attributes["cicd.pipeline.task.name"])]
        parent = tr["metadata"]["annotations"][SPAN_CONTEXT].split("-")[2]
        assert s.parent_span_id == parent
        assert (by_id[parent].resource["service.name"], by_id[parent].name) == (PIPELINERUN_RECONCILER, "createTaskRun")
        state = next(x for x in tr["status"]["steps"] if x["name"] == s.attributes["tekton.step.name"])
        assert s.attributes[RESULT_ATTR] == expected_result(state)
        assert exit_code_agrees(s.attributes.get("process.exit.code"), state), (s.attributes, state)
        assert s.attributes["cicd.pipeline.name"] == tr["metadata"]["labels"]["tekton.dev/pipeline"]
        assert s.resource["k8s.pod.name"] == tr["status"]["podName"]


class ControllerError(Exception):
    pass


def run_pipeline(
    rig: Rig,
    files: Sequence[Path],
    path: str,
    *,
    name: str,
    pipeline: str | None = None,
    tracing_endpoint: str,
    params: Mapping[str, str] | None = None,
    workspaces: Mapping[str, str] | None = None,
    claims: Mapping[str, Path] | None = None,
    timeout: float = 600.0,
    grace_seconds: float = 5.0,
) -> PipelineRunResult:
    """Run a PipelineRun of `pipeline` from `files` on `path` (`unpatched`, `inject` or `webhook`)."""
    scratch = rig.workdir / f"pipelinerun-{name}"
    scratch.mkdir(parents=True)
    if path == "inject":
        files = inject(files, scratch / "patched")
    args = [str(tekton_bin_dir() / "tekton-controller"), "-name", name, "-tracing-endpoint", tracing_endpoint]
    if pipeline:
        args += ["-pipeline", pipeline]
    for key, value in (params or {}).items():
        args += ["-param", f"{key}={value}"]
    for key, value in (workspaces or {}).items():
        args += ["-workspace", f"{key}={value}"]
    proc = subprocess.Popen(
        [*args, *map(str, files)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(scratch / "controller.log", "wb"),  # noqa: SIM115 - the process owns it
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    result = PipelineRunResult(path, {}, [])
    claim_dirs = Rig._claims(claims, scratch)
    lock = threading.Lock()
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def kubelet(pod: dict[str, Any], stdin: IO[str]) -> None:
        try:
            if path == "webhook":
                pod = admit(pod, scratch)
            runner = PodRunner(
                pod,
                rig.images,
                scratch / pod["metadata"]["name"],
                default_image=rig.default,
                secrets={OTLP_SECRET: rig.otlp_env},
                grace_seconds=grace_seconds,
                claims=claim_dirs,
            )
            result.runners[pod["metadata"]["labels"].get("tekton.dev/pipelineTask", "")] = runner
            runner.run(timeout)
            with lock:
                stdin.write(json.dumps({"pod": runner.pod_with_status()}) + "\n")
                stdin.flush()
        except BaseException as err:  # reported after the controller ends
            errors.append(err)
            with lock:
                stdin.close()

    try:
        for line in proc.stdout:
            message = json.loads(line)
            if "pod" in message:
                t = threading.Thread(target=kubelet, args=(message["pod"], proc.stdin), daemon=True)
                t.start()
                threads.append(t)
            elif "done" in message:
                result.pipelinerun = message["done"]["pipelineRun"]
                result.taskruns = message["done"]["taskRuns"]
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        for t in threads:
            t.join(timeout=timeout)
    if errors:
        raise errors[0]
    if code != 0 or not result.pipelinerun:
        log = (scratch / "controller.log").read_text(errors="replace").strip().splitlines()
        raise ControllerError(f"tekton-controller exited {code}: {log[-1] if log else ''}")
    return result

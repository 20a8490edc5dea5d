"""Traced TaskRuns on Tekton's own code, against an unpatched baseline (`hack/e2e-real` and tests/real/).

Each Task runs as a TaskRun three ways, each a Pod made by Tekton's TaskRun reconciler and run by the process
kubelet (`podrunner.py`) through Tekton's real entrypoint:
- `unpatched`: the Task as it is;
- `inject` (code-based): the Task after `step-tracer inject`;
- `webhook` (zero-code): the unpatched Task's Pod, sent to our admission webhook in an AdmissionReview, its
  JSONPatch applied as kube-apiserver applies it (hack/tekton's `jsonpatch`).
Tekton's reconciler then reads each run pod's status back (step exit codes, termination reasons, results).
A traced path must give every step what the unpatched run gave it (exit code, termination reason, results,
stdout and stderr, the files it left in the pod's volumes) and exactly one span per executed step, parented on
the TaskRun's `tekton.dev/taskrunSpanContext`, delivered by the sidecar to a real OTLP receiver.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from step_tracer.webhook.mutate import WebhookOptions
from tests.otlp_receiver import HttpReceiver, ReceivedSpan
from tests.real.images import make_images, tekton_bin_dir
from tests.real.otel import Collector, Jaeger
from tests.real.otel import Span as JaegerSpan
from tests.real.podrunner import Image, PodRunner
from tests.real.tekton import build_pod, taskrun_status

PATHS = ("inject", "webhook")
RESULT_ATTR = "cicd.pipeline.task.run.result"
#: Pod volumes not compared with the unpatched run: ours, Tekton's binaries, and the scripts (named at random,
#: and the inject path's carry the wrapper's `#!` line by design).
UNCOMPARED_VOLUMES = ("step-tracer-", "tekton-internal-bin", "tekton-internal-scripts")
OTLP_SECRET = "step-tracer-otlp"
#: service.name of the spans Tekton's own reconcilers export.
TEKTON_SERVICES = ("pipelinerun-reconciler", "taskrun-reconciler")
#: Go's log package: "2026/12/07 14:14:14 " before each line.
#: Tekton's script files: /tekton/scripts/script-<index>-<5 random characters>.
SCRIPT_NAME = re.compile(r"(/tekton/scripts/script-\d+)-[a-z0-9]{5}")
GO_LOG_TIME = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", re.MULTILINE)


@dataclass
class Run:
    """One TaskRun's pod, run to its end, and what Tekton made of it."""

    path: str
    pod: dict[str, Any]
    runner: PodRunner
    taskrun: dict[str, Any]
    #: the TaskRun's `tekton.dev/taskrunSpanContext` traceparent, "" for a TaskRun without one
    traceparent: str
    files: dict[str, str]
    uid: str = ""

    def steps(self) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = self.taskrun.get("status", {}).get("steps") or []
        return steps

    def step_state(self, name: str) -> dict[str, Any]:
        for s in self.steps():
            if s["name"] == name:
                return s
        return {}

    def logs(self, container: str) -> tuple[str, str]:
        s = self.runner.status(container)
        return s.stdout, s.stderr


@dataclass
class StepReport:
    """One JSON line of `hack/e2e-real`: one step of one task on one instrumented path."""

    task: str
    step: str
    path: str
    exit_code: int | None
    unpatched_exit_code: int | None
    reason: str | None
    unpatched_reason: str | None
    spans: int
    parent_ok: bool
    result: str | None
    #: "tekton" when the step's parent is a span Tekton's reconcilers emitted, "annotation" when it is only the
    #: span context a TaskRun was given.
    parent_from: str | None = None
    #: true when the step's span was read back from Jaeger with that parent (a rig with a backend)
    in_backend: bool | None = None
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        d = {k: v for k, v in self.__dict__.items() if k != "problems" and (k != "in_backend" or v is not None)}
        if self.problems:
            d["problems"] = self.problems
        return json.dumps(d)


def new_span_context() -> tuple[str, str, str]:
    """(trace id, span id, the annotation value) of a fresh `tekton.dev/taskrunSpanContext`."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, json.dumps({"traceparent": f"00-{trace_id}-{span_id}-01"})


def snapshot(directory: Path) -> dict[str, str]:
    """What a volume holds: relative path -> kind and content digest (symlinks by target)."""
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(directory))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = "file:" + hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return out


@dataclass
class Backend:
    """A real Collector that sidecars and Tekton export to, and the Jaeger it exports to."""

    collector: Collector
    jaeger: Jaeger


class Rig:
    """The local images, a real OTLP receiver the sidecars export to, and a scratch directory."""

    def __init__(self, workdir: Path, images: Mapping[str, Image] | None = None, default: Image | None = None):
        self.workdir = workdir
        if images is None or default is None:
            images, default = make_images(workdir / "images")
        self.images = dict(images)
        self.default = default
        self.receiver = HttpReceiver().start()
        self.backend: Backend | None = None
        self._count = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.receiver.stop()

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def otlp_env(self) -> dict[str, str]:
        """The sidecar's OTLP settings (the `step-tracer-otlp` Secret): the rig's receiver, or the backend's
        Collector once `use_backend` was called."""
        endpoint = self.backend.collector.http_endpoint if self.backend else f"http://127.0.0.1:{self.receiver.port}"
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}

    def use_backend(self, collector: Collector, jaeger: Jaeger) -> None:
        """From now on the sidecars and Tekton export to a real Collector, and spans are read back from Jaeger."""
        self.backend = Backend(collector, jaeger)

    def _scratch(self, name: str) -> tuple[int, Path]:
        with self._lock:  # pods may run in threads
            self._count += 1
            count = self._count
        d = self.workdir / f"{count:03d}-{name}"
        d.mkdir(parents=True)
        return count, d

    def run(
        self,
        files: Sequence[Path],
        task: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        workspaces: Mapping[str, str] | None = None,
        claims: Mapping[str, Path] | None = None,
        grace_seconds: float = 5.0,
        timeout: float = 300.0,
        in_pipeline: bool | None = None,
        span_context: bool = True,
        labels: Mapping[str, str] | None = None,
        webhook: WebhookOptions | None = None,
        otlp_env: Mapping[str, str] | None = None,
        during: Callable[[PodRunner], None] | None = None,
        inject_args: Sequence[str] = (),
    ) -> Run:
        """Run `task` from `files` on `path` (`unpatched`, `inject` or `webhook`; any other name runs `files` as
        they are, e.g. Tasks patched once for many runs).

        By default as the one task of a PipelineRun through Tekton's reconcilers with Tekton's tracing on (as in
        Konflux, where every TaskRun has a PipelineRun, and Tekton writes the span context the steps parent on).
        `in_pipeline=False`, and any of the options only a standalone TaskRun takes, run it as a TaskRun with a
        fresh `tekton.dev/taskrunSpanContext` of our own: `span_context=False` leaves that annotation out (a
        TaskRun no PipelineRun made); `labels` go on the TaskRun (Tekton copies them to the pod); `webhook` are the
        webhook's options; `otlp_env` replaces what the `step-tracer-otlp` Secret holds; `during(runner)` runs in
        a thread while the pod runs (to delete it, kill a process in it, ...); `inject_args` are more options for
        `inject`.
        """
        standalone_only = not span_context or labels or webhook or otlp_env is not None or during or inject_args
        if in_pipeline is None:
            in_pipeline = not standalone_only and path in ("unpatched", "inject", "webhook")
        elif in_pipeline and standalone_only:
            raise ValueError("span_context, labels, webhook, otlp_env, during and inject_args need in_pipeline=False")
        if in_pipeline:
            return self._run_in_pipeline(files, task, path, params, workspaces, claims, grace_seconds, timeout)
        count, scratch = self._scratch(f"{task}-{path}")
        if path == "inject":
            files = inject(files, scratch / "patched", inject_args)
        trace_id, span_id, context = new_span_context()
        name = f"{task[:40]}-{path}-{count}"
        uid = str(uuid.uuid4())
        annotations = {"tekton.dev/taskrunSpanContext": context} if span_context else {}
        kw: dict[str, Any] = {
            "task": task,
            "name": name,
            "uid": uid,
            "annotations": annotations,
            "labels": labels,
            "params": params,
            "workspaces": workspaces,
        }
        pod = build_pod(files, **kw)
        if path == "webhook":
            pod = admit(pod, scratch, webhook)
        runner = PodRunner(
            pod,
            self.images,
            scratch / "pod",
            default_image=self.default,
            secrets={OTLP_SECRET: dict(self.otlp_env if otlp_env is None else otlp_env)},
            grace_seconds=grace_seconds,
            claims=self._claims(claims, scratch),
        )
        meanwhile = threading.Thread(target=during, args=(runner,), daemon=True) if during else None
        if meanwhile:
            meanwhile.start()
        try:
            runner.run(timeout)
        finally:
            if meanwhile:
                meanwhile.join(timeout)
        taskrun = taskrun_status(files, runner.pod_with_status(), **kw)
        traceparent = f"00-{trace_id}-{span_id}-01" if span_context else ""
        return Run(path, runner.pod, runner, taskrun, traceparent, volume_files(runner), uid)

    def _run_in_pipeline(
        self,
        files: Sequence[Path],
        task: str,
        path: str,
        params: Mapping[str, str] | None,
        workspaces: Mapping[str, str] | None,
        claims: Mapping[str, Path] | None,
        grace_seconds: float,
        timeout: float,
    ) -> Run:
        from tests.real.pipelines import run_pipeline

        count, scratch = self._scratch(f"{task}-{path}")
        pipeline = one_task_pipeline(task, params or {}, workspaces or {})
        pipeline_file = scratch / "pipeline.json"
        pipeline_file.write_text(json.dumps(pipeline))
        result = run_pipeline(
            self,
            [*files, pipeline_file],
            path,
            name=f"{task[:40]}-{path}-{count}",
            pipeline=pipeline["metadata"]["name"],
            tracing_endpoint=self.tekton_tracing_endpoint,
            params=params,
            workspaces=workspaces,
            claims=claims,
            grace_seconds=grace_seconds,
            timeout=timeout,
        )
        (taskrun,) = result.taskruns
        if task not in result.runners:
            conditions = taskrun.get("status", {}).get("conditions") or [{}]
            raise RuntimeError(f"TaskRun of {task} ran no pod: {conditions[0].get('message', conditions)}")
        runner = result.runners[task]
        context = json.loads(taskrun["metadata"]["annotations"]["tekton.dev/taskrunSpanContext"])
        uid = taskrun["metadata"].get("uid", "")
        return Run(path, runner.pod, runner, taskrun, context["traceparent"], volume_files(runner), uid)

    @property
    def tekton_tracing_endpoint(self) -> str:
        """Where Tekton's own spans go (config-tracing's endpoint): where the steps' go."""
        return self.otlp_env["OTEL_EXPORTER_OTLP_ENDPOINT"] + "/v1/traces"

    @staticmethod
    def _claims(seeds: Mapping[str, Path] | None, scratch: Path) -> dict[str, Path]:
        """Each run's own copy of the claims' seed directories: runs of one Task must start alike."""
        claims = {}
        for name, seed in (seeds or {}).items():
            claims[name] = scratch / "claims" / name
            shutil.copytree(seed, claims[name], symlinks=True)
        return claims

    def spans_of(self, run: Run) -> list[ReceivedSpan]:
        """The step spans of `run`'s pod the rig's receiver got."""
        pod_name = run.pod["metadata"]["name"]
        return [s for s in self.receiver.spans if s.resource.get("k8s.pod.name") == pod_name]

    def tekton_spans(self) -> frozenset[str]:
        """Ids of the spans Tekton's reconcilers emitted that the rig's receiver got."""
        return frozenset(s.span_id for s in self.receiver.spans if s.resource.get("service.name") in TEKTON_SERVICES)

    def read_back(self, run: Run) -> tuple[list[JaegerSpan], frozenset[str]]:
        """(the step spans of `run`'s pod, the ids of Tekton's spans) as the backend's Jaeger holds `run`'s trace,
        once it holds a span for every executed step (the Collector batches, Jaeger stores asynchronously)."""
        assert self.backend is not None, "use_backend first"
        trace_id = run.traceparent.split("-")[1] if run.traceparent else ""
        executed = sum(1 for s in run.steps() if s.get("terminationReason") != "Skipped")
        pod = run.pod["metadata"]["name"]
        deadline = time.monotonic() + 30
        while True:
            spans = self.backend.jaeger.trace(trace_id) if trace_id else []
            mine = [x for x in spans if x.resource.get("k8s.pod.name") == pod]
            if len(mine) >= executed or time.monotonic() > deadline:
                tekton = frozenset(x.span_id for x in spans if x.resource.get("service.name") in TEKTON_SERVICES)
                return mine, tekton
            time.sleep(0.2)


def one_task_pipeline(task: str, params: Mapping[str, str], workspaces: Mapping[str, str]) -> dict[str, Any]:
    """A Pipeline whose one task runs `task` with the given params and workspaces passed through."""
    return {
        "apiVersion": "tekton.dev/v1",
        "kind": "Pipeline",
        "metadata": {"name": f"{task[:50]}-pipeline"},
        "spec": {
            "params": [{"name": k, "type": "string"} for k in params],
            "workspaces": [{"name": w} for w in workspaces],
            "tasks": [
                {
                    "name": task,
                    "taskRef": {"name": task},
                    "params": [{"name": k, "value": f"$(params.{k})"} for k in params],
                    "workspaces": [{"name": w, "workspace": w} for w in workspaces],
                }
            ],
        },
    }


def volume_files(runner: PodRunner) -> dict[str, str]:
    """What the pod's compared volumes hold after the run (see UNCOMPARED_VOLUMES)."""
    seen: dict[str, str] = {}
    for volume in runner.pod["spec"].get("volumes") or []:
        name = volume["name"]
        if ("emptyDir" in volume or "persistentVolumeClaim" in volume) and not name.startswith(UNCOMPARED_VOLUMES):
            # workspace volumes are named ws-<random>: compare them by their claim or position instead
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            where = runner.claims[claim] if claim in runner.claims else runner.workdir / "volumes" / name
            seen.update({f"{claim or _stable(name)}/{k}": v for k, v in snapshot(where).items()})
    return seen


def _stable(volume: str) -> str:
    """A volume's name without the random suffix Tekton gives workspace volumes (ws-xxxxx)."""
    return "ws" if volume.startswith("ws-") else volume


def inject(files: Sequence[Path], out: Path, args: Sequence[str] = ()) -> list[Path]:
    """`step-tracer inject` on copies of `files`, with the sidecar image of the local images."""
    out.mkdir(parents=True)
    copies = []
    for i, f in enumerate(files):
        copy = out / f"{i}-{f.name}"
        shutil.copyfile(f, copy)
        copies.append(copy)
    launcher = Path(sys.executable).parent / "step-tracer"
    proc = subprocess.run(
        [str(launcher), "inject", *args, *map(str, copies)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"step-tracer inject failed ({proc.returncode}): {proc.stderr.strip()}")
    return copies


def admit(pod: Mapping[str, Any], scratch: Path, options: WebhookOptions | None = None) -> dict[str, Any]:
    """The Pod as the API server stores it after our mutating webhook: an AdmissionReview v1 for the create,
    answered by the webhook's own review handler, its JSONPatch applied with the API server's library."""
    from step_tracer.webhook.server import Metrics, review

    request = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod["metadata"].get("namespace", "default"),
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:tekton-pipelines:tekton-pipelines-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }
    answer = review(json.dumps(request).encode(), options or WebhookOptions(), Metrics())
    response = answer["response"]
    if not response.get("allowed"):
        raise RuntimeError(f"the webhook refused the pod: {response}")
    if "patch" not in response:
        return dict(pod)
    (scratch / "pod-in.json").write_text(json.dumps(pod))
    (scratch / "patch.json").write_bytes(base64.b64decode(response["patch"]))
    proc = subprocess.run(
        [str(tekton_bin_dir() / "jsonpatch"), str(scratch / "pod-in.json"), str(scratch / "patch.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the API server's JSON patch refused the webhook's patch: {proc.stderr.strip()}")
    patched: dict[str, Any] = json.loads(proc.stdout)
    return patched


def _logs(run: Run, container: str) -> tuple[str, str]:
    """A container's stdout and stderr without what differs between any two runs: the times Tekton's entrypoint
    puts on its own log lines, the random part of the script file names Tekton's pod builder makes."""
    out, err = run.logs(container)
    return SCRIPT_NAME.sub(r"\1", out), SCRIPT_NAME.sub(r"\1", GO_LOG_TIME.sub("", err))


def expected_result(state: Mapping[str, Any]) -> str:
    """The CICD result a step's span must carry, from Tekton's own step state."""
    reason = state.get("terminationReason")
    if reason == "TimeoutExceeded":
        return "timeout"
    code = (state.get("terminated") or {}).get("exitCode")
    return "success" if code == 0 else "failure"


def exit_code_agrees(span_code: object, state: Mapping[str, Any]) -> bool:
    """Whether a step span's `process.exit.code` says what Tekton's step state says. Tekton reads a signalled
    command as -1, the span says 128+N; a step Tekton killed for its timeout has no exit code of its own (the
    code is the entrypoint's)."""
    if state.get("terminationReason") == "TimeoutExceeded":
        return True
    code = (state.get("terminated") or {}).get("exitCode")
    if code == -1:
        return isinstance(span_code, int) and span_code > 128
    return bool(span_code == code)


class StepSpan(Protocol):
    """What `compare` reads of a span: our receiver's ReceivedSpan, or a span read back from Jaeger."""

    @property
    def trace_id(self) -> str: ...
    @property
    def parent_span_id(self) -> str: ...
    @property
    def attributes(self) -> Mapping[str, Any]: ...


def compare(
    task: str, base: Run, traced: Run, spans: Sequence[StepSpan], tekton_spans: frozenset[str] = frozenset()
) -> list[StepReport]:
    """One report per step of `traced` against the unpatched `base`; `tekton_spans` are the ids of the spans
    Tekton itself emitted."""
    reports = []
    parent = traced.traceparent.split("-")
    base_results = base.taskrun.get("status", {}).get("results")
    traced_results = traced.taskrun.get("status", {}).get("results")
    for state in traced.steps():
        name = state["name"]
        b = base.step_state(name)
        code = (state.get("terminated") or {}).get("exitCode")
        b_code = (b.get("terminated") or {}).get("exitCode")
        reason, b_reason = state.get("terminationReason"), b.get("terminationReason")
        mine = [s for s in spans if s.attributes.get("tekton.step.name") == name]
        executed = reason != "Skipped"
        problems = []
        if code != b_code:
            problems.append(f"exit code {code}, unpatched {b_code}")
        if reason != b_reason:
            problems.append(f"reason {reason}, unpatched {b_reason}")
        container = state.get("container") or f"step-{name}"
        if _logs(traced, container) != _logs(base, b.get("container") or container):
            problems.append("stdout/stderr differ from the unpatched run")
        if executed and len(mine) != 1:
            problems.append(f"{len(mine)} spans for an executed step")
        if not executed and mine:
            problems.append(f"{len(mine)} spans for a skipped step")
        parent_ok = bool(mine) and all(s.trace_id == parent[1] and s.parent_span_id == parent[2] for s in mine)
        if mine and not parent_ok:
            problems.append("span not parented on the TaskRun's span context")
        result = mine[0].attributes.get(RESULT_ATTR) if len(mine) == 1 else None
        if executed and len(mine) == 1 and result != expected_result(state):
            problems.append(f"span result {result!r}, Tekton's state says {expected_result(state)}")
        span_code = mine[0].attributes.get("process.exit.code") if len(mine) == 1 else None
        if executed and len(mine) == 1 and not exit_code_agrees(span_code, state):
            problems.append(f"span exit code {span_code!r}, Tekton's {code}")
        parent_from = None
        if parent_ok:
            parent_from = "tekton" if parent[2] in tekton_spans else "annotation"
        reports.append(
            StepReport(
                task, name, traced.path, code, b_code, reason, b_reason, len(mine), parent_ok,
                str(result) if result is not None else None, parent_from, problems=problems,
            )
        )  # fmt: skip
    if base_results != traced_results and reports:
        reports[-1].problems.append(f"task results {traced_results}, unpatched {base_results}")
    if base.files != traced.files and reports:
        changed = sorted(set(base.files.items()) ^ set(traced.files.items()))[:5]
        reports[-1].problems.append(f"files differ from the unpatched run: {changed}")
    named = {s.attributes.get("tekton.step.name") for s in spans}
    stray = named - {s["name"] for s in traced.steps()}
    if stray and reports:
        reports[-1].problems.append(f"spans of unknown steps {sorted(map(str, stray))}")
    return reports


def task_names(files: Iterable[Path]) -> list[tuple[str, set[str]]]:
    """(name, the workspaces it declares) of every Task in `files`, in order."""
    import yaml

    out = []
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Task":
                declared = {str(w.get("name")) for w in (doc.get("spec") or {}).get("workspaces") or []}
                out.append((str(doc["metadata"]["name"]), declared))
    return out


def run_task(rig: Rig, files: Sequence[Path], task: str, paths: Sequence[str], **kw: Any) -> list[StepReport]:
    """`task` through the unpatched baseline and each of `paths` (keywords as for `Rig.run`)."""
    base = rig.run(files, task, "unpatched", **kw)
    reports: list[StepReport] = []
    for path in paths:
        traced = rig.run(files, task, path, **kw)
        if rig.backend is None:
            reports += compare(task, base, traced, rig.spans_of(traced), rig.tekton_spans())
            continue
        spans, tekton = rig.read_back(traced)
        found = compare(task, base, traced, spans, tekton)
        for r in found:
            r.in_backend = r.parent_ok and r.spans == 1
        reports += found
    return reports


def run_tasks(
    rig: Rig, files: Sequence[Path], paths: Sequence[str], workspaces: Mapping[str, str] | None = None, **kw: Any
) -> list[StepReport]:
    """Every Task in `files` (StepActions and other documents there are available to each); each gets the
    `workspaces` it declares."""
    reports = []
    for task, declared in task_names(files):
        bound = {k: v for k, v in (workspaces or {}).items() if k in declared}
        reports += run_task(rig, files, task, paths, workspaces=bound, **kw)
    return reports

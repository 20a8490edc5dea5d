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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.real.e2e import OTLP_SECRET, Rig, admit, inject
from tests.real.images import tekton_bin_dir
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

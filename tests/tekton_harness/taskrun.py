"""Run a TaskRun's pod on this machine the way the kubelet and Tekton run it.

Every container is a process started as a new session (the session stands for the container: when its PID 1
exits, whatever it left behind is SIGKILLed, as the end of a PID namespace does). Steps run the entrypoint
stand-in (tests/tekton_harness/entrypoint.py) as their PID 1, all started at once and ordered by post files like
Tekton's; sidecars run their own command. With sidecars, step 0 waits for `/tekton/downward/ready`, which is
written once every sidecar's readinessProbe passed (or it has no probe, or it exited), like the controller's
`tekton.dev/ready` annotation. After the last step the sidecars get SIGTERM, then SIGKILL after the grace period
(Tekton swaps their image for nop; the kubelet stops them that way). Pod deletion is SIGTERM to every container's
PID 1, then SIGKILL after the grace period.

Deviations, for speed: post files are polled every `poll_interval` (Tekton: 1 s) and probes run every
`probe_interval` (Kubernetes: periodSeconds, at least 1 s); Downward API updates land at once (the kubelet syncs
them within a minute). Paths: see tests/tekton_harness/pod.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.tekton_harness import kubelet
from tests.tekton_harness.pod import (
    PODINFO_MOUNT,
    READY_ANNOTATION,
    SPOOL_MOUNT,
    Container,
    HarnessError,
    Image,
    Pod,
    TaskRun,
    build_pod,
)

ENTRYPOINT_SCRIPT = Path(__file__).with_name("entrypoint.py")


@dataclass
class StepRun:
    """One step as the TaskRun's status would show it, plus what the harness saw of its processes."""

    name: str
    container: str
    index: int
    reason: str  # Completed, Error, Continued, TimeoutExceeded, Skipped
    exit_code: int  # Tekton's step exit code (the recorded one under onError: continue)
    container_exit: int  # the entrypoint's own exit status (128+N when a signal ended it)
    started: bool  # the step's command was started (never, for a skipped step)
    child_pid: int | None
    stdout: bytes
    stderr: bytes
    termination: list[dict[str, Any]]
    results: dict[str, str]  # step results files (/tekton/steps/<container>/results)


@dataclass
class SidecarRun:
    name: str
    container: str
    exit_code: int
    ready: bool
    killed: bool  # needed SIGKILL after the grace period
    stdout: bytes
    stderr: bytes


@dataclass
class TaskRunResult:
    pod: Pod
    steps: list[StepRun]
    sidecars: list[SidecarRun]
    results: dict[str, str]  # task results files (/tekton/results)
    deleted: bool

    @property
    def succeeded(self) -> bool:
        return not self.deleted and all(s.container_exit == 0 for s in self.steps)

    def step(self, name: str) -> StepRun:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


class _Process:
    """A running container: its PID 1, log files, and the thread that tears it down when PID 1 ends."""

    def __init__(self, container: Container, proc: subprocess.Popen[bytes], out: IO[bytes], err: IO[bytes]) -> None:
        self.container = container
        self.proc = proc
        self.out = out
        self.err = err
        self.done = threading.Event()
        self.killed = False
        self.thread = threading.Thread(target=self._watch, name=f"container-{container.name}", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        self.proc.wait()
        try:
            kubelet.kill_session(self.proc.pid)
        finally:
            self.out.close()
            self.err.close()
            self.done.set()

    @property
    def exit_status(self) -> int:
        code = self.proc.returncode
        assert code is not None
        return 128 - code if code < 0 else code

    def stop(self, grace: float) -> None:
        """The kubelet stopping a container: SIGTERM to PID 1, SIGKILL to all of it after `grace` seconds."""
        if self.done.is_set():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        if not self.done.wait(grace):
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            kubelet.kill_session(self.proc.pid)
            self.done.wait(30)


class Harness:
    """Plays Tekton's controller, the kubelet and the container runtime for TaskRuns on this machine.

    `images` is what the registry and image configs would say (entrypoints for command-less steps, PATH);
    `secrets` are the namespace's Secrets (name -> data) for envFrom/secretKeyRef.
    """

    def __init__(
        self,
        root: Path,
        *,
        images: Mapping[str, Image] | None = None,
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        poll_interval: float = 0.01,
        probe_interval: float = 0.05,
        probe_timeout: float = 10.0,
        ready_timeout: float = 60.0,
        grace_period: float = 30.0,
        node_name: str = "harness-node",
    ) -> None:
        self.root = root
        self.images = dict(images or {})
        self.secrets = {k: dict(v) for k, v in (secrets or {}).items()}
        self.poll_interval = poll_interval
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.ready_timeout = ready_timeout
        self.grace_period = grace_period
        self.node_name = node_name

    def build(self, task: Mapping[str, Any], taskrun: TaskRun) -> Pod:
        pod_uid = str(uuid.uuid4())
        root = self.root / f"{taskrun.name}-{pod_uid[:8]}"
        return build_pod(task, taskrun, root, images=self.images, node_name=self.node_name, pod_uid=pod_uid)

    def start(self, task: Mapping[str, Any], taskrun: TaskRun) -> RunningPod:
        running = RunningPod(self, self.build(task, taskrun))
        try:
            running.start()
        except BaseException:
            running.delete(grace=0)
            raise
        return running

    def run(self, task: Mapping[str, Any], taskrun: TaskRun, *, timeout: float = 120.0) -> TaskRunResult:
        return self.start(task, taskrun).wait(timeout)


class RunningPod:
    def __init__(self, harness: Harness, pod: Pod) -> None:
        self.harness = harness
        self.pod = pod
        self.processes: dict[str, _Process] = {}
        self.ready = threading.Event()
        self.ready_sidecars: set[str] = set()
        self.error: str | None = None
        self.deleted = False
        self._lock = threading.Lock()
        self._ready_thread: threading.Thread | None = None

    # -- setting up -------------------------------------------------------------------------------------------

    def start(self) -> None:
        pod = self.pod
        (pod.root / "logs").mkdir(parents=True)
        (pod.root / "harness").mkdir()
        for volume in pod.volumes:
            pod.volume_dir(volume["name"]).mkdir(parents=True, exist_ok=True)
        self._write_downward()
        for path, content in pod.scripts.items():
            host = pod.volume_dir("tekton-internal-scripts") / Path(path).name
            host.write_text(content)
            host.chmod(0o755)
        steps_dir = pod.volume_dir("tekton-internal-steps")
        for step in pod.steps:
            status = pod.volume_dir(f"tekton-internal-run-{step.index}") / "status"
            os.symlink(status, steps_dir / step.name)
            os.symlink(status, steps_dir / str(step.index))
        for container in pod.containers:
            container.termination_path.parent.mkdir(parents=True, exist_ok=True)
            container.termination_path.touch(0o666)
        for container in pod.sidecars:
            self._launch(container)
        for container in pod.steps:
            self._launch(container)
        if pod.sidecars:
            self._ready_thread = threading.Thread(target=self._await_sidecars, name="readiness", daemon=True)
            self._ready_thread.start()
        else:
            self.ready.set()

    def _write_downward(self) -> None:
        meta = self.pod.meta()
        for volume in self.pod.volumes:
            source = volume.get("downwardAPI")
            if source is None:
                continue
            files = {}
            for item in source.get("items") or []:
                ref = item.get("fieldRef")
                if ref is None:
                    raise HarnessError(f"volume {volume['name']}: only fieldRef items are supported")
                files[item["path"]] = kubelet.field_value(ref["fieldPath"], meta).encode()
            mode = int(source.get("defaultMode", 0o644))
            kubelet.write_volume(self.pod.volume_dir(volume["name"]), files, mode)

    def env(self, container: Container) -> dict[str, str]:
        """The container's environment: image PATH, envFrom, env (kubelet-expanded), translated paths."""
        declared: dict[str, str] = {}
        for source in container.env_from:
            ref = source.get("secretRef") or source.get("configMapRef")
            if ref is None:
                continue
            data = self.harness.secrets.get(ref["name"]) if "secretRef" in source else None
            if not isinstance(data, dict):
                if ref.get("optional"):
                    continue
                raise HarnessError(f"{container.name}: secret or configmap {ref['name']!r} not found")
            prefix = str(source.get("prefix", ""))
            declared.update({prefix + k: v for k, v in data.items()})
        meta = self.pod.meta()
        for var in container.env:
            name = var["name"]
            value_from = var.get("valueFrom")
            if value_from is None:
                declared[name] = kubelet.expand(str(var.get("value", "")), declared)
            elif "fieldRef" in value_from:
                declared[name] = kubelet.field_value(value_from["fieldRef"]["fieldPath"], meta)
            elif "secretKeyRef" in value_from:
                ref = value_from["secretKeyRef"]
                secret = self.harness.secrets.get(ref["name"], {})
                if ref["key"] in secret:
                    declared[name] = secret[ref["key"]]
                elif not ref.get("optional"):
                    raise HarnessError(f"{container.name}: secret key {ref['name']}/{ref['key']} not found")
            else:
                raise HarnessError(f"{container.name}: unsupported valueFrom {sorted(value_from)}")
        env = {"PATH": container.image_config.path}
        env.update({k: container.translate(self.pod, v) for k, v in declared.items()})
        for mount in container.volume_mounts:
            # The contract's overrides for where the spool and podinfo are when they cannot be at their paths.
            if mount.mount_path == SPOOL_MOUNT:
                env["STEP_TRACER_SPOOL"] = str(self.pod.volume_dir(mount.name))
            elif mount.mount_path == PODINFO_MOUNT:
                env["STEP_TRACER_PODINFO"] = str(self.pod.volume_dir(mount.name))
        return env

    def argv(self, container: Container, env: Mapping[str, str]) -> list[str]:
        expanded = [kubelet.expand(a, env) for a in [*container.command, *container.args]]
        translated = [container.translate(self.pod, a) for a in expanded]
        if container.kind == "sidecar":
            return translated
        cut = translated.index("--")
        own = [
            "-harness_poll",
            str(self.harness.poll_interval),
            "-harness_child_pid_file",
            str(self._child_pid_file(container)),
            "-harness_results_dir",
            str(self.pod.volume_dir("tekton-internal-results")),
        ]
        return [sys.executable, "-I", "-S", str(ENTRYPOINT_SCRIPT), *translated[1:cut], *own, *translated[cut:]]

    def _cwd(self, container: Container) -> Path:
        wanted = container.working_dir or container.image_config.workdir
        if not wanted:
            # An image's WORKDIR would be inside its own filesystem; here each container gets a scratch directory.
            scratch = self.pod.root / "rootfs" / container.name
            scratch.mkdir(parents=True, exist_ok=True)
            return scratch
        path = Path(container.translate(self.pod, wanted))
        if not path.is_dir():
            if self.pod.root not in path.parents:
                raise HarnessError(f"{container.name}: working directory {wanted} does not exist on this machine")
            path.mkdir(parents=True)  # runc creates a missing working directory
        return path

    def _child_pid_file(self, container: Container) -> Path:
        return self.pod.root / "harness" / f"{container.name}.child"

    def _launch(self, container: Container) -> None:
        env = self.env(container)
        argv = self.argv(container, env)
        logs = self.pod.root / "logs"
        out = open(logs / f"{container.name}.out", "wb")  # noqa: SIM115 (closed by the watcher thread)
        err = open(logs / f"{container.name}.err", "wb")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=self._cwd(container),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        except OSError as exc:
            out.close()
            err.close()
            raise HarnessError(f"{container.name}: cannot start {argv[0]}: {exc}") from exc
        self.processes[container.name] = _Process(container, proc, out, err)

    # -- readiness --------------------------------------------------------------------------------------------

    def _probe(self, container: Container) -> bool:
        probe = container.readiness_probe
        if not probe:
            return True
        command = (probe.get("exec") or {}).get("command")
        if not command:
            raise HarnessError(f"{container.name}: only exec readiness probes are supported")
        env = self.env(container)
        argv = [container.translate(self.pod, kubelet.expand(str(a), env)) for a in command]
        timeout = max(float(probe.get("timeoutSeconds", 1)), self.harness.probe_timeout)
        try:
            done = subprocess.run(
                argv, env=env, cwd=self._cwd(container), capture_output=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    def _await_sidecars(self) -> None:
        try:
            self._poll_readiness()
        except Exception as exc:  # reported by wait(); the pod must not sit waiting forever
            self.error = f"readiness: {exc}"
            self.delete(grace=0)

    def _poll_readiness(self) -> None:
        deadline = time.monotonic() + self.harness.ready_timeout
        pending = list(self.pod.sidecars)
        while pending:
            if self.deleted:
                return
            for container in list(pending):
                process = self.processes[container.name]
                # SidecarsReady: a sidecar is fine when it runs and is Ready, or when it has terminated.
                if process.done.is_set() or self._probe(container):
                    pending.remove(container)
                    if not process.done.is_set():
                        self.ready_sidecars.add(container.name)
            if not pending:
                break
            if time.monotonic() > deadline:
                self.error = f"sidecars {[c.name for c in pending]} not ready within {self.harness.ready_timeout}s"
                self.delete(grace=0)
                return
            time.sleep(self.harness.probe_interval)
        self.pod.annotations[READY_ANNOTATION] = "READY"
        self._write_downward()
        self.ready.set()

    # -- control ----------------------------------------------------------------------------------------------

    def process(self, step: int | str) -> _Process:
        if isinstance(step, int):
            return self.processes[self.pod.steps[step].name]
        return self.processes[step]

    def send_signal(self, step: int | str, sig: int) -> None:
        """What the kubelet does to a container: a signal to its PID 1 (for a step, the entrypoint)."""
        os.kill(self.process(step).proc.pid, sig)

    def child_pid(self, step: int, timeout: float = 30.0) -> int:
        """The pid of the step's command (for a patched step: the wrapper), once it is started."""
        path = self._child_pid_file(self.pod.steps[step])
        wait_until(path.exists, timeout, f"step {step} to start its command")
        return int(path.read_text())

    def kill_child(self, step: int, sig: int = signal.SIGKILL) -> None:
        os.kill(self.child_pid(step), sig)

    def delete(self, grace: float | None = None) -> None:
        """Pod deletion: SIGTERM to every container's PID 1 at once, SIGKILL after the grace period."""
        self.deleted = True
        grace = self.harness.grace_period if grace is None else grace
        threads = [
            threading.Thread(target=p.stop, args=(grace,), daemon=True)
            for p in self.processes.values()
            if not p.done.is_set()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def wait(self, timeout: float = 120.0) -> TaskRunResult:
        deadline = time.monotonic() + timeout
        for step in self.pod.steps:
            if not self.processes[step.name].done.wait(max(0.0, deadline - time.monotonic())):
                self.delete(grace=0)
                raise HarnessError(f"TaskRun did not finish within {timeout}s (step {step.name} still running)")
        sidecars = [self.processes[c.name] for c in self.pod.sidecars]
        threads = [threading.Thread(target=p.stop, args=(self.harness.grace_period,), daemon=True) for p in sidecars]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self._ready_thread is not None:
            self._ready_thread.join(self.harness.probe_timeout + 5)
        if self.error:
            raise HarnessError(self.error)
        return self._result()

    def _result(self) -> TaskRunResult:
        steps = []
        for container in self.pod.steps:
            process = self.processes[container.name]
            raw = container.termination_path.read_bytes()
            termination: list[dict[str, Any]] = json.loads(raw) if raw.strip() else []
            internal = {r["key"]: r["value"] for r in termination if r.get("type") == 3}
            status_exit = process.exit_status
            if "Reason" in internal:
                reason = internal["Reason"]
            elif "ExitCode" in internal:
                reason = "Continued"
            else:
                reason = "Completed" if status_exit == 0 else "Error"
            pid_file = self._child_pid_file(container)
            results_dir = self.pod.volume_dir(f"tekton-internal-run-{container.index}") / "status" / "results"
            steps.append(
                StepRun(
                    name=container.step_name or container.name.removeprefix("step-"),
                    container=container.name,
                    index=container.index,
                    reason=reason,
                    exit_code=int(internal["ExitCode"]) if "ExitCode" in internal else status_exit,
                    container_exit=status_exit,
                    started=pid_file.exists(),
                    child_pid=int(pid_file.read_text()) if pid_file.exists() else None,
                    stdout=(self.pod.root / "logs" / f"{container.name}.out").read_bytes(),
                    stderr=(self.pod.root / "logs" / f"{container.name}.err").read_bytes(),
                    termination=termination,
                    results=_read_dir(results_dir),
                )
            )
        sidecars = [
            SidecarRun(
                name=c.step_name,
                container=c.name,
                exit_code=self.processes[c.name].exit_status,
                ready=c.name in self.ready_sidecars,
                killed=self.processes[c.name].killed,
                stdout=(self.pod.root / "logs" / f"{c.name}.out").read_bytes(),
                stderr=(self.pod.root / "logs" / f"{c.name}.err").read_bytes(),
            )
            for c in self.pod.sidecars
        ]
        return TaskRunResult(
            pod=self.pod,
            steps=steps,
            sidecars=sidecars,
            results=_read_dir(self.pod.volume_dir("tekton-internal-results")),
            deleted=self.deleted,
        )


def _read_dir(directory: Path) -> dict[str, str]:
    if not directory.is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(directory.iterdir()) if p.is_file()}


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)

"""Shared by the sidecar tests (no tests here; named test_sidecar_* to sit with them): a fake Tekton pod on disk
(spool, pod info, bin volume) and the real sidecar process running against it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from step_tracer.context import SpanContext
from step_tracer.span import STATUS_ERROR, Span
from step_tracer.tekton import spool

LAUNCHER = Path(sys.executable).parent / "step-tracer"
SIDECAR = [str(LAUNCHER), "sidecar"]
TASKRUN_UID = "0f6a2c3e-5b1d-4e7a-9c2b-8d4f6e1a3b5c"
RESOURCE = {"service.name": "step-tracer", "k8s.namespace.name": "ci", "k8s.pod.name": "build-pod"}


SETPRIV = shutil.which("setpriv")
#: Tests that run steps and the sidecar as different UIDs, as pods do.
needs_uids = pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv to switch UIDs")


def as_uid(uid: int, *argv: str) -> list[str]:
    assert SETPRIV is not None
    return [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


@contextlib.contextmanager
def shared_root(prefix: str) -> Iterator[Path]:
    """A directory other UIDs can reach (pytest's tmp dirs are closed to them), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base)


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without anything that would steer the sidecar."""
    drop = ("OTEL_", "STEP_TRACER_", "TRACE", "K8S_", "KUBERNETES_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "BAGGAGE"):
        env.pop(name, None)
    env.update(extra)
    return env


def go_quote(value: str) -> str:
    """Go %q for the ASCII values tests use (what the kubelet writes)."""
    return json.dumps(value)


class Pod:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool = root / "spool"
        self.podinfo = root / "podinfo"
        self.bin = root / "bin"

    def write_podinfo(
        self,
        labels: dict[str, str],
        annotations: dict[str, str] | None = None,
        *,
        name: str = "build-pod",
        namespace: str = "ci",
        uid: str = "5e3c0c2a-0000-4000-8000-000000000001",
    ) -> None:
        self.podinfo.mkdir(exist_ok=True)
        for file, values in (("labels", labels), ("annotations", annotations or {})):
            text = "\n".join(f"{k}={go_quote(v)}" for k, v in sorted(values.items()))
            (self.podinfo / file).write_text(text)
        (self.podinfo / "name").write_text(name)
        (self.podinfo / "namespace").write_text(namespace)
        (self.podinfo / "uid").write_text(uid)

    def taskrun_labels(self, taskrun: str = "build-run-1", uid: str = TASKRUN_UID) -> dict[str, str]:
        return {
            "tekton.dev/taskRun": taskrun,
            "tekton.dev/taskRunUID": uid,
            "tekton.dev/task": "build",
            "app.kubernetes.io/managed-by": "tekton-pipelines",
        }

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(STEP_TRACER_PODINFO=str(self.podinfo), **extra)

    def records(self) -> tuple[set[str], set[str]]:
        return spool.list_records(str(self.spool))

    def wait_empty(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.records() != (set(), set()):
            if time.monotonic() > deadline:
                raise AssertionError(f"spool not emptied within {timeout}s: {self.records()}")
            time.sleep(0.02)


def step_span(
    index: int,
    parent: SpanContext | None = None,
    *,
    name: str = "",
    start_ns: int | None = None,
    duration_ns: int = 50_000_000,
    timeout: float | None = None,
    exit_code: int = 0,
) -> Span:
    """A finished step span as the wrapper writes it (call `as_start` for its write-ahead record)."""
    start = time.time_ns() if start_ns is None else start_ns
    span = Span(
        name or f"step-{index}",
        parent.trace_id if parent else os.urandom(16).hex(),
        os.urandom(8).hex(),
        parent.span_id if parent else "",
        start_ns=start,
        end_ns=start + duration_ns,
        attributes={
            "tekton.step.name": name or f"step-{index}",
            "tekton.step.index": index,
            "process.exit.code": exit_code,
            "cicd.pipeline.task.run.result": "success" if exit_code == 0 else "failure",
        },
    )
    if timeout is not None:
        span.attributes["tekton.step.timeout"] = timeout
    if exit_code:
        span.attributes["error.type"] = f"exit_code_{exit_code}"
        span.status_code = STATUS_ERROR
        span.status_message = f"exit code {exit_code}"
    return span


def as_start(span: Span) -> Span:
    attributes = {k: v for k, v in span.attributes.items() if k.startswith("tekton.")}
    return Span(
        span.name,
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        start_ns=span.start_ns,
        attributes=attributes,
    )


def write_step(pod: Pod, span: Span, *, start: bool = True, end: bool = True) -> None:
    resource = {**RESOURCE, "k8s.container.name": f"step-{span.name}"}
    if start:
        spool.write_start(str(pod.spool), resource, as_start(span))
    if end:
        spool.write_end(str(pod.spool), resource, span)


class Sidecar:
    """`step-tracer sidecar` as the pod runs it; stderr goes to a file tests can read while it runs."""

    def __init__(self, pod: Pod, env: dict[str, str], *args: str) -> None:
        pod.spool.mkdir(exist_ok=True)
        self.pod = pod
        self.stderr_path = pod.root / f"sidecar-{time.monotonic_ns()}.err"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [*SIDECAR, "--spool", str(pod.spool), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.stdout = b""

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_ready(self, timeout: float = 30.0) -> Self:
        deadline = time.monotonic() + timeout
        while not (self.pod.spool / ".ready").exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited {self.proc.returncode} before ready: {self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"sidecar not ready within {timeout}s: {self.stderr}")
            time.sleep(0.02)
        return self

    def wait_for_stderr(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the sidecar's stderr: {self.stderr}")
            time.sleep(0.02)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[int, float]:
        """Send `signum`, wait for the exit: (exit code, seconds it took)."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        out, _ = self.proc.communicate(timeout=timeout)
        self.stdout += out
        return self.proc.returncode, time.monotonic() - started

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)
        self._stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Forwarder:
    """A TCP relay on a fixed port to a receiver: the collector coming up at the address the sidecar uses."""

    def __init__(self, port: int, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(16)
        self.sockets: list[socket.socket] = [self.listener]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

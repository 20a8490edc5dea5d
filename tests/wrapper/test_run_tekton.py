"""The wrapper inside a Tekton pod: parent context, pod attributes, the spool, and `run-script`.

The pod's Downward API volume and spool are real directories (STEP_TRACER_PODINFO / STEP_TRACER_SPOOL point at
them, as the contract allows); the wrapper is the installed launcher, run as a step would run it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from step_tracer.span import Span
from step_tracer.tekton import podinfo, spool
from tests.conftest import Wrapper

if TYPE_CHECKING:
    from step_tracer.span import Attributes

UID = "8c1f2a8e-5b7d-4c1e-9f00-123456789abc"
ANNOTATION_PARENT = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
ANNOTATION = 'tekton.dev/taskrunSpanContext="{\\"traceparent\\":\\"00-' + "-".join(ANNOTATION_PARENT) + '-01\\"}"'


class Pod:
    """A step container's view of its pod: pod info files and the shared spool."""

    def __init__(self, root: Path, annotations: str = ANNOTATION) -> None:
        self.podinfo = root / "podinfo"
        self.spool = root / "spool"
        self.podinfo.mkdir()
        self.spool.mkdir()
        (self.podinfo / "labels").write_text(
            f'tekton.dev/task="hello"\ntekton.dev/taskRun="hello-run"\ntekton.dev/taskRunUID="{UID}"'
        )
        (self.podinfo / "annotations").write_text(annotations)
        (self.podinfo / "name").write_text("hello-run-pod")
        (self.podinfo / "namespace").write_text("team-a")
        (self.podinfo / "uid").write_text("9d9d9d9d-0000-4000-8000-000000000000")

    @property
    def env(self) -> dict[str, str]:
        return {"STEP_TRACER_PODINFO": str(self.podinfo), "STEP_TRACER_SPOOL": str(self.spool)}

    def records(self, suffix: str) -> list[tuple[Attributes, Span]]:
        return [spool.read_record(str(p)) for p in sorted(self.spool.glob(f"*{suffix}"))]

    def only_end(self) -> tuple[Attributes, Span]:
        ends = self.records(".end")
        assert len(ends) == 1, ends
        return ends[0]


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    return Pod(tmp_path)


def step(wrapper: Wrapper, pod: Pod, *command: str, index: int = 0, extra: dict[str, str] | None = None) -> bytes:
    result = wrapper.run(
        "--tekton-step", "build", "--tekton-step-index", str(index), "--", *command, env={**pod.env, **(extra or {})}
    )
    return result.stderr


def test_step_span_joins_the_taskrun_trace_from_the_annotation(wrapper: Wrapper, pod: Pod, dead_port: int) -> None:
    stderr = step(
        wrapper,
        pod,
        "sh",
        "-c",
        "echo $TRACEPARENT; exit 3",
        extra={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{dead_port}"},
    )
    # Steps never talk to the network, whatever OTEL_* they set: the sidecar ships the spool. The wrapper waits
    # for any export it starts, and one to this closed port would have been a "connection refused" line here.
    assert stderr == b""
    resource, span = pod.only_end()
    assert (span.trace_id, span.parent_span_id) == ANNOTATION_PARENT
    assert span.name == "build"
    attrs = span.attributes
    assert attrs["tekton.trace.parent_source"] == "annotation"
    assert attrs["process.exit.code"] == 3 and attrs["cicd.pipeline.task.run.result"] == "failure"
    assert attrs["tekton.step.name"] == "build" and attrs["tekton.step.index"] == 0
    assert attrs["cicd.pipeline.task.name"] == "hello" and attrs["cicd.pipeline.task.run.id"] == UID
    assert resource["k8s.namespace.name"] == "team-a" and resource["k8s.pod.name"] == "hello-run-pod"
    assert resource["k8s.container.name"] == "step-build"
    # The write-ahead record is the same span, started, not ended.
    ((start_resource, start),) = pod.records(".start")
    assert (start.span_id, start.end_ns, start.start_ns) == (span.span_id, 0, span.start_ns)
    assert start.attributes["tekton.step.name"] == "build" and start_resource == resource
    assert not wrapper.file.exists()


def test_traceparent_wins_over_the_annotation(wrapper: Wrapper, pod: Pod) -> None:
    step(wrapper, pod, "true", extra={"TRACEPARENT": "00-11111111111111111111111111111111-2222222222222222-01"})
    _, span = pod.only_end()
    assert (span.trace_id, span.parent_span_id) == ("1" * 32, "2" * 16)
    assert span.attributes["tekton.trace.parent_source"] == "env"


def test_standalone_taskrun_uses_the_sidecars_status_context_then_the_uid(wrapper: Wrapper, tmp_path: Path) -> None:
    pod = Pod(tmp_path, annotations="")
    step(wrapper, pod, "true")
    _, derived = pod.only_end()
    expected = podinfo.derived_context(UID)
    assert (derived.trace_id, derived.parent_span_id) == (expected.trace_id, expected.span_id)
    assert derived.attributes["tekton.trace.parent_source"] == "taskrun-uid"
    for record in pod.spool.iterdir():
        record.unlink()
    (pod.spool / "taskrun-context.json").write_text(
        '{"traceparent": "00-33333333333333333333333333333333-4444444444444444-01"}'
    )
    step(wrapper, pod, "true")
    _, status = pod.only_end()
    assert (status.trace_id, status.parent_span_id) == ("3" * 32, "4" * 16)
    assert status.attributes["tekton.trace.parent_source"] == "taskrun-status"


@pytest.mark.parametrize("source", ["annotation", "taskrun-status"])
def test_tracestate_of_the_taskruns_context_reaches_the_command(wrapper: Wrapper, tmp_path: Path, source: str) -> None:
    """W3C: the vendor state travels with the parent. Tekton writes both into its carrier; the command's
    instrumented tools must see it as they see TRACEPARENT."""
    carrier = '{"traceparent": "00-' + "5" * 32 + "-" + "6" * 16 + '-01", "tracestate": "vendor=abc,other=1"}'
    if source == "annotation":
        escaped = carrier.replace('"', '\\"')
        pod = Pod(tmp_path, annotations=f'tekton.dev/taskrunSpanContext="{escaped}"')
    else:
        pod = Pod(tmp_path, annotations="")
        (pod.spool / "taskrun-context.json").write_text(carrier)
    result = wrapper.run("--tekton-step", "build", "--", "sh", "-c", 'echo "$TRACEPARENT $TRACESTATE"', env=pod.env)
    assert (result.returncode, result.stderr) == (0, b"")
    _, span = pod.only_end()
    assert span.attributes["tekton.trace.parent_source"] == source
    assert (span.trace_id, span.parent_span_id, span.trace_state) == ("5" * 32, "6" * 16, "vendor=abc,other=1")
    assert result.stdout.decode() == f"00-{'5' * 32}-{span.span_id}-01 vendor=abc,other=1\n"


def test_malformed_annotation_is_one_line_and_the_uid_takes_over(wrapper: Wrapper, tmp_path: Path) -> None:
    pod = Pod(tmp_path, annotations='tekton.dev/taskrunSpanContext="{\\"traceparent\\": 42}"')
    stderr = step(wrapper, pod, "sh", "-c", "exit 5")
    lines = stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("step-tracer: ignoring malformed span context in annotation")
    _, span = pod.only_end()
    assert span.trace_id == UID.replace("-", "") and span.attributes["process.exit.code"] == 5


def test_unreadable_pod_info_still_runs_the_step(wrapper: Wrapper, pod: Pod) -> None:
    (pod.podinfo / "labels").write_text("this is not the kubelet's format")
    result = wrapper.run("--tekton-step", "s", "--", "sh", "-c", "echo out; exit 7", env=pod.env)
    assert result.returncode == 7 and result.stdout == b"out\n"
    assert result.stderr.decode().count("\n") == 1 and b"ignoring pod info" in result.stderr
    _, span = pod.only_end()
    assert span.parent_span_id == "" and span.attributes["tekton.trace.parent_source"] == "none"


def test_without_a_spool_the_wrapper_exports_as_configured(wrapper: Wrapper, pod: Pod) -> None:
    env = {**pod.env, "STEP_TRACER_SPOOL": str(pod.spool / "absent")}
    assert wrapper.run("--tekton-step", "s", "--", "true", env=env).returncode == 0
    span = wrapper.only_span()
    assert span.parent_span_id == ANNOTATION_PARENT[1] and not list(pod.spool.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a read-only tmpfs")
def test_read_only_spool_is_one_line_and_the_result_is_unchanged(wrapper: Wrapper, pod: Pod) -> None:
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(pod.spool)], capture_output=True).returncode:
        pytest.skip("cannot mount tmpfs here")
    try:
        result = wrapper.run("--tekton-step", "s", "--", "sh", "-c", "echo ok; exit 9", env=pod.env)
    finally:
        subprocess.run(["umount", str(pod.spool)], check=True)
    assert result.returncode == 9 and result.stdout == b"ok\n"
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 2, lines  # the start record and the span: each one line
    assert "start record" in lines[0] and "span not written to the spool" in lines[1]


def test_a_sigkilled_wrapper_leaves_its_start_record(wrapper: Wrapper, pod: Pod) -> None:
    proc = subprocess.Popen(
        wrapper.argv("--tekton-step", "slow", "--", "sleep", "30"),
        env={**wrapper.env, **pod.env},
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while not list(pod.spool.glob("*.start")) and time.monotonic() < deadline:
        time.sleep(0.02)
    command = psutil.Process(proc.pid).children()
    os.kill(proc.pid, signal.SIGKILL)  # Tekton's step timeout: SIGKILL to the wrapper only
    proc.wait(timeout=10)
    for orphan in command:  # what the container's end would take with it
        orphan.kill()
    ((_, start),) = pod.records(".start")
    assert pod.records(".end") == []
    assert start.name == "slow" and start.end_ns == 0 and start.attributes["process.command"] == "sleep"


# run-script: the kernel runs the wrapper as a patched script's interpreter.


def script_file(
    tmp_path: Path, wrapper: Wrapper, body: str, options: str = "--tekton-step=s --tekton-step-index=1"
) -> Path:
    path = tmp_path / "script-1-abcde"
    path.write_text(f"#!{wrapper.executable} run-script {options}\n{body}")
    path.chmod(0o755)
    return path


def run_script(path: Path, wrapper: Wrapper, pod: Pod, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(path), *args], env={**wrapper.env, **pod.env}, capture_output=True, timeout=60)


def test_script_runs_with_its_own_interpreter_args_and_line_numbers(tmp_path: Path, wrapper: Wrapper, pod: Pod) -> None:
    body = '#!/bin/bash -e\necho "$# [$1] [$2]"\necho "line $LINENO"\nexit 4\n'
    result = run_script(script_file(tmp_path, wrapper, body), wrapper, pod, "a b", "c")
    assert result.returncode == 4 and result.stderr == b""
    assert result.stdout == b"2 [a b] [c]\nline 3\n"
    _, span = pod.only_end()
    attrs = span.attributes
    assert span.name == "s" and attrs["tekton.step.index"] == 1 and attrs["process.exit.code"] == 4
    assert attrs["process.command"] == str(tmp_path / "script-1-abcde")
    assert attrs["process.executable.name"] == "bash"


def test_script_without_shebang_keeps_tektons_sh_and_set_e(tmp_path: Path, wrapper: Wrapper, pod: Pod) -> None:
    # As the patcher writes it: our line, then Tekton's preamble, then the script.
    body = "#!/bin/sh\nset -e\necho before\nfalse\necho after\n"
    result = run_script(script_file(tmp_path, wrapper, body), wrapper, pod)
    assert (result.returncode, result.stdout) == (1, b"before\n")
    # A file that lost the preamble still gets Tekton's semantics.
    result = run_script(script_file(tmp_path, wrapper, "echo before\nfalse\necho after\n"), wrapper, pod)
    assert (result.returncode, result.stdout) == (1, b"before\n")


def test_python_script_through_env_with_stdin(tmp_path: Path, wrapper: Wrapper, pod: Pod) -> None:
    body = "#!/usr/bin/env python3\nimport sys\nprint(sys.argv[1:], sys.stdin.read())\nsys.exit(6)\n"
    result = subprocess.run(
        [str(script_file(tmp_path, wrapper, body)), "x"],
        env={**wrapper.env, **pod.env},
        input=b"from stdin",
        capture_output=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (6, b"['x'] from stdin\n")
    assert pod.only_end()[1].attributes["process.executable.name"] == "python3"


def test_script_step_timeout_is_in_the_start_record(tmp_path: Path, wrapper: Wrapper, pod: Pod) -> None:
    """What the sidecar needs to call a SIGKILLed step a timeout."""
    path = script_file(
        tmp_path, wrapper, "#!/bin/sh\nexit 0\n", "--tekton-step=s --tekton-step-index=0 --tekton-step-timeout=1m30s"
    )
    assert run_script(path, wrapper, pod).returncode == 0
    ((_, start),) = pod.records(".start")
    assert start.attributes["tekton.step.timeout"] == 90.0


def test_missing_script_interpreter_is_127_with_a_span(tmp_path: Path, wrapper: Wrapper, pod: Pod) -> None:
    result = run_script(script_file(tmp_path, wrapper, "#!/no/such/interpreter\necho\n"), wrapper, pod)
    assert result.returncode == 127
    assert pod.only_end()[1].attributes["error.type"] == "command_not_found"


def test_bad_wrapper_options_on_the_script_line_run_the_script_untraced(
    tmp_path: Path, wrapper: Wrapper, pod: Pod
) -> None:
    path = script_file(tmp_path, wrapper, '#!/bin/sh\necho ran "$@"\nexit 3\n', "--tekton-step-index=notanumber")
    result = run_script(path, wrapper, pod, "arg")
    assert (result.returncode, result.stdout) == (3, b"ran arg\n")
    assert result.stderr.decode().count("\n") == 1 and b"running the script untraced" in result.stderr
    assert pod.records(".end") == []


def test_script_step_with_a_pythonpath_of_its_own(tmp_path: Path, wrapper: Wrapper, pod: Pod) -> None:
    """A step's PYTHONPATH is for the step's Python: a module shadowing ours must not reach the wrapper."""
    shadow = tmp_path / "shadow" / "step_tracer"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise SystemExit('shadowed step_tracer imported')\n")
    path = script_file(tmp_path, wrapper, '#!/bin/sh\necho "$PYTHONPATH"\n')
    env = {**wrapper.env, **pod.env, "PYTHONPATH": str(tmp_path / "shadow")}
    result = subprocess.run([str(path)], env=env, capture_output=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{tmp_path / 'shadow'}\n".encode(), b"")
    assert pod.only_end()[1].attributes["process.exit.code"] == 0


def _started_at(pid: int) -> float:
    """A process's start as wall-clock time, to the clock tick (psutil's create_time rounds the boot time to
    whole seconds)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        ticks = int(f.read().rpartition(b")")[2].split()[19])
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def test_a_step_about_to_time_out_saves_its_measurements_first(wrapper: Wrapper, pod: Pod) -> None:
    """Tekton's entrypoint SIGKILLs the wrapper when the step timeout has passed since it started it: killed right
    there, the start record must already hold what was measured, taken a full reserve (1 s) before the deadline
    (so a loaded node's late wake-up still lands before the kill)."""
    timeout = 4.0  # long enough that the reserve is the full second, not a quarter of the timeout
    hog = "x = bytearray(64 << 20); x[::4096] = b'x' * len(x[::4096]); import time; time.sleep(30)"
    proc = subprocess.Popen(
        wrapper.argv(
            "--tekton-step", "hog", "--tekton-step-index", "0", "--tekton-step-timeout", f"{timeout:g}s",
            "--sample-interval", "0.2", "--", sys.executable, "-c", hog,
        ),
        env={**wrapper.env, **pod.env},
        start_new_session=True,
    )  # fmt: skip
    wrapper_process = psutil.Process(proc.pid)
    deadline = _started_at(proc.pid) + timeout  # Tekton's clock starts when it starts the wrapper
    try:
        time.sleep(max(deadline - time.time(), 0.0))
        command = wrapper_process.children()
        os.kill(proc.pid, signal.SIGKILL)  # where and when Tekton's entrypoint kills
        killed_at = time.time()
        proc.wait(timeout=10)
    finally:
        for orphan in wrapper_process.children() if proc.poll() is None else command:
            orphan.kill()
    ((_, record),) = pod.records(".start")
    assert pod.records(".end") == []
    saved_at = record.attributes.get("tekton.step.measured_until")
    assert isinstance(saved_at, int), "no checkpoint before Tekton's kill"
    reserve = deadline - saved_at / 1e9
    assert 0.5 <= reserve <= 1.0 + 0.05, f"measured {reserve:.2f}s before the deadline, want the 1 s reserve"
    assert killed_at >= deadline and saved_at / 1e9 < killed_at
    peak = record.attributes["process.memory.peak"]
    assert isinstance(peak, int) and peak >= 64 << 20
    assert record.end_ns == 0


def test_a_step_that_finishes_after_its_checkpoint_has_a_normal_span(wrapper: Wrapper, pod: Pod) -> None:
    result = wrapper.run(
        "--tekton-step", "s", "--tekton-step-timeout", "1s", "--", "sh", "-c", "sleep 1.2; exit 2", env=pod.env
    )
    assert result.returncode == 2 and result.stderr == b""
    _, span = pod.only_end()
    assert span.attributes["process.exit.code"] == 2 and "tekton.step.measured_until" not in span.attributes

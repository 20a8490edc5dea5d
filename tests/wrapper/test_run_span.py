"""The span `step-tracer run` records: the contract dashboards are built on, checked at a real receiver."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Wrapper
from tests.otlp_receiver import Blackhole, GrpcReceiver, HttpReceiver, ReceivedSpan, TlsCA

PY = sys.executable
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


def _http(receiver: HttpReceiver) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}


def _number(attrs: dict[str, Any], key: str) -> float:
    value = attrs[key]
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
    return float(value)


def _single(receiver: HttpReceiver | GrpcReceiver) -> ReceivedSpan:
    spans = receiver.wait_for_spans(1)
    assert len(spans) == 1, spans
    return spans[0]


def test_span_fields_over_otlp_http(wrapper: Wrapper, http_receiver: HttpReceiver, tmp_path: Path) -> None:
    env = {
        **_http(http_receiver),
        "TRACEPARENT": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01",
        "TRACESTATE": "vendor=abc,other=1",
        "OTEL_SERVICE_NAME": "konflux-build",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci,team=build%20tools",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=acme",
    }
    before = time.time_ns()
    proc = wrapper.run(
        "--attr", "team=build", "--", "sh", "-c", 'echo "$TRACEPARENT"; echo "$TRACESTATE"; exit 3', env=env
    )
    after = time.time_ns()
    assert proc.returncode == 3
    child_traceparent, child_tracestate = proc.stdout.decode().split()
    span = _single(http_receiver)
    assert span.name == "sh"
    assert span.kind == 1  # INTERNAL
    assert span.trace_id == PARENT_TRACE
    assert span.parent_span_id == PARENT_SPAN
    assert span.trace_state == "vendor=abc,other=1"
    assert child_traceparent == f"00-{PARENT_TRACE}-{span.span_id}-01"
    assert child_tracestate == "vendor=abc,other=1"
    assert before <= span.start_ns < span.end_ns <= after
    assert span.status_code == 2
    assert span.status_message == "exit code 3"
    attrs = span.attributes
    assert attrs["process.exit.code"] == 3
    assert attrs["process.command"] == "sh"
    assert attrs["process.executable.name"] == "sh"
    assert str(attrs["process.executable.path"]).endswith("/sh")
    assert isinstance(attrs["process.pid"], int) and attrs["process.pid"] > 0
    assert attrs["cicd.pipeline.task.run.result"] == "failure"
    assert attrs["error.type"] == "exit_code_3"
    assert attrs["team"] == "build"
    assert isinstance(attrs["process.cpu.time.user"], float)
    assert isinstance(attrs["process.cpu.time.system"], float)
    assert "process.memory.peak" not in attrs  # sh stays below the wrapper's own size: not measurable, not faked
    assert "container.memory.peak" not in attrs  # not a Tekton step: the cgroup is not the command's own
    assert "process.command_args" not in attrs
    assert span.resource["service.name"] == "konflux-build"
    assert span.resource["deployment.environment"] == "ci"
    assert span.resource["team"] == "build tools"
    assert span.scope_name == "step-tracer"
    assert http_receiver.requests[0].headers.get("x-tenant") == "acme"


def test_span_over_otlp_grpc(wrapper: Wrapper, grpc_receiver: GrpcReceiver) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": grpc_receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    proc = wrapper.run("--name", "compile", "--", "true", env=env)
    assert proc.returncode == 0, proc.stderr
    span = _single(grpc_receiver)
    assert span.name == "compile"
    assert span.status_code == 0
    assert span.attributes["cicd.pipeline.task.run.result"] == "success"
    assert span.parent_span_id == ""


def test_args_recorded_only_on_request_and_masked(wrapper: Wrapper, http_receiver: HttpReceiver) -> None:
    argv = ["echo", "--token=s3cr3t", "--password", "hunter2", "API_KEY=abc", "https://u:pw@example.com/x", "plain"]
    assert wrapper.run("--record-args", "--", *argv, env=_http(http_receiver)).returncode == 0
    attrs = _single(http_receiver).attributes
    assert attrs["process.command_args"] == [
        "echo", "--token=***", "--password", "***", "API_KEY=***", "https://u:***@example.com/x", "plain",
    ]  # fmt: skip
    recorded = repr(attrs)
    for secret in ("s3cr3t", "hunter2", "abc", ":pw@"):
        assert secret not in recorded


def test_environment_is_never_recorded(wrapper: Wrapper, http_receiver: HttpReceiver) -> None:
    env = {**_http(http_receiver), "MY_SECRET_VALUE": "do-not-leak-4711"}
    assert wrapper.run("--record-args", "--", "true", env=env).returncode == 0
    span = _single(http_receiver)
    assert "do-not-leak-4711" not in repr(span.attributes) + repr(span.resource)


def test_malformed_traceparent_starts_a_new_trace_with_one_warning(
    wrapper: Wrapper, http_receiver: HttpReceiver
) -> None:
    env = {**_http(http_receiver), "TRACEPARENT": "00-not-a-trace-01"}
    proc = wrapper.run("--", "sh", "-c", 'echo "$TRACEPARENT"', env=env)
    assert proc.returncode == 0
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and "malformed TRACEPARENT" in lines[0]
    span = _single(http_receiver)
    assert span.parent_span_id == ""
    assert proc.stdout.decode().strip() == f"00-{span.trace_id}-{span.span_id}-01"


def test_unsampled_parent_exports_nothing_and_propagates_the_flag(wrapper: Wrapper, dead_port: int) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{dead_port}",
        "TRACEPARENT": f"00-{PARENT_TRACE}-{PARENT_SPAN}-00",
    }
    proc = wrapper.run("--", "sh", "-c", 'echo "$TRACEPARENT"', env=env)
    assert proc.returncode == 0
    traceparent = proc.stdout.decode().strip()
    assert traceparent.startswith(f"00-{PARENT_TRACE}-") and traceparent.endswith("-00")
    assert PARENT_SPAN not in traceparent
    # Nothing sent, without waiting and hoping: the wrapper had exited, it waits for any export it starts, and one
    # to this closed port would have been a "connection refused" line.
    assert proc.stderr == b""


def test_console_exporter_writes_to_stderr_not_stdout(wrapper: Wrapper) -> None:
    proc = wrapper.run("--", "sh", "-c", "echo out", env={"OTEL_TRACES_EXPORTER": "console"})
    assert proc.stdout == b"out\n"
    assert b'"resourceSpans"' in proc.stderr


def test_default_without_collector_writes_the_file_that_show_reads(wrapper: Wrapper) -> None:
    assert wrapper.run("--name", "unit-tests", "--", "sh", "-c", "exit 1").returncode == 1
    shown = subprocess.run(
        [wrapper.executable, "show", str(wrapper.file)], capture_output=True, env=wrapper.env, check=True
    )
    text = shown.stdout.decode()
    assert re.search(r"^✗ unit-tests +failure +1  ", text, re.MULTILINE), text  # the waterfall: mark, result, exit


def _collector_failure_env(kind: str, http_receiver: HttpReceiver, blackhole: Blackhole, dead_port: int,
                           tls_ca: TlsCA) -> dict[str, str]:  # fmt: skip
    if kind == "down":
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{dead_port}"}
    if kind == "hang-after-accept":
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{blackhole.port}"}
    if kind == "http-500":
        http_receiver.set_mode("error")
        return _http(http_receiver)
    if kind == "hang-in-request":
        http_receiver.set_mode("hang")
        return _http(http_receiver)
    # TLS mismatch: the client speaks TLS to a plain-HTTP collector.
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint.replace("http://", "https://"),
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tls_ca.write_ca_pem()),
    }


@pytest.mark.parametrize("kind", ["down", "hang-after-accept", "http-500", "hang-in-request", "tls-mismatch"])
@pytest.mark.parametrize("code", [0, 7])
def test_broken_collector_changes_nothing_but_one_line(
    wrapper: Wrapper,
    http_receiver: HttpReceiver,
    blackhole: Blackhole,
    dead_port: int,
    tls_ca: TlsCA,
    kind: str,
    code: int,
) -> None:
    env = {
        **_collector_failure_env(kind, http_receiver, blackhole, dead_port, tls_ca),
        "STEP_TRACER_EXPORT_DEADLINE": "1",
    }
    start = time.monotonic()
    proc = wrapper.run("--", "sh", "-c", f"echo hello; exit {code}", env=env)
    elapsed = time.monotonic() - start
    assert proc.returncode == code
    assert proc.stdout == b"hello\n"
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("step-tracer: ")
    assert elapsed < 6, f"export not bounded: {elapsed:.1f}s"


def test_grpc_collector_down_is_bounded(wrapper: Wrapper, dead_port: int) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{dead_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "STEP_TRACER_EXPORT_DEADLINE": "1",
    }
    start = time.monotonic()
    proc = wrapper.run("--", "sh", "-c", "exit 9", env=env)
    assert proc.returncode == 9
    assert len(proc.stderr.decode().splitlines()) == 1
    assert time.monotonic() - start < 8


def test_tls_collector_with_ca_receives_the_span(
    wrapper: Wrapper, tls_http_receiver: HttpReceiver, tls_ca: TlsCA
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": tls_http_receiver.endpoint,
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tls_ca.write_ca_pem()),
    }
    proc = wrapper.run("--", "true", env=env)
    assert proc.returncode == 0, proc.stderr
    assert _single(tls_http_receiver).name == "true"


def test_memory_peak_of_a_200_mib_child_within_10_percent(wrapper: Wrapper) -> None:
    size = 200 * 1024 * 1024
    code = f"b = bytearray({size}); b[::4096] = b'x' * len(b[::4096])"
    assert wrapper.run("--", PY, "-c", code).returncode == 0
    peak = wrapper.only_span().attributes["process.memory.peak"]
    assert isinstance(peak, int)
    assert size * 0.9 <= peak <= size * 1.1 + 30 * 1024 * 1024  # + the interpreter itself


def test_memory_peak_is_the_commands_alone(wrapper: Wrapper) -> None:
    """ru_maxrss of a spawned child starts at the spawner's own peak (the kernel records it at exec): a wrapped
    `true` read ~9 MiB, the wrapper's size. Above that size the figure is the command's own and agrees with GNU
    time's, whose own small size is all it adds; below it there is no figure at all rather than the wrapper's."""
    assert wrapper.run("--sample-interval", "0", "--", "true").returncode == 0
    assert "process.memory.peak" not in wrapper.only_span().attributes

    size = 40 * 1024 * 1024
    code = f"b = bytearray({size}); b[::4096] = b'x' * len(b[::4096])"
    wrapper.file.unlink()
    assert wrapper.run("--sample-interval", "0", "--", PY, "-c", code).returncode == 0
    peak = wrapper.only_span().attributes["process.memory.peak"]
    assert isinstance(peak, int) and peak > size
    gnu_time = shutil.which("time", path="/usr/bin")
    if gnu_time is None:
        pytest.skip("no /usr/bin/time to compare with")
    timed = subprocess.run([gnu_time, "-f", "%M", PY, "-c", code], capture_output=True, text=True, check=True)
    reference = int(timed.stderr.split()[-1]) * 1024
    assert abs(peak - reference) <= 0.05 * reference, (peak, reference)


def test_cpu_user_time_of_a_one_second_burn_within_10_percent(wrapper: Wrapper) -> None:
    """The child burns user CPU (checking its own clock rarely, so syscalls stay out of it) until the kernel
    says one second; the span must agree within 10%."""
    code = "import os\nwhile os.times().user < 1.0:\n    for _ in range(100000): pass\nprint(os.times().user)"
    proc = wrapper.run("--", PY, "-c", code)
    assert proc.returncode == 0
    own = float(proc.stdout)
    user = wrapper.only_span().attributes["process.cpu.time.user"]
    assert isinstance(user, float)
    assert own * 0.9 <= user <= own * 1.1
    assert 0.9 <= user <= 1.2


def test_cpu_of_grandchildren_is_counted(wrapper: Wrapper) -> None:
    burn = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass"
    assert wrapper.run("--", "sh", "-c", f'"{PY}" -c "{burn}" & "{PY}" -c "{burn}" & wait').returncode == 0
    attrs = wrapper.only_span().attributes
    assert _number(attrs, "process.cpu.time.user") + _number(attrs, "process.cpu.time.system") >= 0.9


def test_tree_memory_is_sampled_across_processes(wrapper: Wrapper) -> None:
    size = 80 * 1024 * 1024
    touch = f"b = bytearray({size}); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(1.5)"
    proc = wrapper.run(
        "--sample-interval", "0.3s", "--", "sh", "-c", f'"{PY}" -c "{touch}" & "{PY}" -c "{touch}" & wait'
    )
    assert proc.returncode == 0
    peak = wrapper.only_span().attributes["process.memory.peak"]
    assert isinstance(peak, int) and peak >= 2 * size * 0.9


def test_container_figures_from_the_cgroup(wrapper: Wrapper) -> None:
    if not Path("/proc/self/cgroup").exists():
        pytest.skip("no cgroups")
    code = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    assert wrapper.run("--", PY, "-c", code).returncode == 0
    assert not [k for k in wrapper.only_span().attributes if k.startswith("container.")]  # a shared cgroup here
    wrapper.file.unlink()
    assert wrapper.run("--tekton-step", "build", "--", PY, "-c", code).returncode == 0  # a step's own container
    attrs = wrapper.only_span().attributes
    if "container.cpu.time" not in attrs:
        pytest.skip("cgroup not readable here")
    assert _number(attrs, "container.cpu.time") >= 0.2
    assert _number(attrs, "container.memory.peak") > 0


def _memory_cgroup() -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return base if base.is_dir() else Path("/sys/fs/cgroup/memory")
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return Path("/sys/fs/cgroup") / path.lstrip("/")
    return None


@pytest.mark.root
def test_oom_kill_is_visible_on_the_span(wrapper: Wrapper) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a memory cgroup")
    base = _memory_cgroup()
    if base is None:
        pytest.skip("no memory cgroup")
    group = base / f"step-tracer-oom-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as err:
        pytest.skip(f"cannot create a memory cgroup: {err}")
    try:
        v2 = (group / "memory.max").exists()
        (group / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(64 * 1024 * 1024))
        if not v2:
            (group / "memory.memsw.limit_in_bytes").write_text(str(64 * 1024 * 1024)) if (
                group / "memory.memsw.limit_in_bytes"
            ).exists() else None
        hog = "b = bytearray(400 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"
        enter = f'echo $$ > "{group}/cgroup.procs" && exec "$@"'
        proc = subprocess.run(
            ["sh", "-c", enter, "sh", *wrapper.argv("--tekton-step", "hog", "--", PY, "-c", hog)],
            env=wrapper.env,
            capture_output=True,
            timeout=60,
        )
        assert proc.returncode == -9, proc.stderr
        attrs = wrapper.only_span().attributes
        assert attrs["error.type"] == "oom_kill"
        assert _number(attrs, "container.memory.oom_kills") >= 1
        assert attrs["cicd.pipeline.task.run.result"] == "error"
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


@pytest.mark.root
def test_read_only_filesystem_for_the_span_file(wrapper: Wrapper, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount tmpfs here")
    try:
        proc = wrapper.run("--", "sh", "-c", "echo fine; exit 6", env={"STEP_TRACER_FILE": str(ro / "s.jsonl")})
    finally:
        subprocess.run(["umount", str(ro)], check=False)
    assert proc.returncode == 6
    assert proc.stdout == b"fine\n"
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and "Read-only file system" in lines[0]


@pytest.mark.root
def test_unknown_uid_without_home_still_runs_and_records(wrapper: Wrapper, tmp_path: Path) -> None:
    """A UID with no passwd entry and no HOME (OpenShift's arbitrary UIDs): default file path under /tmp.

    setpriv keeps DAC override as an ambient capability only so this UID can read the test venv under /root.
    """
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to switch to an unknown uid")
    uid = 54000 + os.getpid() % 1000
    default_file = Path(f"/tmp/step-tracer-{uid}/spans.jsonl")
    before = default_file.read_text().count("\n") if default_file.exists() else 0
    env = {k: v for k, v in wrapper.env.items() if k not in ("HOME", "STEP_TRACER_FILE", "XDG_STATE_HOME")}
    caps = "+dac_override,+dac_read_search"
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", f"--inh-caps={caps}",
               f"--ambient-caps={caps}", "--"]  # fmt: skip
    proc = subprocess.run(
        [*setpriv, *wrapper.argv("--", "sh", "-c", "id -u; exit 3")], env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == f"{uid}\n".encode()
    assert proc.stderr == b""
    assert default_file.read_text().count("\n") == before + 1

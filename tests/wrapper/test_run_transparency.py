"""`step-tracer run` must be invisible to the step: exit codes, signals, stdio, tty, cwd and environment."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Wrapper

PY = sys.executable


@pytest.mark.parametrize("code", [0, 1, 2, 3, 42, 100, 126, 127, 128, 130, 200, 254, 255])
def test_exit_code_is_mirrored(wrapper: Wrapper, code: int) -> None:
    proc = wrapper.run("--", "sh", "-c", f"exit {code}")
    assert proc.returncode == code
    span = wrapper.only_span()
    assert span.attributes["process.exit.code"] == code
    assert span.attributes["cicd.pipeline.task.run.result"] == ("success" if code == 0 else "failure")
    if code:
        assert span.attributes["error.type"] == f"exit_code_{code}"
        assert span.status_code == 2
    else:
        assert "error.type" not in span.attributes
        assert span.status_code == 0
    assert proc.stderr == b""


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL, signal.SIGABRT, signal.SIGTERM, signal.SIGUSR1])
def test_signal_death_ends_the_wrapper_by_that_signal(wrapper: Wrapper, sig: signal.Signals) -> None:
    """The parent reads the wait status it would read without the wrapper (Tekton's entrypoint records a
    signalled command as -1; a plain exit 128+N would read as an exit); the span records 128+N."""
    proc = wrapper.run("--", PY, "-c", f"import os; os.kill(os.getpid(), {int(sig)})")
    assert proc.returncode == -sig
    span = wrapper.only_span()
    assert span.attributes["process.exit.code"] == 128 + sig
    assert span.attributes["error.type"] == sig.name
    assert span.attributes["cicd.pipeline.task.run.result"] == "failure"


def test_command_not_found_is_127_with_reason(wrapper: Wrapper) -> None:
    proc = wrapper.run("--", "no-such-command-xyz", "arg")
    assert proc.returncode == 127
    assert proc.stderr.decode().splitlines() == ["step-tracer: no-such-command-xyz: command not found"]
    span = wrapper.only_span()
    assert span.attributes["error.type"] == "command_not_found"
    assert span.attributes["cicd.pipeline.task.run.result"] == "error"
    assert "command not found" in span.status_message


def test_not_executable_is_126(wrapper: Wrapper, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    proc = wrapper.run("--", str(script))
    assert proc.returncode == 126
    assert wrapper.only_span().attributes["error.type"] == "not_executable"


def test_stdin_stdout_stderr_pass_through_unbuffered_and_large(wrapper: Wrapper) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    code = (
        "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data[::-1]); "
        "sys.stderr.buffer.write(data[:1000])"
    )
    proc = wrapper.run("--", PY, "-c", code, input=payload)
    assert proc.returncode == 0
    assert proc.stdout == payload[::-1]
    assert proc.stderr == payload[:1000]


def test_stdio_are_the_wrappers_own_file_descriptors(wrapper: Wrapper, tmp_path: Path) -> None:
    """No pipes in between: the child writes to the very file the wrapper was given."""
    out = tmp_path / "out"
    code = "import os; print(os.readlink('/proc/self/fd/1')); print(os.readlink('/proc/self/fd/0'))"
    with out.open("wb") as stdout, open("/dev/null", "rb") as stdin:
        proc = subprocess.run(wrapper.argv("--", PY, "-c", code), stdout=stdout, stdin=stdin, env=wrapper.env)
    assert proc.returncode == 0
    assert out.read_text().splitlines() == [str(out), "/dev/null"]


def _env_and_cwd_code() -> str:
    return "import os, json; print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ)}))"


def test_cwd_and_environment_unchanged_but_traceparent(wrapper: Wrapper, tmp_path: Path) -> None:
    env = {
        **wrapper.env,
        "WEIRD": "a b\tc=d\nnewline",
        "EMPTY": "",
        "TRACESTATE": "vendor=x",
        "BAGGAGE": "k=v",
    }
    bare = subprocess.run([PY, "-c", _env_and_cwd_code()], env=env, cwd=tmp_path, capture_output=True, check=True)
    wrapped = subprocess.run(
        wrapper.argv("--", PY, "-c", _env_and_cwd_code()),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    want, got = json.loads(bare.stdout), json.loads(wrapped.stdout)
    assert got["cwd"] == want["cwd"] == str(tmp_path)
    traceparent = got["env"].pop("TRACEPARENT")
    assert got["env"] == want["env"]
    span = wrapper.only_span()
    assert traceparent == f"00-{span.trace_id}-{span.span_id}-01"


def test_non_utf8_environment_and_arguments_round_trip(wrapper: Wrapper, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {os.fsencode(k): os.fsencode(v) for k, v in wrapper.env.items()}
    env[b"RAW"] = b"\xff\xfe latin-1 \xe9"
    proc = subprocess.run(
        [
            wrapper.executable,
            "run",
            "--",
            "sh",
            "-c",
            'printf "%s|%s" "$RAW" "$1" > "$2"',
            "sh",
            b"\xc3\x28",
            out,
        ],
        env=env,
    )
    assert proc.returncode == 0
    assert out.read_bytes() == b"\xff\xfe latin-1 \xe9|\xc3\x28"


def test_python_ignored_signals_are_reset_for_the_child(wrapper: Wrapper) -> None:
    """CPython ignores SIGPIPE; an unwrapped `yes | head` relies on SIGPIPE killing `yes`."""
    proc = wrapper.run("--", "sh", "-c", "yes | head -n 1 >/dev/null; grep -E '^SigIgn' /proc/self/status")
    assert proc.returncode == 0
    ignored = int(proc.stdout.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))


def _read_until(fd: int, marker: bytes, deadline: float) -> bytes:
    """What the terminal's other end printed, up to and including `marker` (or all of it once the end is gone)."""
    output = b""
    while marker not in output and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the terminal's other end is gone
                break
            if not chunk:
                break
            output += chunk
    return output


def test_terminal_stays_a_terminal_and_ctrl_c_arrives_once(wrapper: Wrapper, tmp_path: Path) -> None:
    counts = tmp_path / "counts"
    code = f"""
import os, signal, sys
n = 0
def on_int(*_):
    global n
    n += 1
    os.write(1, b"INT\\n")
signal.signal(signal.SIGINT, on_int)
print("TTY", os.isatty(0), os.isatty(1), os.isatty(2), flush=True)
line = sys.stdin.readline()
open({str(counts)!r}, "w").write(f"{{line.strip()}} {{n}}")
"""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(wrapper.executable, wrapper.argv("--", PY, "-c", code), wrapper.env)
    deadline = time.monotonic() + 20
    assert b"TTY True True True\r\n" in _read_until(fd, b"\n", deadline)
    os.write(fd, b"\x03")  # Ctrl-C from the terminal: the foreground group, once
    assert b"INT" in _read_until(fd, b"INT", deadline)  # handled: typing on cannot be flushed with the ^C
    os.write(fd, b"hello\n")
    _read_until(fd, b"\0", deadline)  # to the end
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert counts.read_text() == "hello 1"


SIGNALS = [
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
]

_COUNTER = """
import os, signal, sys, time
ready, stop, out = sys.argv[1:4]
counts = {}
def handler(signo, _frame):
    counts[signo] = counts.get(signo, 0) + 1
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
          signal.SIGWINCH):
    signal.signal(s, handler)
open(ready, "w").close()
while not os.path.exists(stop):
    time.sleep(0.01)
open(out, "w").write(repr(counts))
"""


def _wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("to_group", [False, True], ids=["to-wrapper", "to-group"])
@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_signal_reaches_child_exactly_once(
    wrapper: Wrapper, tmp_path: Path, sig: signal.Signals, to_group: bool
) -> None:
    """Tekton's entrypoint starts the step in its own process group and signals the whole group."""
    ready, stop, out = tmp_path / "ready", tmp_path / "stop", tmp_path / "out"
    proc = subprocess.Popen(
        wrapper.argv("--", PY, "-c", _COUNTER, str(ready), str(stop), str(out)),
        env=wrapper.env,
        process_group=0,
        stdin=subprocess.DEVNULL,
    )
    _wait_for(ready)
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    time.sleep(0.3)
    stop.touch()
    assert proc.wait(timeout=20) == 0
    assert out.read_text() == repr({int(sig): 1})
    span = wrapper.only_span()
    assert [e.attributes["signal"] for e in span.events] == [sig.name]


def test_a_command_that_survives_sigint_and_then_crashes_reports_the_crash(wrapper: Wrapper, tmp_path: Path) -> None:
    """The SIGINT we passed on did not end the command; the SIGABRT it then died of did."""
    ready = tmp_path / "ready"
    code = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGABRT))\n"
        "open(sys.argv[1], 'w').close()\n"
        "time.sleep(60)"
    )
    proc = subprocess.Popen(wrapper.argv("--", PY, "-c", code, str(ready)), env=wrapper.env, process_group=0)
    _wait_for(ready)
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=20) == -signal.SIGABRT
    span = wrapper.only_span()
    assert [e.attributes["signal"] for e in span.events] == ["SIGINT"]
    assert span.attributes["error.type"] == "SIGABRT"
    assert span.attributes["cicd.pipeline.task.run.result"] == "failure"
    assert span.status_message == "killed by SIGABRT after SIGINT was passed on"


def test_sigterm_to_group_mid_step_is_a_cancellation(wrapper: Wrapper, tmp_path: Path) -> None:
    """Pod deletion: SIGTERM to the whole group while the step runs."""
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        wrapper.argv("--", "sh", "-c", f"touch {ready}; sleep 30"), env=wrapper.env, process_group=0
    )
    _wait_for(ready)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=20) == -signal.SIGTERM
    span = wrapper.only_span()
    assert span.attributes["cicd.pipeline.task.run.result"] == "cancellation"
    assert span.attributes["error.type"] == "SIGTERM"


def test_wrapper_waits_for_child_and_reaps_it(wrapper: Wrapper) -> None:
    start = time.monotonic()
    proc = wrapper.run("--", "sh", "-c", "sleep 0.5; exit 7")
    assert proc.returncode == 7
    assert time.monotonic() - start >= 0.5


def test_timeout_terminates_the_group_and_still_records(wrapper: Wrapper) -> None:
    start = time.monotonic()
    proc = wrapper.run("--timeout", "0.5s", "--", "sh", "-c", "sleep 30 & wait")
    elapsed = time.monotonic() - start
    assert proc.returncode == 128 + signal.SIGTERM
    assert elapsed < 15
    span = wrapper.only_span()
    assert span.attributes["cicd.pipeline.task.run.result"] == "timeout"
    assert span.attributes["error.type"] == "timeout"
    assert span.status_message == "timed out after 0.5s; terminated"


def test_timeout_kills_a_child_that_ignores_sigterm(wrapper: Wrapper) -> None:
    start = time.monotonic()
    proc = wrapper.run("--timeout", "300ms", "--kill-after", "300ms", "--", "sh", "-c", "trap '' TERM; sleep 30")
    assert proc.returncode == 128 + signal.SIGKILL
    assert time.monotonic() - start < 15
    span = wrapper.only_span()
    assert span.attributes["cicd.pipeline.task.run.result"] == "timeout"
    assert span.status_message.endswith("killed")


def test_timeout_zero_is_no_timeout(wrapper: Wrapper) -> None:
    """As GNU timeout and Tekton read it. A 0 s deadline would have stopped the command at once."""
    proc = wrapper.run("--timeout", "0", "--", "sh", "-c", "sleep 0.3; exit 3")
    assert proc.returncode == 3, proc.stderr
    assert wrapper.only_span().attributes["cicd.pipeline.task.run.result"] == "failure"


def test_kill_after_zero_sends_no_sigkill(wrapper: Wrapper) -> None:
    """GNU timeout's `-k 0`: SIGTERM only. The command ignores SIGTERM from its start (the disposition the wrapper was
    started with passes on), so nothing races the wrapper's timer."""
    argv = wrapper.argv("--timeout", "0.1s", "--kill-after", "0", "--", "sh", "-c", "sleep 0.5; exit 4")
    proc = subprocess.run(
        ["sh", "-c", "trap '' TERM; exec \"$@\"", "sh", *argv], env=wrapper.env, capture_output=True, timeout=60
    )
    assert proc.returncode == 4, proc.stderr
    span = wrapper.only_span()
    assert span.attributes["cicd.pipeline.task.run.result"] == "timeout"


def test_tekton_step_timeout_is_recorded_not_enforced(wrapper: Wrapper) -> None:
    """Tekton enforces the step timeout itself (SIGKILL, TimeoutExceeded, later steps skipped): acting earlier would
    change the TaskRun's outcome, so the command runs on past it and its own exit code stands."""
    proc = wrapper.run("--tekton-step", "build", "--tekton-step-timeout", "1s", "--", "sh", "-c", "sleep 1.5; exit 4")
    assert proc.returncode == 4
    span = wrapper.only_span()
    assert (span.end_ns - span.start_ns) / 1e9 >= 1.5
    assert span.name == "build" and span.attributes["cicd.pipeline.task.run.result"] == "failure"
    assert span.attributes["tekton.step.timeout"] == 1.0


def test_c_locale_coercion_does_not_reach_the_command(wrapper: Wrapper) -> None:
    """Under the C locale CPython sets LC_CTYPE=C.UTF-8 in its own environment (PEP 538); the step must not see it."""
    env = {k: v for k, v in wrapper.env.items() if not k.startswith(("LC_", "LANG"))}
    for extra in ({}, {"PYTHONPATH": "/nonexistent"}):  # the second goes through the launcher's -I re-exec
        proc = subprocess.run(
            wrapper.argv("--", "env"), env={**env, **extra}, capture_output=True, timeout=60, check=True
        )
        seen = sorted(line for line in proc.stdout.decode().splitlines() if not line.startswith("TRACEPARENT="))
        assert seen == sorted(f"{k}={v}" for k, v in {**env, **extra}.items())


def test_bad_wrapper_option_still_runs_the_command(wrapper: Wrapper) -> None:
    proc = wrapper.run("--timeout", "soon", "--", "sh", "-c", "echo ran; exit 4")
    assert proc.returncode == 4
    assert proc.stdout == b"ran\n"
    assert proc.stderr.decode().count("\n") == 1
    assert "running the command untraced" in proc.stderr.decode()


def test_option_missing_its_value_runs_the_command_and_records_no_span_named_dashdash(wrapper: Wrapper) -> None:
    proc = wrapper.run("--name", "--", "sh", "-c", "echo ran; exit 4")
    assert proc.returncode == 4
    assert proc.stdout == b"ran\n"
    assert proc.stderr.decode().splitlines() == [
        "step-tracer: --name needs a value: --name NAME; running the command untraced"
    ]
    assert wrapper.spans() == []


def test_otel_setting_warnings_carry_the_prefix_once(wrapper: Wrapper) -> None:
    env = {"OTEL_EXPORTER_OTLP_TIMEOUT": "soon", "OTEL_TRACES_EXPORTER": "bogus,file", "OTEL_RESOURCE_ATTRIBUTES": "x"}
    proc = wrapper.run("--", "true", env=env)
    assert proc.returncode == 0
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith("step-tracer: ") and line.count("step-tracer:") == 1 for line in lines), lines


def test_sdk_disabled_runs_command_without_a_span(wrapper: Wrapper) -> None:
    proc = wrapper.run("--", "sh", "-c", 'echo "${TRACEPARENT:-none}"; exit 5', env={"OTEL_SDK_DISABLED": "true"})
    assert proc.returncode == 5
    assert proc.stdout == b"none\n"
    assert wrapper.spans() == []


def test_untraced_exec_keeps_127_and_default_sigpipe(wrapper: Wrapper) -> None:
    """With tracing off the wrapper execs the command; the same exit codes and signal dispositions apply."""
    off = {"OTEL_SDK_DISABLED": "true"}
    proc = wrapper.run("--", "no-such-command-xyz", env=off)
    assert proc.returncode == 127
    assert proc.stderr.decode().splitlines() == ["step-tracer: no-such-command-xyz: command not found"]
    proc = wrapper.run("--", "sh", "-c", "grep -E '^SigIgn' /proc/self/status", env=off)
    assert not int(proc.stdout.split()[1], 16) & (1 << (signal.SIGPIPE - 1))

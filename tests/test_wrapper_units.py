"""The wrapper's decisions, without processes: options, durations, trace context, results, redaction."""

from __future__ import annotations

import os

import pytest

from step_tracer import context
from step_tracer.wrapper import options, outcome, process
from step_tracer.wrapper.entrypoint import effective_timeout
from step_tracer.wrapper.redact import redact


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10", 10.0), ("1.5", 1.5), ("500ms", 0.5), ("90s", 90.0), ("1h30m", 5400.0), ("1h0m0s", 3600.0),
     ("2m3.5s", 123.5), ("250us", 0.00025), ("100ns", 1e-7)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert options.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "10x", "1h30", "m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        options.parse_duration(text)


def test_options_stop_at_double_dash_or_first_operand() -> None:
    opts = options.parse(["--name", "n", "--attr", "a=1", "--attr=b=2=3", "--record-args", "--", "cmd", "--name"])
    assert (opts.name, opts.attrs, opts.record_args, opts.command) == (
        "n",
        {"a": "1", "b": "2=3"},
        True,
        ["cmd", "--name"],
    )
    assert options.parse(["--timeout=5s", "make", "-j4"]).command == ["make", "-j4"]
    assert options.parse(["--timeout=5s", "make"]).timeout == 5.0


def test_option_errors_keep_the_command_when_it_is_known() -> None:
    with pytest.raises(options.UsageError) as err:
        options.parse(["--bogus", "--", "true", "x"])
    assert err.value.command == ["true", "x"]
    with pytest.raises(options.UsageError) as err:
        options.parse(["--timeout"])
    assert err.value.command is None
    with pytest.raises(options.UsageError):
        options.parse(["--name", "x"])


def test_help_only_among_the_wrappers_own_options() -> None:
    assert options.wants_help(["--help"])
    assert options.wants_help(["--name", "x", "-h"]) is True
    assert not options.wants_help(["--", "ls", "--help"])
    assert not options.wants_help(["ls", "--help"])


TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "value",
    [
        TP.upper(),  # ids must be lowercase
        "ff" + TP[2:],  # version ff is invalid
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        TP + "-extra",  # version 00 has exactly four fields
        TP[:-1],
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "",
    ],
)
def test_malformed_traceparents(value: str) -> None:
    assert context.parse_traceparent(value) is None


def test_traceparent_parsing_and_future_versions() -> None:
    ctx = context.parse_traceparent(TP, " a=b ")
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.sampled, ctx.trace_state) == (TP[3:35], TP[36:52], True, "a=b")
    assert ctx.traceparent() == TP
    future = context.parse_traceparent("01" + TP[2:] + "-whatever")
    assert future is not None and future.span_id == TP[36:52]
    unsampled = context.parse_traceparent(TP[:-2] + "00")
    assert unsampled is not None and not unsampled.sampled


def _exit(status: int, forwarded: list[int] | None = None, timed_out: bool = False) -> process.ChildExit:
    child = process.ChildExit(123, status, None)
    child.forwarded = [(0, s) for s in forwarded or []]
    child.timed_out = timed_out
    return child


def _signaled(signo: int) -> int:
    return signo  # a wait status for "killed by signo" is the signal number itself


def _exited(code: int) -> int:
    return code << 8


@pytest.mark.parametrize(
    ("status", "forwarded", "timed_out", "oom", "want"),
    [
        (_exited(0), [], False, 0, ("success", "")),
        (_exited(2), [], False, 0, ("failure", "exit_code_2")),
        (_signaled(11), [], False, 0, ("failure", "SIGSEGV")),
        (_signaled(15), [15], False, 0, ("cancellation", "SIGTERM")),
        (_exited(130), [2], False, 0, ("cancellation", "SIGINT")),
        (_exited(0), [15], False, 0, ("success", "")),
        (_signaled(10), [10], False, 0, ("failure", "SIGUSR1")),
        (_signaled(15), [], True, 0, ("timeout", "timeout")),
        (_signaled(9), [], False, 1, ("error", "oom_kill")),
        (_exited(1), [], False, 2, ("error", "oom_kill")),
    ],
)
def test_results(status: int, forwarded: list[int], timed_out: bool, oom: int, want: tuple[str, str]) -> None:
    got = outcome.classify(_exit(status, forwarded, timed_out), oom, 5.0)
    assert (got.result, got.error_type) == want


def test_exit_code_of_signal_death_is_128_plus_n() -> None:
    assert _exit(_signaled(9)).exit_code == 137
    assert _exit(_exited(255)).exit_code == 255


def test_not_started() -> None:
    assert outcome.not_started(127, "x: command not found").error_type == "command_not_found"
    assert outcome.not_started(126, "x: Permission denied").error_type == "not_executable"


def test_redaction() -> None:
    assert redact(["--api-key", "k", "--token=t", "-v", "PASSWORD=p", "x=y", "http://a:b@h/p", "http://h/a@b"]) == [
        "--api-key", "***", "--token=***", "-v", "PASSWORD=***", "x=y", "http://a:***@h/p", "http://h/a@b",
    ]  # fmt: skip


def _opts(*argv: str) -> options.RunOptions:
    return options.parse([*argv, "--", "true"])


def test_tekton_step_timeout_leaves_room_for_kill_and_span() -> None:
    assert effective_timeout(_opts()) == (None, 2.0)
    assert effective_timeout(_opts("--timeout", "10s")) == (10.0, 2.0)
    term, grace = effective_timeout(_opts("--tekton-step-timeout", "10m"))
    assert (term, grace) == (597.0, 2.0)
    term, grace = effective_timeout(_opts("--tekton-step-timeout", "2s"))
    assert term is not None and term + grace < 2.0 and term > 0.5
    assert effective_timeout(_opts("--timeout", "5s", "--tekton-step-timeout", "10m")) == (5.0, 2.0)


def test_signal_names() -> None:
    assert process.signal_name(15) == "SIGTERM"
    assert process.signal_name(64).startswith("SIG")
    assert os.WTERMSIG(_signaled(9)) == 9

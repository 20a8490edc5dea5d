"""The wrapper's decisions, without processes: options, durations, trace context, results, redaction."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from step_tracer import context
from step_tracer.wrapper import options, outcome, process
from step_tracer.wrapper.redact import redact


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10", 10.0), ("1.5", 1.5), ("500ms", 0.5), ("90s", 90.0), ("1h30m", 5400.0), ("1h0m0s", 3600.0),
     ("2m3.5s", 123.5), ("250us", 0.00025), ("100ns", 1e-7)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert options.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "10x", "1h30", "m", "-1", "-1h", "nan", "inf", "1..5s", "1e999"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration") as err:
        options.parse_duration(text)
    assert "float" not in str(err.value)  # our words, not Python's


@pytest.mark.parametrize("flag", ["--timeout", "--kill-after", "--tekton-step-timeout"])
def test_zero_duration_means_none(flag: str) -> None:
    """GNU timeout and Tekton read a 0 timeout as no timeout (and GNU's `-k 0` as no SIGKILL)."""
    opts = options.parse([flag, "0", "--", "true"])
    assert getattr(opts, flag[2:].replace("-", "_")) is None
    assert options.parse(["--sample-interval", "0s", "--", "true"]).sample_interval == 0.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name", "--", "cmd", "a"], "--name needs a value: --name NAME"),
        (["--name", "--timeout=5s", "--", "cmd", "a"], "--name needs a value: --name NAME"),
        (["--timeout", "-5s", "--", "cmd", "a"], "--timeout: invalid duration '-5s': must be 0 or more"),
        (["--kill-after=1..5s", "--", "cmd", "a"], "--kill-after: invalid duration '1..5s'"),
        (["--tekton-step-index", "abc", "--", "cmd", "a"], "--tekton-step-index takes a step index N"),
        (["--tekton-step-index=-1", "--", "cmd", "a"], "--tekton-step-index takes a step index N"),
    ],
)
def test_option_errors_name_the_option_and_keep_the_command(argv: list[str], message: str) -> None:
    with pytest.raises(options.UsageError) as err:
        options.parse(argv)
    assert str(err.value).startswith(message), str(err.value)
    assert "invalid literal" not in str(err.value)
    assert err.value.command == ["cmd", "a"]


def test_a_value_that_starts_with_a_dash_is_given_inline() -> None:
    assert options.parse(["--name=--", "--attr=k=--x", "--", "cmd"]).name == "--"


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
        (_signaled(11), [2], False, 0, ("failure", "SIGSEGV")),  # ignored the SIGINT, then crashed
        (_signaled(9), [15], False, 0, ("failure", "SIGKILL")),  # ignored the SIGTERM, then someone's SIGKILL
        (_signaled(15), [2, 15], False, 0, ("cancellation", "SIGTERM")),  # the stop it died of, not the first
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


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["curl", "-H", "Authorization: Bearer s3", "--header", "X-Api-Key: s3", "-H", "Accept: a/b", "https://h"],
            ["curl", "-H", "Authorization: ***", "--header", "X-Api-Key: ***", "-H", "Accept: a/b", "https://h"],
        ),
        (
            [
                "curl",
                "--header=Cookie: s=s3",
                "-HAuthorization: s3",
                "-u",
                "me:s3",
                "-ume:s3",
                "--user=me:s3",
                "-u",
                "me",
            ],
            [
                "curl",
                "--header=Cookie: ***",
                "-HAuthorization: ***",
                "-u",
                "me:***",
                "-ume:***",
                "--user=me:***",
                "-u",
                "me",
            ],
        ),
        (["mysql", "-p", "s3", "-h", "db"], ["mysql", "-p", "***", "-h", "db"]),
        (
            ["t", "--pass", "s3", "--password=s3", "-pass", "pass:s3", "-token=s3", "--db-pw", "s3", "--passthrough"],
            ["t", "--pass", "***", "--password=***", "-pass", "***", "-token=***", "--db-pw", "***", "--passthrough"],
        ),
        (
            ["sh", "-c", "TOKEN=s3 make all && curl -H 'Authorization: Bearer s3' -u u:s3 https://a:s3@h/x; echo ok"],
            ["sh", "-c", "TOKEN=*** make all && curl -H 'Authorization: ***' -u u:*** https://a:***@h/x; echo ok"],
        ),
        (["/bin/bash", "-ec", 'export API_KEY="s3 s3";make -j2'], ["/bin/bash", "-ec", "export API_KEY=***;make -j2"]),
        # A flag at the end of one shell command does not take the next command as its value.
        (["sh", "-c", "mysql -p; echo x"], ["sh", "-c", "mysql -p; echo x"]),
        (["go", "test", "-parallel", "4", "./..."], ["go", "test", "-parallel", "4", "./..."]),
        (["git", "-c", "user.password=s3", "push"], ["git", "-c", "user.password=***", "push"]),
    ],
    ids=["headers", "users", "p", "long-flags", "sh-c", "bash-ec", "sh-separator", "unrelated", "not-a-shell"],
)
def test_redaction_masks_only_the_value(argv: list[str], expected: list[str]) -> None:
    assert redact(argv) == expected
    assert not any("s3" in a for a in redact(argv))


def _opts(*argv: str) -> options.RunOptions:
    return options.parse([*argv, "--", "true"])


def test_original_environ_is_what_the_kernel_started_us_with() -> None:
    code = (
        "import os; os.environ['ADDED_LATER'] = '1'; del os.environ['KEEP'];"
        "from step_tracer.wrapper.process import original_environ as o; e = o();"
        "print(e.get('KEEP'), e.get('ADDED_LATER'), e.get('WEIRD'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"KEEP": "yes", "WEIRD": "a=b\nc", "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == "yes None a=b\nc\n"


def test_signal_names() -> None:
    assert process.signal_name(15) == "SIGTERM"
    assert process.signal_name(64).startswith("SIG")
    assert os.WTERMSIG(_signaled(9)) == 9


def test_own_peak_rss_reads_vmhwm(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_bytes(b"Name:\tpython3\nVmPeak:\t  30000 kB\nVmHWM:\t    9216 kB\nVmRSS:\t 9000 kB\n")
    assert process.own_peak_rss(str(status)) == 9216 * 1024
    status.write_bytes(b"Name:\tpython3\n")
    assert process.own_peak_rss(str(status)) == 0
    assert process.own_peak_rss(str(tmp_path / "absent")) == 0
    assert process.own_peak_rss() > 0  # this very process, from /proc


def test_memory_peak_at_or_below_the_wrappers_own_is_left_out() -> None:
    """The kernel folded the wrapper's peak into the child's ru_maxrss: equal means unknown, above means exact."""
    import resource

    from step_tracer.wrapper import entrypoint

    ru = resource.getrusage(resource.RUSAGE_SELF)
    child = process.ChildExit(123, 0, ru)
    child.spawner_peak = ru.ru_maxrss * 1024
    assert "process.memory.peak" not in entrypoint._usage(child, None)
    child.spawner_peak = ru.ru_maxrss * 1024 - 1
    assert entrypoint._usage(child, None)["process.memory.peak"] == ru.ru_maxrss * 1024

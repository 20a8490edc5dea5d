"""The command line around the hot path: help everywhere, version, and click's `run` agreeing with the fast one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from step_tracer import __version__
from step_tracer.cli import cli
from step_tracer.wrapper.options import OPTIONS
from tests.conftest import Wrapper


def _run(wrapper: Wrapper, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([wrapper.executable, *args], capture_output=True, text=True, env=wrapper.env, timeout=60)


def test_version(wrapper: Wrapper) -> None:
    proc = _run(wrapper, "--version")
    assert proc.returncode == 0
    assert __version__ in proc.stdout


def test_help_everywhere(wrapper: Wrapper) -> None:
    for args in (["--help"], ["run", "--help"], ["run", "--name", "x", "-h"], ["show", "--help"]):
        proc = _run(wrapper, *args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert proc.stdout.startswith("Usage: step-tracer"), args


def test_run_help_lists_every_fast_path_option(wrapper: Wrapper) -> None:
    text = _run(wrapper, "run", "--help").stdout
    for flag, *_ in OPTIONS:
        assert flag in text


def test_run_help_says_what_the_readme_says(wrapper: Wrapper) -> None:
    text = " ".join(_run(wrapper, "run", "--help").stdout.split())
    assert text.startswith("Usage: step-tracer run [OPTIONS] -- CMD [ARGS]...")
    for shown in ("--attr KEY=VALUE", "--timeout DURATION", "--tekton-step-index N", "--tekton-step-timeout DURATION"):
        assert shown in text
    assert "VALUE " not in text.replace("KEY=VALUE", "")  # every placeholder says what it takes
    assert "Recorded, not enforced" in text  # README: Tekton's entrypoint enforces the step timeout
    assert "0 means no timeout" in text


def test_click_run_rebuilds_the_same_invocation(wrapper: Wrapper) -> None:
    """`run` through click (e.g. `cli.main` from Python) must behave like the fast path."""
    proc = subprocess.run(
        [str(Path(wrapper.executable).with_name("python")), "-c",
         "import sys; from step_tracer.cli import cli; "
         "cli.main(['run', '--name', 'viaclick', '--attr', 'a=1', '--', 'sh', '-c', 'exit 4'])"],
        capture_output=True, env=wrapper.env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    span = wrapper.only_span()
    assert span.name == "viaclick" and span.attributes["a"] == "1"


def test_command_with_its_own_help_flag_is_not_ours(wrapper: Wrapper) -> None:
    proc = wrapper.run("--", "sh", "-c", 'echo "$@"', "sh", "--help")
    assert proc.returncode == 0
    assert proc.stdout == b"--help\n"


def test_click_group_has_run_and_show() -> None:
    assert {"run", "show"} <= set(cli.commands)


PYTHON_WORDS = ("Traceback", "Error:", "Errno", "Usage:", "invalid literal", "codec can't", "Exception")


@pytest.mark.parametrize(
    "args",
    [
        ["run"],
        ["run", "--timeout"],
        ["run", "--bogus"],
        ["run", "--tekton-step-index", "x"],
        ["show", "{tmp}"],
        ["show", "{tmp}/missing.jsonl"],
        ["show", "{tmp}/binary"],
        ["show", "--last", "0"],
        ["show", "--last", "many"],
        ["show", "--trace"],
        ["show", "a", "b"],
        ["show", "--from-jaeger", "http://127.0.0.1:9"],
        ["show", "--from-jaeger", "ftp://127.0.0.1:9", "--trace", "ab"],
        ["show", "--from-jaeger", "http://127.0.0.1:9", "--trace", "not/hex"],
        ["show", "--width", "20"],
        ["sidecar", "--bogus"],
        ["sidecar", "--spool"],
        ["sidecar", "--ready", "--spool"],
        ["no-such-command"],
    ],
)
def test_every_error_is_one_line_naming_what_is_wrong(wrapper: Wrapper, tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "binary").write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe\n\x00")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = _run(wrapper, *args)
    assert proc.returncode != 0, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(("step-tracer: ", "usage: step-tracer")), proc.stderr
    assert not any(word in proc.stderr for word in PYTHON_WORDS), proc.stderr
    assert proc.stdout == ""
    named = [a for a in args[1:] if a.startswith("-") or "/" in a] or args[:1]
    assert any(a.partition("=")[0] in lines[0] for a in named), (named, lines[0])


def test_a_bug_of_ours_is_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from step_tracer import __main__, show

    def broken(*_args: object, **_kwargs: object) -> int:
        table: dict[str, int] = {}
        return table["missing"]

    monkeypatch.setattr(show, "show", broken)
    assert __main__.main(["show", str(tmp_path / "x")]) == 70
    err = capsys.readouterr().err
    assert err.startswith("step-tracer: internal error (KeyError at ") and err.count("\n") == 1, err
    assert "test_cli.py:" in err and "Traceback" not in err

"""Every error of `inject` and `bundle patch` is one line naming the file or option and what is wrong, with a
non-zero exit: never a traceback, never Python's own exception text. Run through the installed launcher, as users
run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCHER = str(Path(sys.executable).parent / "step-tracer")
TASK = "apiVersion: tekton.dev/v1\nkind: Task\nmetadata:\n  name: t\nspec:\n  steps:\n    - name: s\n      image: a\n"
PYTHON_TEXT = ("Traceback", "Errno", "codec", "<unicode string>", "invalid literal", "internal error", "Error:")


def run(*args: str, cwd: Path, user: int | None = None, stdin: bytes = b"") -> tuple[int, str, str]:
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user is not None else []
    proc = subprocess.run([*prefix, LAUNCHER, *args], cwd=cwd, input=stdin, capture_output=True, timeout=60)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def assert_clean(err: str) -> None:
    for line in err.splitlines():
        assert line.startswith(("error: ", "warning: ", "step-tracer")), line
        assert not any(text in line for text in PYTHON_TEXT), line


INPUTS = {
    "missing.yaml": (None, "error: missing.yaml: cannot read: No such file or directory"),
    "binary.yaml": (b"\x89PNG\r\n\x1a\n\x00\x00", "error: binary.yaml: a binary file, not YAML or JSON text"),
    "latin1.yaml": (b"a: caf\xe9\n", "error: latin1.yaml: not UTF-8 text (byte 0xe9 at offset 6)"),
    "malformed.yaml": (b"a: [\n", "error: malformed.yaml: invalid YAML at line 2, column 1: while parsing a flow node"),
    "duplicate.yaml": (b"a: 1\na: 2\n", "error: duplicate.yaml: invalid YAML at line 2, column 1: duplicate key 'a'"),
    "control.yaml": (b"a: \x07\n", "error: control.yaml: invalid YAML at character 3: character U+0007 is not allowed"),
    "malformed.json": (b'{"a": 1', "error: malformed.json: invalid JSON at line 1, column 8: Expecting ',' delimiter"),
    "file.yaml/sub.yaml": (None, "error: file.yaml/sub.yaml: cannot read: Not a directory"),
}


@pytest.mark.parametrize("name", INPUTS)
def test_unreadable_and_malformed_inputs(name: str, tmp_path: Path) -> None:
    content, message = INPUTS[name]
    (tmp_path / "file.yaml").write_text(TASK)
    if content is not None:
        (tmp_path / name).write_bytes(content)
    for mode in ("--check", "--diff", "--dry-run"):
        code, out, err = run("inject", mode, name, cwd=tmp_path)
        assert code == 2 and out == "", err
        assert err.splitlines()[0].startswith(message), err
        assert_clean(err)


@pytest.mark.parametrize(
    "content",
    ["", "# nothing\n", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"],
    ids=["empty", "comment", "cm"],
)
def test_inputs_with_nothing_tekton_say_so(content: str, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.yaml").write_text(content)
    code, out, err = run("inject", "--check", "d/x.yaml", cwd=tmp_path)
    assert (code, out) == (0, "")
    assert err.splitlines() == [
        "warning: d/x.yaml: no Tekton Task, Pipeline or StepAction in it",
        "step-tracer inject: 1 file, 0 steps to wrap, 0 already wrapped; no Tekton Task, Pipeline or StepAction found",
    ]
    code, out, err = run("inject", "--check", "d", cwd=tmp_path)  # a folder: the closing line says it
    assert err.endswith("; no Tekton Task, Pipeline or StepAction found\n") and "warning" not in err


def test_a_task_with_an_empty_spec_is_valid(tmp_path: Path) -> None:
    """`spec: {}` is a valid Task: it gets what every Task gets, in block style."""
    (tmp_path / "t.yaml").write_text("apiVersion: tekton.dev/v1\nkind: Task\nmetadata: {name: t}\nspec: {}\n")
    code, _, err = run("inject", "t.yaml", cwd=tmp_path)
    assert code == 0, err
    assert "spec:\n  volumes:\n    - name: step-tracer-bin\n" in (tmp_path / "t.yaml").read_text()
    assert err == "step-tracer inject: 1 file, 0 steps wrapped, 0 already wrapped\n"


def test_outputs_that_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(TASK)
    for output, why in (("missing/out.yaml", "No such file or directory"), (".", "Is a directory")):
        code, out, err = run("inject", "-o", output, "t.yaml", cwd=tmp_path)
        assert (code, out, err) == (2, "", f"step-tracer: --output {output}: cannot write: {why}\n")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_read_only_and_unreadable_files_as_another_user(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "t.yaml").write_text(TASK)
    (tmp_path / "secret.yaml").write_text(TASK)
    (tmp_path / "secret.yaml").chmod(0)
    (tmp_path / "ro").chmod(0o555)
    code, _, err = run("inject", "ro/t.yaml", "secret.yaml", cwd=tmp_path, user=65534)
    assert code == 2
    assert "error: ro/t.yaml: cannot write: Permission denied\n" in err
    assert "error: secret.yaml: cannot read: Permission denied\n" in err
    assert_clean(err)
    assert "step-tracer" not in (tmp_path / "ro" / "t.yaml").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--wrapper", "relative"], "--wrapper must be an absolute path without blanks: 'relative'"),
        (["--wrapper", "/a b"], "--wrapper must be an absolute path without blanks: '/a b'"),
        (["--sidecar-image", ""], "--sidecar-image must be an image reference without blanks: ''"),
        (["--otlp-secret", ""], "--otlp-secret must not be empty"),
        (["--check", "--diff"], "--check and --diff (--dry-run) do not go together"),
        (["--nope"], "No such option '--nope'."),
        (["--output"], "Option '--output' requires an argument."),
    ],
)
def test_bad_option_values_name_the_option(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(TASK)
    code, out, err = run("inject", *args, "t.yaml", cwd=tmp_path)
    if args == ["--output"]:
        code, out, err = run("inject", "t.yaml", *args, cwd=tmp_path)
    assert (code, out) == (2, "")
    assert err == f"step-tracer: {message} (see step-tracer inject --help)\n"


def test_bundle_patch_options_and_unreachable_registries(tmp_path: Path) -> None:
    code, _, err = run("bundle", "patch", "localhost:1/x:1", cwd=tmp_path)
    assert code == 2 and "give DST" in err and "--dry-run" in err
    code, out, err = run("bundle", "patch", "--diff", "localhost:1/x:1", cwd=tmp_path)  # no DST for a dry run
    assert (code, out, err) == (
        2,
        "",
        "error: manifest localhost:1/x:1: cannot reach http://localhost:1: Connection refused\n",
    )
    code, _, err = run("bundle", "patch", "--dry-run", "bad ref", cwd=tmp_path)
    assert (code, err) == (2, "error: invalid image reference 'bad ref'\n")
    code, _, err = run("bundle", "patch", "--wrapper", "x", "localhost:1/x:1", "localhost:1/x:2", cwd=tmp_path)
    assert (code, err) == (
        2,
        "step-tracer: --wrapper must be an absolute path without blanks: 'x' (see step-tracer bundle patch --help)\n",
    )

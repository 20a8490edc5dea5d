"""`step-tracer inject` as users run it: the installed command on real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

STEP_TRACER = str(Path(sys.executable).parent / "step-tracer")

TASK = """\
apiVersion: tekton.dev/v1
kind: Task
metadata:
  name: hello  # a comment that must survive
spec:
  steps:
    - name: say
      image: alpine
      script: |
        echo hello
    - name: entry
      image: registry.example/tool:1
"""


def inject(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STEP_TRACER, "inject", *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    path = tmp_path / "task.yaml"
    path.write_text(TASK)
    return path


def test_rewrites_in_place_and_a_second_run_changes_nothing(task_file: Path) -> None:
    first = inject(str(task_file))
    assert first.returncode == 0, first.stderr
    patched = task_file.read_text()
    assert "# a comment that must survive" in patched and "run-script --tekton-step=say" in patched
    assert first.stdout == ""
    assert first.stderr.splitlines()[-1] == (
        "step-tracer inject: 1 file, 1 step wrapped, 0 already wrapped; 1 left unwrapped "
        "(1 run their image's ENTRYPOINT, which needs --resolve-entrypoints or a command)"
    )
    assert "step entry: runs its image ENTRYPOINT" in first.stderr
    second = inject(str(task_file))
    assert second.returncode == 0 and task_file.read_text() == patched
    assert "0 steps wrapped, 1 already wrapped" in second.stderr


def test_check_lists_what_is_not_instrumented_and_changes_nothing(task_file: Path) -> None:
    result = inject("--check", str(task_file))
    assert result.returncode == 1
    assert task_file.read_text() == TASK
    assert f"{task_file}: Task/hello: step say: not instrumented" in result.stdout
    assert "step entry: not instrumented, cannot be wrapped" in result.stdout
    inject(str(task_file))
    again = inject("--check", str(task_file))
    # The entrypoint step still cannot be wrapped without --resolve-entrypoints: a CI gate must keep saying so.
    assert again.returncode == 1 and "step say" not in again.stdout and "step entry" in again.stdout


def test_diff_and_output_options_leave_the_input_alone(task_file: Path, tmp_path: Path) -> None:
    diff = inject("--diff", str(task_file))
    assert diff.returncode == 0 and diff.stdout.startswith(f"--- a/{task_file}")
    assert "+        #!/step-tracer/bin/step-tracer run-script" in diff.stdout
    out_file = tmp_path / "out.yaml"
    assert inject("-o", str(out_file), str(task_file)).returncode == 0
    to_stdout = inject("-o", "-", str(task_file))
    assert task_file.read_text() == TASK
    assert out_file.read_text() == to_stdout.stdout and "step-tracer-spool" in to_stdout.stdout


def test_stdin_goes_to_stdout_with_a_custom_wrapper_path() -> None:
    result = inject("--wrapper", "/opt/st/step-tracer", "-", stdin=TASK)
    assert result.returncode == 0
    assert "#!/opt/st/step-tracer run-script --tekton-step=say --tekton-step-index=0" in result.stdout


def test_usage_errors_exit_2() -> None:
    assert inject().returncode == 2
    assert inject("--wrapper", "relative/path", "-", stdin=TASK).returncode == 2
    assert inject("--check", "--diff", "-", stdin=TASK).returncode == 2


def test_an_invalid_input_names_the_file_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: tekton.dev/v1\nkind: Task\nmetadata: {name: x}\nspec:\n  steps: 3\n")
    result = inject(str(bad))
    assert result.returncode == 2 and f"{bad}: Task/x: steps is not a list" in result.stderr


def test_otlp_settings_from_a_configmap_and_the_secret_winning() -> None:
    result = inject("--otlp-configmap", "otel-endpoint", "--otlp-secret", "otel-token", "-", stdin=TASK)
    sidecar = YAML(typ="safe").load(result.stdout)["spec"]["sidecars"][0]
    # Kubernetes: for a key in several envFrom sources, the last source wins.
    assert sidecar["envFrom"] == [
        {"configMapRef": {"name": "otel-endpoint", "optional": True}},
        {"secretRef": {"name": "otel-token", "optional": True}},
    ]


def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs": each anchor a list of ten aliases of the one before, 10**levels nodes once expanded."""
    lines = ["    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"]
    lines += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, levels)]
    header = "  name: bomb\n  annotations:\n" + "".join(lines)
    return TASK.replace("  name: hello  # a comment that must survive\n", header)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (alias_bomb(), "YAML aliases expand to more than 100000 extra nodes"),
        (TASK + "  params: &p\n    - *p\n", "a YAML alias refers to a node that contains it"),
        ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 300)), "YAML nested deeper than 200 levels"),
        ("[" * 5000 + "]" * 5000, "JSON nested deeper than 200 levels"),
        ('{"a": ' * 300 + "1" + "}" * 300, "JSON nested deeper than 200 levels"),
    ],
    ids=["alias-bomb", "recursive-alias", "deep-yaml", "deep-json-recursion", "deep-json"],
)
def test_hostile_documents_are_refused_in_one_line_and_the_others_patched(
    tmp_path: Path, task_file: Path, text: str, message: str
) -> None:
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(text)
    done = inject(str(hostile), str(task_file))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {hostile}: {errors[0].partition(': ')[2].partition(': ')[2]}"], done.stderr
    assert message in errors[0] and "Traceback" not in done.stderr
    assert hostile.read_text() == text
    assert "/step-tracer/bin/step-tracer" in task_file.read_text()  # the other file was still patched


def test_a_few_aliases_are_still_fine(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    labels = "  labels: &labels\n    app: x\n  annotations: *labels\n"
    path.write_text(TASK.replace("  name: hello  # a comment that must survive\n", "  name: hello\n" + labels))
    done = inject(str(path))
    assert done.returncode == 0, done.stderr
    patched = YAML(typ="safe").load(path.read_text())
    assert patched["metadata"]["annotations"] == {"app": "x"}
    assert "/step-tracer/bin/step-tracer" in path.read_text()

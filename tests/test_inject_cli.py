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
        "step-tracer inject: 1 file, 1 steps wrapped, 0 already wrapped; 1 left unwrapped "
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

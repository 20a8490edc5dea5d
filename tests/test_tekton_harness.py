"""The Tekton stand-in itself, on plain (unpatched) Tasks: it must behave as Tekton does, or the end-to-end tests
built on it prove nothing. Expected values come from tektoncd/pipeline's code (cited per test), not from the harness.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.tekton_harness import (
    DEFAULT_PATH,
    ENTRYPOINT_SCRIPT,
    Harness,
    HarnessError,
    Image,
    PipelineInfo,
    TaskRun,
    format_map,
    go_quote,
    wait_until,
)
from tests.tekton_harness.pod import go_duration_string

pytestmark = pytest.mark.timeout(120)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def task(*steps: dict[str, Any], api: str = "tekton.dev/v1", name: str = "demo", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": api, "kind": "Task", "metadata": {"name": name}, "spec": {**spec, "steps": list(steps)}}


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(
        tmp_path,
        images={
            "tool": Image(entrypoint=("/bin/echo", "tool:"), cmd=("default-cmd",)),
            "cmd-only": Image(cmd=("/bin/echo", "from-cmd")),
            "python": Image(path=f"{Path(sys.executable).parent}:{DEFAULT_PATH}"),
        },
    )


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


# -- scripts, command and args (pkg/pod/script.go, entrypoint.go) --------------------------------------------------


def test_script_without_shebang_gets_tektons_preamble(harness: Harness) -> None:
    result = harness.run(
        task(
            {"name": "plain", "image": "sh", "script": "echo before\nfalse\necho after"},
            {"name": "own-shebang", "image": "sh", "script": "#!/bin/sh\necho before\nfalse\necho after"},
            {"name": "indented", "image": "sh", "script": "\n  #!/bin/sh\necho x"},
        ),
        TaskRun(),
    )
    scripts = list(result.pod.scripts.values())
    assert scripts[0] == "#!/bin/sh\nset -e\necho before\nfalse\necho after"
    assert scripts[1] == "#!/bin/sh\necho before\nfalse\necho after"
    # Tekton looks for "#!" after strings.TrimSpace: no preamble, and the kernel then finds no shebang either.
    assert scripts[2] == "\n  #!/bin/sh\necho x"
    assert all(Path(p).name.startswith(f"script-{i}-") for i, p in enumerate(result.pod.scripts))
    plain = result.step("plain")
    assert (plain.reason, plain.exit_code, plain.stdout) == ("Error", 1, b"before\n")
    assert [s.reason for s in result.steps[1:]] == ["Skipped", "Skipped"]


def test_script_runs_its_own_interpreter_and_keeps_args_as_positional_parameters(harness: Harness) -> None:
    result = harness.run(
        task(
            {"name": "sh", "image": "sh", "script": "printf '<%s>' \"$@\"", "args": ["a b", "c"]},
            {
                "name": "py",
                "image": "python",
                "script": "#!/usr/bin/env python3\nimport sys\nprint(sys.argv[1:])",
                "args": ["x", "$(params.list[*])"],
            },
            params=[{"name": "list", "type": "array", "default": ["y", "z w"]}],
        ),
        TaskRun(),
    )
    assert result.step("sh").stdout == b"<a b><c>"
    assert result.step("py").stdout == b"['x', 'y', 'z w']\n"
    script_path = result.pod.steps[0].args[result.pod.steps[0].args.index("-entrypoint") + 1]
    assert script_path.startswith("/tekton/scripts/script-0-")
    assert result.pod.steps[0].args[-3:] == ["--", "a b", "c"]


def test_command_and_args_become_entrypoint_flags(harness: Harness) -> None:
    result = harness.run(
        task(
            {"name": "a", "image": "sh", "command": ["sh", "-c", 'printf "%s|" "$0" "$@"', "zero"], "args": ["1", "2"]},
            {
                "name": "b",
                "image": "sh",
                "command": ["printf"],
                "args": ["%s"],
                "timeout": "90s",
                "onError": "continue",
            },
        ),
        TaskRun(),
    )
    a, b = result.pod.steps
    assert a.command == ["/tekton/bin/entrypoint"]
    assert a.args == [
        "-post_file", "/tekton/run/0/out", "-termination_path", "/tekton/termination",
        "-step_metadata_dir", "/tekton/run/0/status", "-entrypoint", "sh", "--",
        "-c", 'printf "%s|" "$0" "$@"', "zero", "1", "2",
    ]  # fmt: skip
    assert b.args == [
        "-wait_file", "/tekton/run/0/out", "-post_file", "/tekton/run/1/out", "-termination_path",
        "/tekton/termination", "-step_metadata_dir", "/tekton/run/1/status", "-on_error", "continue",
        "-timeout", "1m30s", "-entrypoint", "printf", "--", "%s",
    ]  # fmt: skip
    assert result.step("a").stdout == b"zero|1|2|"
    assert [c.name for c in result.pod.containers] == ["step-a", "step-b"]


def test_image_entrypoint_steps_run_what_the_registry_says(harness: Harness) -> None:
    result = harness.run(
        task(
            {"name": "with-args", "image": "tool", "args": ["x", "y"]},
            {"name": "no-args", "image": "tool"},
            {"name": "cmd-only", "image": "cmd-only", "args": ["/bin/echo", "args-replace-cmd"]},
            {"name": "env", "image": "tool", "command": ["env"]},
        ),
        TaskRun(),
    )
    # entrypoint_lookup_impl.go: ENTRYPOINT + args, ENTRYPOINT + CMD without args, CMD alone without ENTRYPOINT.
    assert result.step("with-args").stdout == b"tool: x y\n"
    assert result.step("no-args").stdout == b"tool: default-cmd\n"
    assert result.step("cmd-only").stdout == b"from-cmd /bin/echo args-replace-cmd\n"
    with_args = result.pod.steps[0]
    assert "-entrypoint" not in with_args.args
    platform_env = [e for e in with_args.env if e["name"] == "TEKTON_PLATFORM_COMMANDS"]
    assert len(platform_env) == 1 and list(json.loads(platform_env[0]["value"]).values()) == [["/bin/echo", "tool:"]]
    assert b"TEKTON_PLATFORM_COMMANDS" not in result.step("env").stdout
    with pytest.raises(HarnessError, match="unknown to the harness"):
        harness.build(task({"name": "x", "image": "nowhere"}), TaskRun())


# -- environment, substitution, stepTemplate (apply.go, merge.go, kubelet expansion) -----------------------------------


def test_environment_is_what_the_step_declares_plus_the_image_path(harness: Harness) -> None:
    result = harness.run(
        task({"name": "env", "image": "sh", "command": ["env"], "env": [{"name": "A", "value": "1"}]}), TaskRun()
    )
    assert sorted(result.step("env").stdout.decode().splitlines()) == ["A=1", f"PATH={DEFAULT_PATH}"]


def test_substitution_everywhere_tekton_substitutes(harness: Harness) -> None:
    spec_task = task(
        {
            "name": "all",
            "image": "sh",
            "workingDir": "$(workspaces.src.path)/$(params.sub)",
            "env": [
                {"name": "GREETING", "value": "$(params.greeting) from $(context.task.name)"},
                {"name": "DERIVED", "value": "[$(GREETING)]"},
            ],
            "command": ["sh", "-c", 'echo "$GREETING|$DERIVED|$(pwd)|$*"', "--"],
            "args": [
                "$(params.greeting)",
                "$(params['greeting'])",
                "$(params.list[*])",
                "$(params.list[1])",
                "$(params.obj.k)",
                "$(params.chained)",
                "$(GREETING)",
                "$$(GREETING)",
                "$(context.taskRun.name)/$(context.taskRun.namespace)/$(context.taskRun.uid)/$(context.task.retry-count)",
            ],
        },
        {
            "name": "write",
            "image": "sh",
            "script": "printf '%s' '$(params.greeting)' > $(results.out.path)\nprintf sr > $(step.results.mine.path)\n",
            "results": [{"name": "mine"}],
        },
        params=[
            {"name": "greeting", "default": "hello"},
            {"name": "sub", "default": "dir"},
            {"name": "list", "type": "array", "default": ["l0", "l1"]},
            {"name": "obj", "type": "object", "properties": {"k": {}}, "default": {"k": "v"}},
            {"name": "chained", "default": "<$(params.sub)>"},
        ],
        results=[{"name": "out"}],
        workspaces=[{"name": "src"}],
        name="subst",
    )
    uid = "0d1e2f30-4152-6374-8596-a7b8c9dae0f1"
    result = harness.run(
        spec_task,
        TaskRun(name="tr-1", namespace="ns1", uid=uid, params={"greeting": "hi"}, retry_count=2, workspaces=["src"]),
    )
    workdir = result.pod.workspaces["src"] / "dir"
    assert result.step("all").stdout.decode() == (
        f"hi from subst|[hi from subst]|{workdir}|hi hi l0 l1 l1 v <dir> hi from subst $(GREETING) tr-1/ns1/{uid}/2\n"
    )
    assert result.results == {"out": "hi"}
    assert result.step("write").results == {"mine": "sr"}
    assert {"key": "mine", "value": "sr", "type": 4} in result.step("write").termination
    assert {"key": "out", "value": "hi", "type": 1} in result.step("write").termination
    with pytest.raises(HarnessError, match="not declared"):
        harness.build(spec_task, TaskRun(params={"nope": "1"}, workspaces=["src"]))


def test_step_template_merges_env_by_name_step_wins(harness: Harness) -> None:
    """Order as Tekton's merge_test.go "merge-env-by-step": step-only first, then template-only, then shared."""
    result = harness.run(
        task(
            {
                "name": "merged",
                "image": "sh",
                "command": ["env"],
                "env": [{"name": "NEW_KEY", "value": "A_VALUE"}, {"name": "SOME_KEY", "value": "NEW_VALUE"}],
            },
            stepTemplate={
                "env": [{"name": "KEEP_THIS", "value": "A_VALUE"}, {"name": "SOME_KEY", "value": "ORIGINAL_VALUE"}],
                "workingDir": "$(workspaces.w.path)/from-template",
            },
            workspaces=[{"name": "w"}],
        ),
        TaskRun(workspaces=["w"]),
    )
    container = result.pod.steps[0]
    assert [(e["name"], e["value"]) for e in container.env] == [
        ("NEW_KEY", "A_VALUE"), ("KEEP_THIS", "A_VALUE"), ("SOME_KEY", "NEW_VALUE"),
    ]  # fmt: skip
    assert container.working_dir == f"{result.pod.workspaces['w']}/from-template"
    assert sorted(result.step("merged").stdout.decode().splitlines()) == [
        "KEEP_THIS=A_VALUE", "NEW_KEY=A_VALUE", f"PATH={DEFAULT_PATH}", "SOME_KEY=NEW_VALUE",
    ]  # fmt: skip


def test_v1beta1_task_and_embedded_task_spec(harness: Harness) -> None:
    steps = [{"name": "s", "image": "sh", "command": ["echo", "$(context.task.name)"]}]
    beta = harness.run(task(*steps, api="tekton.dev/v1beta1", name="beta"), TaskRun(name="run-b"))
    assert beta.step("s").stdout == b"beta\n"
    assert beta.pod.labels["tekton.dev/task"] == "beta"
    embedded = harness.run({"steps": steps}, TaskRun(name="run-e"))
    # taskspec.go: an embedded spec's metadata is the TaskRun's, and no tekton.dev/task label is set.
    assert embedded.step("s").stdout == b"run-e\n"
    assert "tekton.dev/task" not in embedded.pod.labels


# -- failure, onError, signals, timeout (pkg/entrypoint/entrypointer.go, cmd/entrypoint) ------------------------------


def test_a_failed_step_skips_the_rest_without_starting_them(harness: Harness) -> None:
    result = harness.run(
        task(
            {"name": "ok", "image": "sh", "command": ["true"]},
            {"name": "fails", "image": "sh", "command": ["sh", "-c", "exit 5"]},
            {"name": "later", "image": "sh", "command": ["sh", "-c", "echo ran"]},
        ),
        TaskRun(),
    )
    assert [(s.reason, s.exit_code, s.container_exit, s.started) for s in result.steps] == [
        ("Completed", 0, 0, True), ("Error", 5, 5, True), ("Skipped", 1, 1, False),
    ]  # fmt: skip
    assert result.step("later").stdout == b""
    assert b"Skipping step because a previous step failed" in result.step("later").stderr
    run_dir = result.pod.volume_dir
    assert (run_dir("tekton-internal-run-0") / "out").exists()
    assert (run_dir("tekton-internal-run-0") / "status" / "exitCode").read_text() == "0"
    assert (run_dir("tekton-internal-run-1") / "out.err").exists()
    assert not (run_dir("tekton-internal-run-1") / "status" / "exitCode").exists()
    assert (run_dir("tekton-internal-run-2") / "out.err").exists()
    assert not result.succeeded


def test_on_error_continue_records_the_exit_code_and_goes_on(harness: Harness) -> None:
    result = harness.run(
        task(
            {"name": "fails", "image": "sh", "command": ["sh", "-c", "exit 7"], "onError": "continue"},
            {"name": "killed", "image": "sh", "script": "kill -9 $$", "onError": "continue"},
            {"name": "later", "image": "sh", "command": ["echo", "ran"]},
        ),
        TaskRun(),
    )
    fails, killed, later = result.steps
    assert (fails.reason, fails.exit_code, fails.container_exit) == ("Continued", 7, 0)
    assert {"key": "ExitCode", "value": "7", "type": 3} in fails.termination
    assert (result.pod.volume_dir("tekton-internal-run-0") / "status" / "exitCode").read_text() == "7"
    # Go's ExitError.ExitCode() is -1 for a signal death.
    assert (killed.reason, killed.exit_code, killed.container_exit) == ("Continued", -1, 0)
    assert (later.reason, later.stdout) == ("Completed", b"ran\n")
    assert result.succeeded


def test_a_command_killed_by_a_signal_makes_the_entrypoint_exit_255(harness: Harness) -> None:
    # A script, not command/args: the kubelet turns `$$` in command and args into `$`.
    result = harness.run(task({"name": "killed", "image": "sh", "script": "kill -15 $$"}), TaskRun())
    assert (result.steps[0].reason, result.steps[0].container_exit) == ("Error", 255)


def test_timeout_sigkills_the_direct_child_only(tmp_path: Path) -> None:
    """exec.CommandContext's Cancel is Process.Kill: the step's command dies, its process group does not (yet)."""
    pid_file, child_file = tmp_path / "grandchild", tmp_path / "child"
    # Files, not pipes: the surviving grandchild holds the entrypoint's stdout and stderr open.
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.run(
            [
                sys.executable, "-I", "-S", str(ENTRYPOINT_SCRIPT), "-timeout", "2s",
                "-post_file", str(tmp_path / "out"), "-termination_path", str(tmp_path / "termination"),
                "-step_metadata_dir", str(tmp_path / "status"), "-harness_child_pid_file", str(child_file),
                "-entrypoint", "sh", "--", "-c", f"sleep 60 & echo $! > {pid_file}; wait",
            ],
            stdout=out, stderr=err, timeout=60, start_new_session=True,
        )  # fmt: skip
    grandchild, child = int(pid_file.read_text()), int(child_file.read_text())
    try:
        assert proc.returncode == 1
        assert b"context deadline exceeded" in (tmp_path / "stderr").read_bytes()
        assert (tmp_path / "out.err").exists()
        termination = json.loads((tmp_path / "termination").read_text())
        assert {"key": "Reason", "value": "TimeoutExceeded", "type": 3} in termination
        assert not alive(child)
        assert alive(grandchild)
        assert os.getpgid(grandchild) == child  # it was in the group the entrypoint forwards signals to
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)


def test_timed_out_step_container_ends_with_its_group_and_skips_the_rest(harness: Harness) -> None:
    """The grandchild outlives the SIGKILL only until the entrypoint (the container's PID 1) exits: the end of
    the container takes it. A timeout also beats onError: continue (entrypointer.go checks the deadline first)."""
    result = harness.run(
        task(
            {
                "name": "slow",
                "image": "sh",
                "timeout": "2s",
                "onError": "continue",
                "command": ["sh", "-c", "sleep 60 & echo $! > $(results.pid.path); wait"],
            },
            {"name": "later", "image": "sh", "command": ["true"]},
            results=[{"name": "pid"}],
        ),
        TaskRun(),
    )
    slow, later = result.steps
    assert (slow.reason, slow.exit_code, slow.container_exit) == ("TimeoutExceeded", 1, 1)
    assert later.reason == "Skipped"
    assert not alive(int(result.results["pid"]))


def test_signals_reach_the_whole_child_group_once(harness: Harness) -> None:
    script = """#!/usr/bin/env python3
import os, signal, time
w = os.environ["W"]
def note(sig, frame):
    with open(f"{w}/usr1-{os.getpid()}", "a") as f:
        f.write("USR1\\n")
signal.signal(signal.SIGUSR1, note)
role = "child" if os.fork() == 0 else "parent"
open(f"{w}/{role}-{os.getpid()}.ready", "w").close()
while True:
    time.sleep(0.02)
"""
    running = harness.start(
        task(
            {
                "name": "py",
                "image": "python",
                "script": script,
                "env": [{"name": "W", "value": "$(workspaces.w.path)"}],
            },
            workspaces=[{"name": "w"}],
        ),
        TaskRun(workspaces=["w"]),
    )
    w = running.pod.workspaces["w"]
    wait_until(lambda: len(list(w.glob("*.ready"))) == 2, 30, "parent and child to be ready")
    pids = sorted(int(p.name.split("-")[1].split(".")[0]) for p in w.glob("*.ready"))
    running.send_signal(0, signal.SIGUSR1)
    noted = lambda: sorted(p.read_text() for p in w.glob("usr1-*")) == ["USR1\n", "USR1\n"]  # noqa: E731
    wait_until(noted, 30, "both processes to note SIGUSR1")
    running.send_signal(0, signal.SIGTERM)
    result = running.wait(60)
    assert sorted(int(p.name.removeprefix("usr1-")) for p in w.glob("usr1-*")) == pids
    assert all(p.read_text() == "USR1\n" for p in w.glob("usr1-*"))
    assert (result.steps[0].reason, result.steps[0].container_exit) == ("Error", 255)
    assert not any(alive(pid) for pid in pids)


def test_sigkill_of_the_child_mid_step(harness: Harness) -> None:
    running = harness.start(
        task(
            {"name": "long", "image": "sh", "command": ["sleep", "60"]},
            {"name": "later", "image": "sh", "command": ["true"]},
        ),
        TaskRun(),
    )
    running.kill_child(0)
    result = running.wait(60)
    assert [(s.reason, s.container_exit) for s in result.steps] == [("Error", 255), ("Skipped", 1)]


def test_pod_deletion_sends_sigterm_to_every_container(harness: Harness) -> None:
    running = harness.start(
        task(
            {
                "name": "busy",
                "image": "sh",
                "env": [{"name": "W", "value": "$(workspaces.w.path)"}],
                "script": 'trap \'echo TERM > "$W/busy-term"; exit 143\' TERM\ntouch "$W/busy"\n'
                "while :; do sleep 0.05; done",
            },
            {"name": "waiting", "image": "sh", "command": ["true"]},
            workspaces=[{"name": "w"}],
        ),
        TaskRun(workspaces=["w"]),
    )
    w = running.pod.workspaces["w"]
    wait_until((w / "busy").exists, 30, "the first step to run")
    running.delete(grace=20)
    result = running.wait(60)
    assert result.deleted and not result.succeeded
    assert (w / "busy-term").read_text() == "TERM\n"
    busy, waiting = result.steps
    assert (busy.container_exit, busy.reason) == (143, "Error")
    # The kubelet signals containers in parallel: the waiting one dies of SIGTERM, or first sees busy's `.err`.
    assert not waiting.started
    assert (waiting.container_exit, waiting.reason) in ((128 + signal.SIGTERM, "Error"), (1, "Skipped")), waiting


def test_pod_deletion_while_waiting_for_sidecars(harness: Harness) -> None:
    running = harness.start(
        task(
            {"name": "first", "image": "sh", "command": ["true"]},
            sidecars=[
                {
                    "name": "never-ready",
                    "image": "sh",
                    "script": "while :; do sleep 0.05; done",
                    "readinessProbe": {"exec": {"command": ["false"]}},
                }
            ],
        ),
        TaskRun(),
    )
    running.delete(grace=20)
    result = running.wait(60)
    # The entrypoint has not called signal.Notify yet: Go's default action, death by SIGTERM.
    assert (result.steps[0].container_exit, result.steps[0].started) == (128 + signal.SIGTERM, False)
    assert (result.sidecars[0].exit_code, result.sidecars[0].ready) == (128 + signal.SIGTERM, False)


# -- Downward API (kubelet) and pod metadata (pod.go) --------------------------------------------------------------


def test_go_quote_is_strconv_quote() -> None:
    cases = {
        "plain": '"plain"',
        'a "quoted" \\ value': '"a \\"quoted\\" \\\\ value"',
        "\a\b\f\n\r\t\v": '"\\a\\b\\f\\n\\r\\t\\v"',
        "\x00\x01\x1f\x7f": '"\\x00\\x01\\x1f\\x7f"',
        "é 😀 ü": '"é 😀 ü"',
        "\u00a0\u200b\u2028\ufeff": '"\\u00a0\\u200b\\u2028\\ufeff"',
        "\U000e0001": '"\\U000e0001"',
    }
    assert {value: go_quote(value) for value in cases} == cases


def test_downward_api_files_are_in_kubelet_format(harness: Harness) -> None:
    downward = {
        "name": "podinfo",
        "downwardAPI": {
            "items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}},
                {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
            ]
        },
    }
    taskrun = TaskRun(
        name="build-1",
        namespace="team-a",
        uid="2f8a2b5c-1d4e-4b7a-9c3e-5f6a7b8c9d0e",
        labels={"team": 'a "quoted" \\ value'},
        annotations={
            "tekton.dev/taskrunSpanContext": json.dumps({"traceparent": TRACEPARENT}, separators=(",", ":")),
            "note": "line1\nline2\ttab é \x01 \x7f \u00a0 😀 back\\slash",
            "app.kubernetes.io/managed-by": "pipelinerun-controller",
        },
        pipeline=PipelineInfo("ci", "ci-run-1", "11111111-2222-3333-4444-555555555555", "build"),
    )
    result = harness.run(
        task(
            {
                "name": "read",
                "image": "sh",
                "command": ["cat", "/podinfo/labels"],
                "volumeMounts": [{"name": "podinfo", "mountPath": "/podinfo"}],
            },
            volumes=[downward],
            name="compile",
        ),
        taskrun,
    )
    labels = (
        'app.kubernetes.io/managed-by="tekton-pipelines"\n'
        'team="a \\"quoted\\" \\\\ value"\n'
        'tekton.dev/memberOf="tasks"\n'
        'tekton.dev/pipeline="ci"\n'
        'tekton.dev/pipelineRun="ci-run-1"\n'
        'tekton.dev/pipelineRunUID="11111111-2222-3333-4444-555555555555"\n'
        'tekton.dev/pipelineTask="build"\n'
        'tekton.dev/task="compile"\n'
        'tekton.dev/taskRun="build-1"\n'
        'tekton.dev/taskRunUID="2f8a2b5c-1d4e-4b7a-9c3e-5f6a7b8c9d0e"'
    )
    annotations = (
        'note="line1\\nline2\\ttab é \\x01 \\x7f \\u00a0 😀 back\\\\slash"\n'
        'pipeline.tekton.dev/release="devel"\n'
        'tekton.dev/ready="READY"\n'
        'tekton.dev/taskrunSpanContext="{\\"traceparent\\":\\"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\\"}"'
    )
    directory = result.pod.volume_dir("podinfo")
    assert (directory / "labels").read_text() == labels
    assert (directory / "annotations").read_text() == annotations
    assert result.step("read").stdout.decode() == labels
    assert (directory / "name").read_text() == "build-1-pod"
    assert (directory / "namespace").read_text() == "team-a"
    assert (directory / "uid").read_text() == result.pod.uid != taskrun.uid
    # AtomicWriter's layout: stable symlinks into ..data, itself a symlink to the current timestamped copy.
    assert os.readlink(directory / "labels") == "..data/labels"
    assert os.readlink(directory / "..data").startswith("..")
    assert format_map({"b": "2", "a": "1"}) == 'a="1"\nb="2"'


# -- sidecars -------------------------------------------------------------------------------------------------------


def test_sidecar_readiness_gates_the_first_step_and_sigterm_ends_it(harness: Harness) -> None:
    shared = [{"name": "shared", "mountPath": "/shared"}]
    env = [{"name": "SHARED", "value": "/shared"}]
    result = harness.run(
        task(
            {
                "name": "check",
                "image": "sh",
                "env": env,
                "volumeMounts": shared,
                "script": 'test -f "$SHARED/up"\ntest ! -e "$SHARED/sidecar-term"\necho seen',
            },
            sidecars=[
                {
                    "name": "server",
                    "image": "sh",
                    "env": env,
                    "volumeMounts": shared,
                    "script": "trap 'echo TERM > \"$SHARED/sidecar-term\"; exit 0' TERM\nsleep 0.5\n"
                    'touch "$SHARED/up"\nwhile :; do sleep 0.05; done',
                    "readinessProbe": {"exec": {"command": ["test", "-f", "/shared/up"]}, "periodSeconds": 1},
                }
            ],
            volumes=[{"name": "shared", "emptyDir": {}}],
        ),
        TaskRun(),
    )
    assert (result.steps[0].reason, result.steps[0].stdout) == ("Completed", b"seen\n")
    assert "-wait_file" in result.pod.steps[0].args
    sidecar = result.sidecars[0]
    assert (sidecar.container, sidecar.ready, sidecar.killed, sidecar.exit_code) == ("sidecar-server", True, False, 0)
    assert (result.pod.volume_dir("shared") / "sidecar-term").read_text() == "TERM\n"
    assert result.pod.annotations["tekton.dev/ready"] == "READY"


def test_sidecar_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    harness = Harness(tmp_path, grace_period=1.0)
    result = harness.run(
        task(
            {"name": "quick", "image": "sh", "command": ["true"]},
            sidecars=[{"name": "stubborn", "image": "sh", "script": "trap '' TERM\nwhile :; do sleep 0.05; done"}],
        ),
        TaskRun(),
    )
    assert (result.sidecars[0].killed, result.sidecars[0].exit_code) == (True, 128 + signal.SIGKILL)


def test_go_duration_strings() -> None:
    assert [go_duration_string(s) for s in (2, 90, 1.5, 0.5, 3600, 0.000_001)] == [
        "2s", "1m30s", "1.5s", "500ms", "1h0m0s", "1µs",
    ]  # fmt: skip

"""TaskRuns on Tekton's own code (its reconciler builds the pods, its entrypoint runs the steps), traced both
ways (inject, webhook), compared step by step with the same TaskRun unpatched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.real.conftest import TASKS
from tests.real.e2e import PATHS, Rig, StepReport, run_task
from tests.real.tekton import build_pod
from tests.registry import RegistryServer, push_bundle, tkn_bundle, tkn_object

REPO = Path(__file__).resolve().parents[2]
BEHAVIOURS = TASKS / "behaviours.yaml"
CORPUS = REPO.parent / "shared" / "corpus" / "konflux-build-definitions"

pytestmark = pytest.mark.root


def assert_clean(reports: list[StepReport], steps: int) -> None:
    problems = [r.line() for r in reports if r.problems]
    assert not problems, "\n".join(problems)
    assert len(reports) == steps * len(PATHS), [r.line() for r in reports]


def test_the_pod_is_the_one_tektons_reconciler_makes(rig: Rig) -> None:
    pod = build_pod([BEHAVIOURS], task="results-and-continue")
    init = [c["name"] for c in pod["spec"]["initContainers"]]
    assert init == ["prepare", "place-scripts"]
    step = pod["spec"]["containers"][1]
    assert step["name"] == "step-fail-and-continue"
    assert step["command"] == ["/tekton/bin/entrypoint"]
    args = step["args"]
    assert args[args.index("-on_error") + 1] == "continue"
    assert args[args.index("-entrypoint") + 1 :] == ["sh", "--", "-c", "echo two; exit 3"]
    assert pod["spec"]["containers"][-1]["name"] == "sidecar-sleeper"
    assert pod["metadata"]["labels"]["tekton.dev/task"] == "results-and-continue"


@pytest.mark.parametrize(
    ("task", "steps"),
    [("results-and-continue", 4), ("fails-then-skips", 2), ("times-out", 2), ("killed-by-signal", 2)],
)
def test_behaviours_match_the_unpatched_run(rig: Rig, task: str, steps: int) -> None:
    assert_clean(run_task(rig, [BEHAVIOURS], task, PATHS), steps)


def test_images_users_and_workspaces_match_the_unpatched_run(rig: Rig) -> None:
    reports = run_task(rig, [BEHAVIOURS], "images-and-users", PATHS, workspaces={"out": "emptyDir"})
    assert_clean(reports, 4)


def test_a_stepaction_step_is_recorded_as_the_step_that_references_it(rig: Rig) -> None:
    """The StepAction is patched once, with its own name; the span must name the Task's step."""
    run = rig.run([BEHAVIOURS], "results-and-continue", "inject")
    spans = {s.attributes["tekton.step.name"]: s for s in rig.spans_of(run)}
    step = spans["from-stepaction"]
    assert step.attributes["tekton.step.index"] == 2
    assert step.resource["k8s.container.name"] == "step-from-stepaction"
    assert "say-hello" not in spans


def test_a_step_tekton_times_out_gets_a_timeout_span(rig: Rig) -> None:
    run = rig.run([BEHAVIOURS], "times-out", "webhook")
    assert run.step_state("too-slow")["terminationReason"] == "TimeoutExceeded"
    (span,) = [s for s in rig.spans_of(run) if s.attributes["tekton.step.name"] == "too-slow"]
    assert span.attributes["cicd.pipeline.task.run.result"] == "timeout"
    assert span.attributes["tekton.step.timeout"] == 2.0


def test_the_inject_task_of_tekton_dir(rig: Rig, tmp_path: Path) -> None:
    """tekton/task-inject.yaml patching a checked-out Task on a PVC workspace, traced itself."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(BEHAVIOURS, source / "tasks.yaml")
    reports = run_task(
        rig,
        [REPO / "tekton" / "task-inject.yaml"],
        "step-tracer-inject",
        PATHS,
        workspaces={"source": "pvc:source"},
        claims={"source": source},
    )
    assert_clean(reports, 1)


def test_the_patch_bundle_task_of_tekton_dir(rig: Rig, tmp_path: Path) -> None:
    """tekton/task-patch-bundle.yaml against a real registry: the same bundle digest traced or not."""
    with RegistryServer(tmp_path / "registry") as registry:
        task = {"apiVersion": "tekton.dev/v1", "kind": "Task", "metadata": {"name": "hello"}}
        task["spec"] = {"steps": [{"name": "say", "image": "busybox", "script": "echo hello"}]}
        push_bundle(registry.raw(), "tasks/hello", "1.0", tkn_bundle([tkn_object(task)]))
        params = {"SOURCE": f"{registry.host}/tasks/hello:1.0", "DESTINATION": f"{registry.host}/tasks/hello:traced"}
        files = [REPO / "tekton" / "task-patch-bundle.yaml"]
        reports = run_task(rig, files, "step-tracer-patch-bundle", PATHS, params=params)
    assert_clean(reports, 1)


SUMMARY = {"pipelinerun-name": "demo", "git-url": "https://x/y", "image-url": "quay.io/x/y:1"}
KONFLUX = [("summary/0.4/summary.yaml", "summary", {**SUMMARY, "build-task-status": "Succeeded"})]


@pytest.mark.corpus
@pytest.mark.parametrize(("path", "task", "params"), KONFLUX, ids=[k[1] for k in KONFLUX])
def test_konflux_tasks_match_the_unpatched_run(rig: Rig, path: str, task: str, params: dict[str, str]) -> None:
    source = CORPUS / "task" / path
    if not source.exists():
        pytest.skip(f"{source} is not here")
    reports = run_task(rig, [source], task, PATHS, params=params, workspaces={"workspace": "emptyDir"})
    steps = len([r for r in reports if r.path == PATHS[0]])
    assert steps >= 1
    assert_clean(reports, steps)
    assert all(r.spans == 1 for r in reports), json.dumps([r.line() for r in reports])

"""Validation of patched resources by Tekton's structural rules, and the bundle limits."""

from __future__ import annotations

from typing import Any

import pytest

from step_tracer.inject import (
    MAX_BUNDLE_OBJECTS,
    InjectError,
    InjectOptions,
    patch_text,
    validate_bundle,
    validate_resource,
)

OPTS = InjectOptions()
STEP = "  steps:\n    - {name: s, image: a, command: [x]}\n"


def task(spec: str, name: str = "t") -> str:
    return f"apiVersion: tekton.dev/v1\nkind: Task\nmetadata:\n  name: {name}\nspec:\n{spec}"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "  steps:\n    - name: r\n      ref: {name: act}\n      image: a\n      env: []\n",
            "f.yaml: Task/t: step r: a StepAction reference may not set image, env",
        ),
        (
            "  steps:\n    - {name: dup, image: a, command: [x]}\n    - {name: dup, image: a, command: [y]}\n",
            "f.yaml: Task/t: step dup: step name used 2 times",
        ),
        (
            "  volumes:\n    - {name: v, emptyDir: {}}\n    - {name: v, emptyDir: {}}\n" + STEP,
            "f.yaml: Task/t: volume name 'v' used 2 times",
        ),
        (
            "  volumes:\n    - {name: tekton-internal-x, emptyDir: {}}\n" + STEP,
            "f.yaml: Task/t: volume name 'tekton-internal-x' is reserved for Tekton",
        ),
        (
            "  steps:\n    - name: s\n      image: a\n      command: [x]\n"
            "      volumeMounts:\n        - {name: v, mountPath: /tekton/results}\n",
            "f.yaml: Task/t: step s: volume mount 'v' at /tekton/results: paths under /tekton/ are reserved",
        ),
        (
            "  stepTemplate:\n    volumeMounts:\n      - {name: v, mountPath: /tekton/bin}\n" + STEP,
            "f.yaml: Task/t: step stepTemplate: volume mount 'v' at /tekton/bin: paths under /tekton/ are reserved",
        ),
        (
            "  sidecars:\n    - {name: x, image: a}\n    - {name: x, image: b}\n" + STEP,
            "f.yaml: Task/t: sidecar name 'x' used 2 times",
        ),
    ],
)
def test_invalid_results_are_refused_with_file_resource_and_step(spec: str, expected: str) -> None:
    with pytest.raises(InjectError) as err:
        patch_text(task(spec), OPTS, source="f.yaml")
    assert expected in [str(p) for p in err.value.problems]


def test_tekton_home_and_our_paths_are_allowed() -> None:
    spec = (
        "  steps:\n    - name: s\n      image: a\n      command: [x]\n"
        "      volumeMounts:\n        - {name: h, mountPath: /tekton/home/.cache}\n"
        "  volumes:\n    - {name: h, emptyDir: {}}\n"
    )
    result = patch_text(task(spec), OPTS)
    assert result.changed


def test_invalid_inline_task_in_pipeline_and_stepaction() -> None:
    pipeline = """\
apiVersion: tekton.dev/v1
kind: Pipeline
metadata:
  name: p
spec:
  tasks:
    - name: build
      taskSpec:
        steps:
          - name: both
            image: a
            script: echo
            command: [x]
"""
    with pytest.raises(
        InjectError, match=r"p.yaml: Pipeline/p tasks\[build\]: step both: sets both script and command"
    ):
        patch_text(pipeline, OPTS, source="p.yaml")
    action: dict[str, Any] = {
        "apiVersion": "tekton.dev/v1beta1",
        "kind": "StepAction",
        "metadata": {"name": "a"},
        "spec": {
            "image": "x",
            "script": "echo",
            "command": ["y"],
            "volumeMounts": [{"name": "v", "mountPath": "/tekton/x"}],
        },
    }
    assert [str(p) for p in validate_resource(action, "a.json")] == [
        "a.json: StepAction/a: sets both script and command",
        "a.json: StepAction/a: volume mount 'v' at /tekton/x: paths under /tekton/ are reserved",
    ]


def bundle_object(kind: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "tekton.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": {}}


def test_bundle_limits() -> None:
    ok = [bundle_object("Task", f"t{i}") for i in range(MAX_BUNDLE_OBJECTS)]
    assert validate_bundle(ok) == []
    too_many = [*ok, bundle_object("Pipeline", "p")]
    assert [str(p) for p in validate_bundle(too_many, "bundle.tar")] == [
        "bundle.tar: 21 objects; a bundle holds at most 20"
    ]
    mixed = [
        bundle_object("Task", "a"),
        bundle_object("Task", "a"),
        bundle_object("StepAction", "a"),
        bundle_object("ConfigMap", "c"),
    ]
    assert [str(p) for p in validate_bundle(mixed)] == [
        "bundle: ConfigMap/c: kind must be one of Task, Pipeline, StepAction",
        "bundle: Task/a: appears 2 times; names must be unique per kind",
    ]
    nameless = {"apiVersion": "tekton.dev/v1", "kind": "Task", "metadata": {}}
    assert [str(p) for p in validate_bundle([nameless])] == ["bundle: Task/?: metadata.name is required in a bundle"]

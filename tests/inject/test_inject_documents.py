"""Round-trip fidelity: only the injection changes, in YAML (any layout) and JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ruamel.yaml import YAML

from step_tracer.inject import InjectError, InjectOptions, ParseError, patch_text

OPTS = InjectOptions()
W = "/step-tracer/bin/step-tracer"


def load_all(text: str) -> list[Any]:
    return list(YAML(typ="safe", pure=True).load_all(text))


def only_insertions(before: str, after: str) -> list[str]:
    """The lines `after` adds, asserting that `before`'s lines all survive, in order and unchanged."""
    old = before.splitlines(keepends=True)
    added, i = [], 0
    for line in after.splitlines(keepends=True):
        if i < len(old) and line == old[i]:
            i += 1
        else:
            added.append(line)
    assert i == len(old), f"original line {i + 1} changed or vanished: {old[i]!r}"
    return added


RICH = """\
# Build task -- hand written, keep the comments!
apiVersion: tekton.dev/v1
kind: Task
metadata:
  name: rich   # trailing comment
  annotations:
    tekton.dev/displayName: 'Rich task'
    note: "double"
spec:
  description: >-
    A long folded description that a re-dump would re-wrap
    across lines.
  params:
  - name: flags       # offset-0 list, unlike the steps below
    type: string
    default: ''
  workspaces:
      - name: source   # deeper indentation than the rest
  volumes:
    - {name: cache, emptyDir: {}}

  # Steps run in order.
  steps:
    - name: compile
      image: "golang:1.22"
      workingDir: $(workspaces.source.path)
      env:
      - name: GOFLAGS
        value: "$(params.flags)"
      script: |
        go build ./...   # keep this comment inside the script

    - name: plain
      image: alpine
      command:
        - /bin/echo   # why: sanity
      args: ["done"]
  results:
    - name: digest
      description: |
        The digest.
"""


def test_comments_quotes_order_and_odd_indentation_survive() -> None:
    result = patch_text(RICH, OPTS)
    added = "".join(only_insertions(RICH, result.text))
    assert "step-tracer" in added
    for line in added.splitlines():
        assert (
            "step-tracer" in line
            or line.strip().startswith("value: '[{")
            or line.strip()
            in {
                "set -e",
                "#!/bin/sh",
                "emptyDir: {}",
                "- path: labels",
                "- path: annotations",
                "fieldRef:",
                "fieldPath: metadata.labels",
                "fieldPath: metadata.annotations",
                "- path: name",
                "- path: namespace",
                "- path: uid",
                "fieldPath: metadata.name",
                "fieldPath: metadata.namespace",
                "fieldPath: metadata.uid",
                "env:",
                "- name: K8S_NODE_NAME",
                "- name: STEP_TRACER_STEPS",
                "valueFrom:",
                "fieldPath: spec.nodeName",
                "downwardAPI:",
                "items:",
                "stepTemplate:",
                "volumeMounts:",
                "readOnly: true",
                "sidecars:",
                "command:",
                "- sidecar",
                "- --spool",
                "- --install-wrapper",
                "- --ready",
                "envFrom:",
                "- secretRef:",
                "optional: true",
                "computeResources:",
                "requests:",
                "cpu: 10m",
                "memory: 32Mi",
                "limits:",
                "memory: 64Mi",
                "readinessProbe:",
                "exec:",
                "periodSeconds: 1",
                "securityContext:",
                "runAsNonRoot: true",
                "allowPrivilegeEscalation: false",
                "capabilities:",
                "drop:",
                "- ALL",
                "seccompProfile:",
                "type: RuntimeDefault",
                "run",
                "- run",
                "- --",
                "- --tekton-step",
                "- --tekton-step-index",
                '- "1"',
                "- plain",
            }
        ), line
    # New volumes join the existing list; the stepTemplate goes above the comment introducing `steps`,
    # the sidecars right after the steps.
    assert "  volumes:\n    - {name: cache, emptyDir: {}}\n    - name: step-tracer-bin\n      emptyDir: {}\n" in (
        result.text
    )
    assert "        readOnly: true\n  # Steps run in order.\n  steps:\n" in result.text
    assert '      args: ["done"]\n  sidecars:\n    - name: step-tracer\n' in result.text
    assert result.text.index("  stepTemplate:") < result.text.index("  # Steps run in order.")
    data = load_all(result.text)[0]
    assert data["spec"]["description"] == "A long folded description that a re-dump would re-wrap across lines."
    assert data["spec"]["steps"][1]["command"] == [
        W, "run", "--tekton-step", "plain", "--tekton-step-index", "1", "--", "/bin/echo"
    ]  # fmt: skip
    assert patch_text(result.text, OPTS).text == result.text


def test_multi_document_stream_passes_other_kinds_through() -> None:
    configmap = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: cm
data:
  script: |
    echo not a step
  command: '["x"]'
"""
    task = (
        "apiVersion: tekton.dev/v1\nkind: Task\nmetadata:\n  name: t\nspec:\n"
        "  steps:\n  - name: s\n    image: a\n    script: |\n      echo\n"
    )
    text = f"---\n{configmap}---\n# a comment between documents\n{task}...\n---\n{configmap}"
    result = patch_text(text, OPTS)
    assert result.text.startswith(f"---\n{configmap}---\n# a comment between documents\n")
    assert result.text.endswith(f"...\n---\n{configmap}")
    docs = load_all(result.text)
    assert [d["kind"] for d in docs] == ["ConfigMap", "Task", "ConfigMap"]
    assert docs[1]["spec"]["steps"][0]["script"].startswith(f"#!{W} run-script --tekton-step=s ")
    only_insertions(text, result.text)


@pytest.mark.parametrize(
    ("layout", "dash", "content", "key"),
    [
        # mapping indent, dash column and item column under a key at column 2 ("steps")
        ("  steps:\n  - name: s\n    image: a\n    script: |\n      echo\n", 2, 4, 4),
        ("  steps:\n    - name: s\n      image: a\n      script: |\n        echo\n", 4, 6, 4),
        ("  steps:\n      -   name: s\n          image: a\n          script: |\n            echo\n", 6, 10, 4),
    ],
)
def test_new_blocks_follow_the_files_layout(layout: str, dash: int, content: int, key: int) -> None:
    text = f"apiVersion: tekton.dev/v1\nkind: Task\nmetadata:\n  name: t\nspec:\n{layout}"
    result = patch_text(text, OPTS)
    only_insertions(text, result.text)
    # The sidecar list uses the same dash/content columns as `steps`.
    assert f"\n  sidecars:\n{' ' * dash}-{' ' * (content - dash - 1)}name: step-tracer\n" in result.text
    assert f"\n{' ' * content}image: quay.io/step-tracer/step-tracer:0.1.0@sha256:{'0' * 64}\n" in result.text


def test_four_space_indentation() -> None:
    text = (
        "apiVersion: tekton.dev/v1\nkind: Task\nmetadata:\n    name: t\nspec:\n    steps:\n"
        "        -   name: s\n            image: a\n            script: |\n                echo\n"
    )
    result = patch_text(text, OPTS)
    only_insertions(text, result.text)
    assert "\n    stepTemplate:\n        volumeMounts:\n        -   name: step-tracer-bin\n" in result.text or (
        "\n    stepTemplate:\n        volumeMounts:\n            -   name: step-tracer-bin\n" in result.text
    )
    assert f"                #!{W} run-script --tekton-step=s --tekton-step-index=0\n" in result.text


def test_crlf_bom_and_missing_final_newline() -> None:
    text = (
        "\ufeffapiVersion: tekton.dev/v1\r\nkind: Task\r\nmetadata:\r\n  name: t\r\nspec:\r\n  steps:\r\n"
        "    - name: s\r\n      image: a\r\n      script: |\r\n        echo hi"
    )
    result = patch_text(text, OPTS)
    assert result.text.startswith("\ufeffapiVersion")
    assert "\n" not in result.text.replace("\r\n", "")
    data = load_all(result.text.lstrip("\ufeff"))[0]
    assert data["spec"]["steps"][0]["script"] == (
        f"#!{W} run-script --tekton-step=s --tekton-step-index=0\n#!/bin/sh\nset -e\necho hi"
    )
    assert data["spec"]["sidecars"][0]["name"] == "step-tracer"
    assert patch_text(result.text, OPTS).text == result.text


def test_flow_and_null_containers_are_extended() -> None:
    text = """\
apiVersion: tekton.dev/v1
kind: Task
metadata: {name: t}
spec:
  volumes: []
  stepTemplate: {env: [{name: A, value: b}]}
  sidecars:
  steps:
    - {name: s, image: a, command: [run]}
"""
    result = patch_text(text, OPTS)
    spec = load_all(result.text)[0]["spec"]
    assert [v["name"] for v in spec["volumes"]] == ["step-tracer-bin", "step-tracer-spool", "step-tracer-podinfo"]
    assert spec["stepTemplate"]["env"] == [{"name": "A", "value": "b"}]
    assert [m["mountPath"] for m in spec["stepTemplate"]["volumeMounts"]] == [
        "/step-tracer/bin", "/step-tracer/spool", "/step-tracer/podinfo"
    ]  # fmt: skip
    assert spec["sidecars"][0]["image"] == "quay.io/step-tracer/step-tracer:0.1.0@sha256:" + "0" * 64
    assert spec["steps"][0]["command"][0] == W
    # An empty flow list in a block mapping gets block lines, not one long flow line; a non-empty one stays flow.
    assert "spec:\n  volumes:\n    - name: step-tracer-bin\n      emptyDir: {}\n" in result.text
    assert "  stepTemplate: {env: [{name: A, value: b}], volumeMounts: [{name: step-tracer-bin, " in result.text
    assert patch_text(result.text, OPTS).text == result.text


JSON_TASK = {
    "apiVersion": "tekton.dev/v1",
    "kind": "Task",
    "metadata": {"name": "j"},
    "spec": {"steps": [{"name": "s", "image": "a", "script": "echo é"}, {"name": "c", "image": "a", "command": ["x"]}]},
}


@pytest.mark.parametrize(
    ("dump", "ending"),
    [
        (lambda o: json.dumps(o, indent=2), "\n"),
        (lambda o: json.dumps(o, indent=4, ensure_ascii=False), ""),
        (lambda o: json.dumps(o, separators=(",", ":")), ""),
        (lambda o: json.dumps(o), "\n"),
    ],
)
def test_json_in_json_out_with_the_same_layout(dump: Any, ending: str) -> None:
    text = dump(JSON_TASK) + ending
    result = patch_text(text, OPTS)
    data = json.loads(result.text)
    assert data["spec"]["steps"][0]["script"].startswith(f"#!{W} run-script --tekton-step=s --tekton-step-index=0\n")
    assert data["spec"]["steps"][1]["command"][-2:] == ["--", "x"]
    assert list(data["spec"]) == ["volumes", "stepTemplate", "steps", "sidecars"]
    expected = dump(data) + ending
    assert result.text == expected
    assert patch_text(result.text, OPTS).text == result.text


def test_json_list_of_resources_and_kind_list() -> None:
    text = json.dumps({"apiVersion": "v1", "kind": "List", "items": [JSON_TASK, {"kind": "ConfigMap"}]})
    data = json.loads(patch_text(text, OPTS, source="l.json").text)
    assert data["items"][0]["spec"]["sidecars"][0]["name"] == "step-tracer"
    assert data["items"][1] == {"kind": "ConfigMap"}
    array = json.loads(patch_text(json.dumps([JSON_TASK]), OPTS).text)
    assert array[0]["spec"]["steps"][1]["command"][0] == W


def test_unchanged_input_is_returned_as_is() -> None:
    text = "# just a comment\nkind: ConfigMap\n"
    result = patch_text(text, OPTS)
    assert result.text is text and not result.changed
    pipeline_of_refs = (
        "apiVersion: tekton.dev/v1\nkind: Pipeline\nmetadata:\n  name: p\nspec:\n"
        "  tasks:\n    - name: a\n      taskRef:\n        name: x\n"
    )
    result = patch_text(pipeline_of_refs, OPTS)
    assert result.text == pipeline_of_refs
    assert [n.level for n in result.notes] == ["info"]


@pytest.mark.parametrize("text", ["a: [1, 2\n", "{broken json", "a: 1\na: 2\n"])
def test_parse_errors(text: str) -> None:
    with pytest.raises(ParseError) as err:
        patch_text(text, OPTS, source="bad.yaml")
    assert str(err.value).startswith("bad.yaml: invalid ")


def test_aliases_shared_between_steps_are_refused() -> None:
    text = """\
apiVersion: tekton.dev/v1
kind: Task
metadata: {name: t}
spec:
  steps:
    - &s {name: a, image: x, script: echo}
    - *s
"""
    with pytest.raises(InjectError, match="alias"):
        patch_text(text, OPTS, source="a.yaml")

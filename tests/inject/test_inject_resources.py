"""Resource walking (Tasks, Pipelines, StepActions, versions) and the pod-level additions with collisions."""

from __future__ import annotations

from typing import Any

import pytest
from ruamel.yaml import YAML

from step_tracer.inject import InjectError, InjectOptions, patch_text
from tests.inject.test_inject_steps import VOLUMES_AND_TEMPLATE, W, sidecars, steps_json

OPTS = InjectOptions()


SCRIPT_STEP = "    - name: s\n      image: a\n      script: |\n        echo\n"


def load(text: str) -> Any:
    return YAML(typ="safe", pure=True).load(text)


def resource(spec: str, *, api: str = "tekton.dev/v1", kind: str = "Task", name: str = "t") -> str:
    return f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n{spec}"


def test_additions_merge_into_existing_volumes_step_template_and_sidecars() -> None:
    text = """\
apiVersion: tekton.dev/v1
kind: Task
metadata:
  name: t
spec:
  volumes:
    - name: certs
      secret:
        secretName: certs
  stepTemplate:
    env:
      - name: HOME
        value: /tekton/home
    volumeMounts:
      - name: certs
        mountPath: /etc/certs
  steps:
    - name: s
      image: a
      script: |
        echo
  sidecars:
    - name: registry
      image: registry:2
"""
    result = patch_text(text, OPTS)
    spec = load(result.text)["spec"]
    assert [v["name"] for v in spec["volumes"]] == [
        "certs",
        "step-tracer-bin",
        "step-tracer-spool",
        "step-tracer-podinfo",
    ]
    assert spec["stepTemplate"]["env"] == [{"name": "HOME", "value": "/tekton/home"}]
    assert spec["stepTemplate"]["volumeMounts"] == [
        {"name": "certs", "mountPath": "/etc/certs"},
        {"name": "step-tracer-bin", "mountPath": "/step-tracer/bin", "readOnly": True},
        {"name": "step-tracer-spool", "mountPath": "/step-tracer/spool"},
        {"name": "step-tracer-podinfo", "mountPath": "/step-tracer/podinfo", "readOnly": True},
    ]
    assert [s["name"] for s in spec["sidecars"]] == ["registry", "step-tracer"]
    sidecar = spec["sidecars"][1]
    assert sidecar["volumeMounts"][0] == {"name": "step-tracer-bin", "mountPath": "/step-tracer/bin"}
    assert sidecar["envFrom"] == [{"secretRef": {"name": "step-tracer-otlp", "optional": True}}]
    assert sidecar["computeResources"] == {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}
    assert sidecar["readinessProbe"] == {
        "exec": {"command": ["step-tracer", "sidecar", "--ready", "--spool", "/step-tracer/spool"]},
        "periodSeconds": 1,
    }
    assert result.additions_missing[0].resource == "Task/t"
    again = patch_text(result.text, OPTS)
    assert again.text == result.text and again.additions_missing == [] and again.pending() == []


def test_step_template_without_mounts_gets_the_key() -> None:
    text = resource(f"  stepTemplate:\n    env:\n      - name: A\n        value: b\n  steps:\n{SCRIPT_STEP}")
    result = patch_text(text, OPTS)
    assert "        value: b\n    volumeMounts:\n      - name: step-tracer-bin\n" in result.text


def test_options_change_image_secret_and_wrapper() -> None:
    options = InjectOptions(wrapper="/opt/st/bin/st", sidecar_image="example.com/st:dev", otlp_secret="otlp-creds")
    text = resource("  steps:\n    - name: s\n      image: a\n      command: [x]\n")
    spec = load(patch_text(text, options).text)["spec"]
    assert spec["steps"][0]["command"][0] == "/opt/st/bin/st"
    assert spec["sidecars"][0]["image"] == "example.com/st:dev"
    assert spec["sidecars"][0]["envFrom"][0]["secretRef"]["name"] == "otlp-creds"


COLLIDING = resource(
    "{extra}  steps:\n    - name: s\n      image: a\n{step_extra}      script: |\n        echo\n", name="clash"
)


@pytest.mark.parametrize(
    ("extra", "step_extra", "message"),
    [
        (
            "  stepTemplate:\n    volumeMounts:\n      - name: mine\n        mountPath: /step-tracer/spool\n",
            "",
            "sits at /step-tracer/spool",
        ),
        (
            "",
            "      volumeMounts:\n        - name: data\n          mountPath: /step-tracer/bin/\n",
            "step s: volumeMounts",
        ),
        ("  workspaces:\n    - name: w\n      mountPath: /step-tracer/podinfo\n", "", "workspace w"),
    ],
)
def test_collisions_name_file_resource_and_step(extra: str, step_extra: str, message: str) -> None:
    with pytest.raises(InjectError) as err:
        patch_text(COLLIDING.format(extra=extra, step_extra=step_extra), OPTS, source="c.yaml")
    text = str(err.value)
    assert text.startswith("c.yaml: Task/clash: ") and message in text, text


def test_entries_of_our_names_are_ours_and_brought_up_to_date() -> None:
    """What an earlier patch (or a hand) wrote under step-tracer's names is step-tracer's: re-patching makes it what
    this patch would add, down to the fields that differ, and says it was stale."""
    extra = (
        "  volumes:\n    - name: step-tracer-bin\n      hostPath: {path: /bin}\n"
        "  stepTemplate:\n    volumeMounts:\n      - name: step-tracer-bin\n        mountPath: /step-tracer/bin\n"
    )
    text = COLLIDING.format(extra=extra, step_extra="")
    result = patch_text(text, OPTS, source="c.yaml")
    fresh = patch_text(COLLIDING.format(extra="", step_extra=""), OPTS)
    assert load(result.text) == load(fresh.text)
    assert "      hostPath" not in result.text
    assert "        readOnly: true\n      - name: step-tracer-spool" in result.text
    assert result.pending() == [
        "c.yaml: Task/clash: step s: not instrumented",
        "c.yaml: Task/clash: stale: volumes entry 'step-tracer-bin' out of date (the whole entry); "
        "stepTemplate volumeMounts entry 'step-tracer-bin' out of date (readOnly)",
    ]
    assert patch_text(result.text, OPTS).text == result.text


def test_previously_patched_with_another_sidecar_image_changes_one_line() -> None:
    text = COLLIDING.format(extra="", step_extra="")
    patched = patch_text(text, OPTS).text
    image = "quay.io/step-tracer/step-tracer:0.2.0"
    result = patch_text(patched, InjectOptions(sidecar_image=image))
    assert result.text == patched.replace(f"image: {OPTS.sidecar_image}\n", f"image: {image}\n")
    assert result.pending() == ["<text>: Task/clash: stale: sidecars entry 'step-tracer' out of date (image)"]


PIPELINE = """\
apiVersion: tekton.dev/{version}
kind: Pipeline
metadata:
  name: p
spec:
  tasks:
    - name: remote
      taskRef:
        resolver: bundles
    - name: inline
      taskSpec:
        steps:
          - name: one
            image: a
            script: |
              echo one
    - name: custom
      taskSpec:
        apiVersion: example.dev/v1
        kind: Wait
        spec: {{duration: 1s}}
    - name: nested
      pipelineSpec:
        tasks:
          - name: deep
            taskSpec:
              steps:
                - name: two
                  image: a
                  command: [two]
  finally:
    - name: cleanup
      taskSpec:
        steps:
          - image: a
            command: [rm, -rf, /x]
"""


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_pipeline_inline_task_specs_are_patched_refs_listed(version: str) -> None:
    text = PIPELINE.format(version=version)
    result = patch_text(text, OPTS, source="p.yaml")
    spec = load(result.text)["spec"]
    inline = spec["tasks"][1]["taskSpec"]
    assert inline["steps"][0]["script"].startswith(f"#!{W} run-script --tekton-step=one --tekton-step-index=0\n")
    assert inline["sidecars"][0]["name"] == "step-tracer"
    resources_key = "resources" if version == "v1beta1" else "computeResources"
    assert resources_key in inline["sidecars"][0]
    assert spec["tasks"][0] == {"name": "remote", "taskRef": {"resolver": "bundles"}}
    assert spec["tasks"][2]["taskSpec"] == {"apiVersion": "example.dev/v1", "kind": "Wait", "spec": {"duration": "1s"}}
    deep = spec["tasks"][3]["pipelineSpec"]["tasks"][0]["taskSpec"]
    assert deep["steps"][0]["command"][:4] == [W, "run", "--tekton-step", "two"]
    final = spec["finally"][0]["taskSpec"]
    assert final["steps"][0]["command"] == [
        W, "run", "--tekton-step", "unnamed-0", "--tekton-step-index", "0", "--", "rm", "-rf", "/x"
    ]  # fmt: skip
    assert {str(s.location) for s in result.steps} == {
        "p.yaml: Pipeline/p tasks[inline]: step one",
        "p.yaml: Pipeline/p tasks[nested] tasks[deep]: step two",
        "p.yaml: Pipeline/p finally[cleanup]: step unnamed-0",
    }
    infos = [str(n) for n in result.notes if n.level == "info"]
    assert (
        "info: p.yaml: Pipeline/p tasks[remote]: reference (bundles) left as is; patch the referenced resource" in infos
    )
    assert any("tasks[custom]: embedded custom task" in i for i in infos)
    assert patch_text(result.text, OPTS).text == result.text


def test_v1beta1_task_gets_v1beta1_sidecar_fields() -> None:
    result = patch_text(resource(f"  steps:\n{SCRIPT_STEP}", api="tekton.dev/v1beta1"), OPTS)
    expected_steps = (
        "    - name: s\n      image: a\n      script: |\n"
        f"        #!{W} run-script --tekton-step=s --tekton-step-index=0\n"
        "        #!/bin/sh\n        set -e\n        echo\n"
    )
    assert result.text == (
        "apiVersion: tekton.dev/v1beta1\nkind: Task\nmetadata:\n  name: t\nspec:\n"
        f"{VOLUMES_AND_TEMPLATE}  steps:\n{expected_steps}{sidecars('resources', steps_json(expected_steps))}"
    )


@pytest.mark.parametrize(
    ("api", "kind"),
    [("tekton.dev/v1alpha1", "Task"), ("tekton.dev/v1", "StepAction"), ("tekton.dev/v1alpha1", "Pipeline")],
)
def test_unsupported_versions_are_left_alone_with_a_warning(api: str, kind: str) -> None:
    text = resource(f"  steps:\n{SCRIPT_STEP}", api=api, kind=kind)
    result = patch_text(text, OPTS)
    assert result.text == text
    assert "is not supported" in result.warnings[0].message


def test_other_tekton_kinds_pass_through() -> None:
    text = resource(
        "  taskSpec:\n    steps:\n      - name: s\n        image: a\n        script: echo\n", kind="TaskRun"
    )
    result = patch_text(text, OPTS)
    assert result.text == text and result.notes == [] and result.steps == []


def test_task_with_only_ref_steps_still_gets_the_sidecar() -> None:
    text = resource("  steps:\n    - name: r\n      ref:\n        name: act\n")
    spec = load(patch_text(text, OPTS).text)["spec"]
    assert spec["steps"] == [{"name": "r", "ref": {"name": "act"}}]
    assert spec["stepTemplate"]["volumeMounts"][0]["mountPath"] == "/step-tracer/bin"
    assert spec["sidecars"][0]["name"] == "step-tracer"

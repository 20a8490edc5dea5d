"""How each kind of step is wrapped: exact output for small Tasks and StepActions."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from ruamel.yaml import YAML

from step_tracer.inject import DEFAULT_SIDECAR_IMAGE, InjectError, InjectOptions, PatchResult, patch_text

W = "/step-tracer/bin/step-tracer"
OPTS = InjectOptions()

# What every bare Task spec (no volumes, stepTemplate or sidecars) gains, in the 2/4/2 layout of task().
VOLUMES_AND_TEMPLATE = """\
  volumes:
    - name: step-tracer-bin
      emptyDir: {}
    - name: step-tracer-spool
      emptyDir: {}
    - name: step-tracer-podinfo
      downwardAPI:
        items:
          - path: labels
            fieldRef:
              fieldPath: metadata.labels
          - path: annotations
            fieldRef:
              fieldPath: metadata.annotations
          - path: name
            fieldRef:
              fieldPath: metadata.name
          - path: namespace
            fieldRef:
              fieldPath: metadata.namespace
          - path: uid
            fieldRef:
              fieldPath: metadata.uid
  stepTemplate:
    volumeMounts:
      - name: step-tracer-bin
        mountPath: /step-tracer/bin
        readOnly: true
      - name: step-tracer-spool
        mountPath: /step-tracer/spool
      - name: step-tracer-podinfo
        mountPath: /step-tracer/podinfo
        readOnly: true
"""


def sidecars(resources_key: str = "computeResources", steps_json: str = "[]") -> str:
    return f"""\
  sidecars:
    - name: step-tracer
      image: {DEFAULT_SIDECAR_IMAGE}
      command:
        - step-tracer
        - sidecar
        - --spool
        - /step-tracer/spool
        - --install-wrapper
        - /step-tracer/bin
      volumeMounts:
        - name: step-tracer-bin
          mountPath: /step-tracer/bin
        - name: step-tracer-spool
          mountPath: /step-tracer/spool
        - name: step-tracer-podinfo
          mountPath: /step-tracer/podinfo
          readOnly: true
      env:
        - name: STEP_TRACER_STEPS
          value: '{steps_json}'
        - name: K8S_NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
      envFrom:
        - secretRef:
            name: step-tracer-otlp
            optional: true
      {resources_key}:
        requests:
          cpu: 10m
          memory: 32Mi
        limits:
          memory: 64Mi
      readinessProbe:
        exec:
          command:
            - step-tracer
            - sidecar
            - --ready
            - --spool
            - /step-tracer/spool
        periodSeconds: 1
      securityContext:
        runAsNonRoot: true
        allowPrivilegeEscalation: false
        capabilities:
          drop:
            - ALL
        seccompProfile:
          type: RuntimeDefault
"""


def task(steps: str, api: str = "tekton.dev/v1") -> str:
    return f"apiVersion: {api}\nkind: Task\nmetadata:\n  name: t\nspec:\n  steps:\n{steps}"


def steps_json(steps: str) -> str:
    """STEP_TRACER_STEPS as the sidecar should get it, computed from the steps with an independent parser."""
    entries = []
    for step in YAML(typ="safe").load(steps):
        entries.append({k: step[k] for k in ("name", "image", "onError") if step.get(k)})
        if isinstance(step.get("ref"), dict):
            entries[-1]["ref"] = step["ref"]["name"]
    return json.dumps(entries, separators=(",", ":"))


def patched_task(steps: str, api: str = "tekton.dev/v1", resources_key: str = "computeResources") -> str:
    return (
        f"apiVersion: {api}\nkind: Task\nmetadata:\n  name: t\nspec:\n"
        f"{VOLUMES_AND_TEMPLATE}  steps:\n{steps}{sidecars(resources_key, steps_json(steps))}"
    )


def assert_patches(before: str, after: str, options: InjectOptions = OPTS) -> PatchResult:
    result = patch_text(task(before), options, source="t.yaml")
    assert result.text == patched_task(after)
    assert result.changed
    again = patch_text(result.text, options)
    assert again.text == result.text and not again.changed
    return result


def test_command_step_gets_the_wrapper_in_front_and_keeps_args() -> None:
    result = assert_patches(
        """\
    - name: build
      image: golang
      command:
        - go
        - build
      args:
        - ./...
""",
        f"""\
    - name: build
      image: golang
      command:
        - {W}
        - run
        - --tekton-step
        - build
        - --tekton-step-index
        - "0"
        - --
        - go
        - build
      args:
        - ./...
""",
    )
    assert [(s.location.step, s.index, s.state) for s in result.steps] == [("build", 0, "wrapped")]
    assert result.unwrapped == [] and result.warnings == []


def test_command_step_timeout_and_unnamed_index() -> None:
    assert_patches(
        """\
    - name: first
      image: alpine
      command: [sh, -c, "exit 0"]
    - image: alpine
      timeout: 90s
      command: ["sleep", "1"]
""",
        f"""\
    - name: first
      image: alpine
      command: [{W}, run, --tekton-step, first, --tekton-step-index, "0", --, sh, -c, "exit 0"]
    - image: alpine
      timeout: 90s
      command: ["{W}", "run", "--tekton-step", "unnamed-1", "--tekton-step-index", "1", \
"--tekton-step-timeout", "90s", "--", "sleep", "1"]
""",
    )


def test_script_without_shebang_gets_tekton_preamble_after_our_line() -> None:
    assert_patches(
        """\
    - name: hello
      image: alpine
      script: |
        echo "$(params.who)" "$@"
      args: [a, b]
""",
        f"""\
    - name: hello
      image: alpine
      script: |
        #!{W} run-script --tekton-step=hello --tekton-step-index=0
        #!/bin/sh
        set -e
        echo "$(params.who)" "$@"
      args: [a, b]
""",
    )


def test_script_with_shebang_keeps_interpreter_chomping_and_timeout() -> None:
    assert_patches(
        """\
    - name: py
      image: python
      timeout: 1h0m0s
      script: |-
        #!/usr/bin/env python3
        print("hi")

    - name: keep
      image: alpine
      script: |+
        #!/bin/bash
        true

""",
        f"""\
    - name: py
      image: python
      timeout: 1h0m0s
      script: |-
        #!{W} run-script --tekton-step=py --tekton-step-index=0 --tekton-step-timeout=1h0m0s
        #!/usr/bin/env python3
        print("hi")

    - name: keep
      image: alpine
      script: |+
        #!{W} run-script --tekton-step=keep --tekton-step-index=1
        #!/bin/bash
        true

""",
    )


def test_script_with_indentation_indicator() -> None:
    result = assert_patches(
        """\
    - name: indented
      image: alpine
      script: |2
          leading spaces matter
        echo done
""",
        f"""\
    - name: indented
      image: alpine
      script: |2
        #!{W} run-script --tekton-step=indented --tekton-step-index=0
        #!/bin/sh
        set -e
          leading spaces matter
        echo done
""",
    )
    assert result.text.count("  leading spaces matter") == 1


def test_quoted_and_plain_scripts_become_literal_blocks_with_the_same_value() -> None:
    """A reviewer reads a script as lines: a one-line or quoted script becomes a literal block, not one string
    full of \\n; the chomping indicator keeps its final line breaks exactly."""
    assert_patches(
        """\
    - name: q
      image: alpine
      script: "#!/bin/bash\\necho 'hi'\\n"
    - name: plain
      image: alpine
      script: make all
    - name: kept
      image: alpine
      script: "echo a\\n\\n\\n"
""",
        f"""\
    - name: q
      image: alpine
      script: |
        #!{W} run-script --tekton-step=q --tekton-step-index=0
        #!/bin/bash
        echo 'hi'
    - name: plain
      image: alpine
      script: |-
        #!{W} run-script --tekton-step=plain --tekton-step-index=1
        #!/bin/sh
        set -e
        make all
    - name: kept
      image: alpine
      script: |+
        #!{W} run-script --tekton-step=kept --tekton-step-index=2
        #!/bin/sh
        set -e
        echo a


""",
    )


def test_a_script_that_a_literal_block_cannot_hold_stays_double_quoted() -> None:
    assert_patches(
        """\
    - name: q
      image: alpine
      script: "#!/bin/sh\\necho \\u0007" # a bell
""",
        f"""\
    - name: q
      image: alpine
      script: "#!{W} run-script --tekton-step=q --tekton-step-index=0\\n#!/bin/sh\\necho \\u0007" # a bell
""",
    )


def test_windows_script_is_left_alone_with_a_warning() -> None:
    steps = """\
    - name: win
      image: mcr.microsoft.com/powershell
      script: |
        #!win pwsh.exe
        Write-Host hi
"""
    result = assert_patches(steps, steps)
    assert [(s.location.step, s.state) for s in result.unwrapped] == [("win", "unwrapped")]
    assert "Windows" in result.warnings[0].message


def test_leading_blank_before_shebang_follows_tekton_no_preamble() -> None:
    result = assert_patches(
        """\
    - name: odd
      image: alpine
      script: |

        #!/bin/bash
        echo
""",
        f"""\
    - name: odd
      image: alpine
      script: |
        #!{W} run-script --tekton-step=odd --tekton-step-index=0

        #!/bin/bash
        echo
""",
    )
    assert any("preceded by blank space" in n.message for n in result.warnings)


def test_entrypoint_step_without_resolver_is_reported_unwrapped() -> None:
    steps = """\
    - name: ep
      image: registry.example/tool:1
      args: [--flag]
"""
    result = assert_patches(steps, steps)
    (report,) = result.unwrapped
    assert report.location.step == "ep" and report.location.resource == "Task/t"
    assert "ENTRYPOINT" in report.reason
    assert result.pending() == [
        f"t.yaml: Task/t: step ep: not instrumented, cannot be wrapped: {report.reason}",
        "t.yaml: Task/t: step-tracer volumes, mounts or sidecar missing",
    ]


def resolver(table: dict[str, list[str] | None]) -> tuple[Callable[[str], list[str] | None], list[str]]:
    calls: list[str] = []

    def resolve(image: str) -> list[str] | None:
        calls.append(image)
        if image == "boom":
            raise RuntimeError("registry unreachable")
        return table.get(image)

    return resolve, calls


def test_resolved_entrypoint_becomes_a_wrapped_command_and_lookups_are_cached() -> None:
    resolve, calls = resolver({"tool:1": ["/usr/bin/tool", "--serve"]})
    options = InjectOptions(resolve_entrypoints=True, resolve=resolve)
    result = assert_patches(
        """\
    - name: a
      image: tool:1
      args: [--flag]
    - name: b
      image: tool:1
""",
        f"""\
    - name: a
      image: tool:1
      command:
        - {W}
        - run
        - --tekton-step
        - a
        - --tekton-step-index
        - "0"
        - --
        - /usr/bin/tool
        - --serve
      args: [--flag]
    - name: b
      image: tool:1
      command:
        - {W}
        - run
        - --tekton-step
        - b
        - --tekton-step-index
        - "1"
        - --
        - /usr/bin/tool
        - --serve
""",
        options,
    )
    assert calls == ["tool:1"]  # the second patch (idempotency) has nothing left to look up
    assert result.unwrapped == []


@pytest.mark.parametrize(
    ("image", "reason"),
    [("unknown:1", "unknown"), ("$(params.IMAGE)", "parameterised"), ("boom", "registry unreachable")],
)
def test_unresolvable_entrypoints_stay_unwrapped(image: str, reason: str) -> None:
    resolve, _ = resolver({})
    steps = f"""\
    - name: ep
      image: {image if "$" not in image else '"' + image + '"'}
"""
    result = assert_patches(steps, steps, InjectOptions(resolve_entrypoints=True, resolve=resolve))
    assert reason in result.unwrapped[0].reason


def test_step_template_command_and_image_are_inherited() -> None:
    resolve, calls = resolver({"base:1": ["/entry"]})
    text = """\
apiVersion: tekton.dev/v1
kind: Task
metadata:
  name: t
spec:
  stepTemplate:
    image: base:1
  steps:
    - name: from-image
"""
    result = patch_text(text, InjectOptions(resolve_entrypoints=True, resolve=resolve))
    assert calls == ["base:1"]
    assert f"      command:\n        - {W}\n" in result.text and "        - /entry\n" in result.text
    templated = text.replace("image: base:1", "image: base:1\n    command: [/tmpl]")
    result = patch_text(templated, OPTS)
    assert "        - /tmpl\n" in result.text
    assert any("stepTemplate" in n.message for n in result.notes)


def test_ref_steps_are_untouched() -> None:
    steps = """\
    - name: uses-action
      ref:
        name: my-action
      params:
        - name: x
          value: y
"""
    result = assert_patches(steps, steps)
    assert [s.state for s in result.steps] == ["ref"]
    assert result.notes[0].level == "info"


def test_already_wrapped_steps_are_detected_and_stale_ones_brought_up_to_date() -> None:
    steps = f"""\
    - name: a
      image: alpine
      command: [{W}, run, --tekton-step, a, --tekton-step-index, "0", --, make]
    - name: b
      image: alpine
      script: |
        #!{W} run-script --tekton-step=renamed --tekton-step-index=1
        #!/bin/sh
        true
"""
    result = assert_patches(steps, steps.replace("=renamed", "=b"))
    assert [s.state for s in result.steps] == ["already", "stale"]
    assert result.steps[1].reason == "wrapper options out of date (name renamed -> b)"
    assert "t.yaml: Task/t: step b: stale: wrapper options out of date (name renamed -> b)" in result.pending()


def test_step_with_script_and_command_is_a_validation_error() -> None:
    with pytest.raises(InjectError) as err:
        patch_text(
            task("    - name: both\n      image: a\n      command: [x]\n      script: echo\n"), OPTS, source="f.yaml"
        )
    assert "f.yaml: Task/t: step both: sets both script and command" in str(err.value)


def test_overlong_shebang_is_refused() -> None:
    long_wrapper = "/" + "w" * 210
    steps = "    - name: s\n      image: a\n      script: |\n        echo\n"
    result = patch_text(task(steps), InjectOptions(wrapper=long_wrapper))
    assert "exceed 255 bytes" in result.unwrapped[0].reason
    assert "echo\n" in result.text and f"#!{long_wrapper}" not in result.text


def stepaction(body: str, api: str = "tekton.dev/v1alpha1") -> str:
    return f"apiVersion: {api}\nkind: StepAction\nmetadata:\n  name: act\nspec:\n  image: alpine\n{body}"


@pytest.mark.parametrize("api", ["tekton.dev/v1alpha1", "tekton.dev/v1beta1"])
def test_stepaction_script_is_wrapped_with_its_name_and_index_zero(api: str) -> None:
    result = patch_text(stepaction("  script: |\n    echo hi\n", api), OPTS)
    assert result.text == stepaction(
        f"  script: |\n    #!{W} run-script --tekton-step=act --tekton-step-index=0\n"
        "    #!/bin/sh\n    set -e\n    echo hi\n",
        api,
    )
    assert "volumes" not in result.text and "sidecars" not in result.text


def test_stepaction_command_and_entrypoint() -> None:
    result = patch_text(stepaction("  command:\n  - run-it\n  args: [x]\n"), OPTS)
    assert result.text == stepaction(
        f'  command:\n  - {W}\n  - run\n  - --tekton-step\n  - act\n  - --tekton-step-index\n  - "0"\n  - --\n'
        "  - run-it\n  args: [x]\n"
    )
    resolve, _ = resolver({"alpine": ["/bin/sh"]})
    result = patch_text(stepaction("  args: [-c, date]\n"), InjectOptions(resolve_entrypoints=True, resolve=resolve))
    assert result.text == stepaction(
        f"  command:\n    - {W}\n    - run\n    - --tekton-step\n    - act\n    - --tekton-step-index\n"
        '    - "0"\n    - --\n    - /bin/sh\n  args: [-c, date]\n'
    )


def test_flow_style_steps_and_empty_or_null_commands() -> None:
    resolve, _ = resolver({"img": ["/ep"]})
    options = InjectOptions(resolve_entrypoints=True, resolve=resolve)
    result = patch_text(
        task(
            "    - {name: a, image: img, script: echo hi}\n"
            "    - {name: b, image: img}\n"
            "    - {name: c, image: img, command: []}\n"
            "    - name: d\n      image: img\n      command:\n      args: [x]\n"
            "    - name: e\n      image: img\n      command:\n        # the tool\n        - tool\n"
        ),
        options,
    )
    head = [W, "run", "--tekton-step"]
    assert '    - {name: a, image: img, script: "#!' in result.text
    assert f"    - {{name: b, image: img, command: [{W}, run, --tekton-step, b, " in result.text
    assert f"    - {{name: c, image: img, command: [{W}, run, --tekton-step, c, " in result.text
    assert f"      command:\n        - {W}\n" in result.text
    assert f"      command:\n        # the tool\n        - {W}\n" in result.text
    steps = YAML(typ="safe", pure=True).load(result.text)["spec"]["steps"]
    assert steps[0]["script"] == f"#!{W} run-script --tekton-step=a --tekton-step-index=0\n#!/bin/sh\nset -e\necho hi"
    assert [s["command"][:4] for s in steps[1:]] == [[*head, n] for n in "bcde"]
    assert [s["command"][-1] for s in steps[1:]] == ["/ep", "/ep", "/ep", "tool"]
    assert steps[3]["args"] == ["x"]
    assert patch_text(result.text, options).text == result.text

"""The webhook's pod mutation, on pods exactly as Tekton's pod builder makes them (tests/webhook_pods.py)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from step_tracer.inject.model import DEFAULT_WRAPPER, InjectOptions
from step_tracer.inject.resources import sidecar, step_mounts, volumes
from step_tracer.inject.steps import wrapper_command
from step_tracer.otlp import json_codec
from step_tracer.webhook.mutate import (
    INJECTED_ANNOTATION,
    NOT_WRAPPED_ANNOTATION,
    OPT_OUT_KEY,
    SIDECAR_CONTAINER,
    Mutation,
    WebhookOptions,
    mutate,
    parse_entrypoint_args,
)
from tests.webhook_pods import apply_patch, build_pod, entrypoint_command, go_duration, write_scripts

NATIVE = WebhookOptions()
CONTAINER = WebhookOptions(native_sidecar=False)
PLATFORMS = {
    "linux/amd64": ["/usr/local/bin/oras"],
    "linux/arm64": ["/usr/local/bin/oras-arm"],
    "linux/s390x": ["/usr/local/bin/oras"],
    "windows/amd64": ["C:\\oras.exe"],
}
REGISTRY = {
    "quay.io/konflux-ci/oras:latest": PLATFORMS,
    "registry.access.redhat.com/ubi9/ubi-minimal:9.4": {"linux/amd64": ["/bin/bash"]},
}


def all_kinds_steps() -> list[dict[str, Any]]:
    """One of every step kind a Konflux Task has, as the controller hands them to the pod builder."""
    return [
        # script without a shebang: Tekton adds #!/bin/sh + set -e
        {"name": "init", "image": "registry.access.redhat.com/ubi9/ubi-minimal:9.4", "script": "echo init\n"},
        # script with its own shebang and args
        {
            "name": "build",
            "image": "quay.io/konflux-ci/buildah:latest",
            "script": '#!/usr/bin/env bash\nset -eu\necho "$@"\n',
            "args": ["--tls-verify=true", "$(params.IMAGE)"],
            "workingDir": "/workspace/source",
            "timeout": "1h",
        },
        # command + args, onError continue
        {
            "name": "scan",
            "image": "quay.io/konflux-ci/clamav:latest",
            "command": ["clamscan", "-r"],
            "args": ["/workspace/source"],
            "onError": "continue",
        },
        # args only: the image ENTRYPOINT, looked up per platform
        {"name": "push", "image": "quay.io/konflux-ci/oras:latest", "args": ["push", "quay.io/x/y:z"]},
        # resolved from a StepAction (ref: git-clone): command from the StepAction, params substituted
        {
            "name": "clone",
            "image": "quay.io/konflux-ci/git-clone:latest",
            "command": ["/ko-app/git-init"],
            "args": ["-url", "https://github.com/x/y", "-revision", "main"],
            "results": [{"name": "commit"}],
            "timeout": "90s",
        },
        # unnamed step
        {"image": "registry.access.redhat.com/ubi9/ubi-minimal:9.4", "command": ["true"]},
    ]


def all_kinds_pod(**kwargs: Any) -> dict[str, Any]:
    return build_pod(
        all_kinds_steps(),
        sidecars=[{"name": "registry", "image": "docker.io/library/registry:2"}],
        results=["IMAGE_DIGEST"],
        image_commands=REGISTRY,
        labels={
            "tekton.dev/pipelineRun": "app-on-push-abc12",
            "tekton.dev/pipelineTask": "build-container",
            "tekton.dev/task": "buildah",
        },
        annotations={"tekton.dev/taskrunSpanContext": '{"traceparent":"00-' + "a" * 32 + "-" + "b" * 16 + '-01"}'},
        **kwargs,
    )


def steps_of(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in pod["spec"]["containers"] if c["name"].startswith("step-")]


def applied(pod: dict[str, Any], options: WebhookOptions = NATIVE) -> tuple[dict[str, Any], Mutation]:
    mutation = mutate(pod, options)
    assert mutation.patch, mutation.skipped
    # Every op must apply to the pod as sent (replace/remove of missing members would fail at the API server).
    return apply_patch(pod, mutation.patch), mutation


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]] if c["name"] == SIDECAR_CONTAINER]
    assert len(found) == 1
    container: dict[str, Any] = found[0]
    return container


def timeout_of(container: dict[str, Any]) -> str | None:
    parsed = parse_entrypoint_args(container["args"])
    assert parsed is not None
    return parsed.value("timeout")


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64", "linux/arm64/v8", "linux/s390x"])
def test_every_step_runs_the_wrapper_around_exactly_what_it_ran_before(platform: str) -> None:
    pod = all_kinds_pod()
    patched, mutation = applied(pod)
    before, after = steps_of(pod), steps_of(patched)
    assert [s.state for s in mutation.steps] == ["wrapped"] * 6
    for index, (old, new) in enumerate(zip(before, after, strict=True)):
        name = old["name"].removeprefix("step-")
        expected = [*wrapper_command(InjectOptions(), name, index, timeout_of(old)), *entrypoint_command(old, platform)]
        assert entrypoint_command(new, platform) == expected


def test_flags_other_than_the_entrypoint_are_kept_in_order() -> None:
    pod = all_kinds_pod()
    patched, _ = applied(pod)
    for old, new in zip(steps_of(pod), steps_of(patched), strict=True):
        old_flags = old["args"][: old["args"].index("--")]
        new_flags = new["args"][: new["args"].index("--")]
        if "-entrypoint" in old_flags:
            at = old_flags.index("-entrypoint") + 1
            assert new_flags[at] == DEFAULT_WRAPPER
            old_flags, new_flags = old_flags[:at] + old_flags[at + 1 :], new_flags[:at] + new_flags[at + 1 :]
        assert new_flags == old_flags
        assert new["command"] == old["command"] == ["/tekton/bin/entrypoint"]


def test_names_indexes_and_timeouts_come_from_the_pod() -> None:
    pod = all_kinds_pod()
    patched, _ = applied(pod)
    runs = [entrypoint_command(c) for c in steps_of(patched)]
    assert [r[r.index("--tekton-step") + 1] for r in runs] == ["init", "build", "scan", "push", "clone", "unnamed-5"]
    assert [r[r.index("--tekton-step-index") + 1] for r in runs] == ["0", "1", "2", "3", "4", "5"]
    timeouts = [r[r.index("--tekton-step-timeout") + 1] if "--tekton-step-timeout" in r else None for r in runs]
    assert timeouts == [None, "1h0m0s", None, None, "1m30s", None]


def test_script_steps_keep_their_file_and_its_shebang() -> None:
    pod = all_kinds_pod()
    patched, _ = applied(pod)
    build = steps_of(patched)[1]
    argv = entrypoint_command(build)
    script = argv[argv.index("--") + 1]
    assert script.startswith("/tekton/scripts/script-1-")
    assert argv[argv.index("--") + 2 :] == ["--tls-verify=true", "$(params.IMAGE)"]
    assert patched["spec"]["initContainers"][1] == pod["spec"]["initContainers"][1]  # place-scripts untouched


def test_image_entrypoint_steps_get_every_linux_platform_wrapped_and_others_left_alone() -> None:
    pod = all_kinds_pod()
    patched, _ = applied(pod)
    push = steps_of(patched)[3]
    assert push["args"] == steps_of(pod)[3]["args"]  # no -entrypoint: the entrypoint still picks by platform
    commands = json.loads(next(e["value"] for e in push["env"] if e["name"] == "TEKTON_PLATFORM_COMMANDS"))
    wrap = wrapper_command(InjectOptions(), "push", 3, None)
    assert commands == {
        "linux/amd64": [*wrap, "/usr/local/bin/oras"],
        "linux/arm64": [*wrap, "/usr/local/bin/oras-arm"],
        "linux/s390x": [*wrap, "/usr/local/bin/oras"],
        "windows/amd64": ["C:\\oras.exe"],
    }


def test_pod_gets_the_patchers_volumes_mounts_and_sidecar() -> None:
    pod = all_kinds_pod()
    patched, _ = applied(pod)
    names = [v["name"] for v in patched["spec"]["volumes"]]
    assert patched["spec"]["volumes"][len(pod["spec"]["volumes"]) :] == volumes(InjectOptions())
    assert len(names) == len(set(names))
    for old, new in zip(steps_of(pod), steps_of(patched), strict=True):
        assert new["volumeMounts"] == [*old["volumeMounts"], *step_mounts()]
    ours = sidecar_of(patched)
    expected = sidecar(InjectOptions(), "tekton.dev/v1beta1", [])
    for key in ("image", "command", "volumeMounts", "envFrom", "resources", "readinessProbe"):
        assert ours[key] == expected[key], key
    steps_env = json.loads(next(e["value"] for e in ours["env"] if e["name"] == "STEP_TRACER_STEPS"))
    assert [s["name"] for s in steps_env] == ["init", "build", "scan", "push", "clone", "unnamed-5"]
    assert steps_env[2]["onError"] == "continue"
    assert steps_env[3]["image"].startswith("quay.io/konflux-ci/oras@sha256:")  # as Tekton resolved it
    assert {"name": "K8S_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in ours["env"]
    assert patched["metadata"]["annotations"][INJECTED_ANNOTATION] == "steps 6/6, sidecar native"


def test_native_sidecar_is_the_last_init_container_and_gates_the_steps() -> None:
    pod = all_kinds_pod()
    patched, _ = applied(pod)
    inits = patched["spec"]["initContainers"]
    assert inits[:-1] == pod["spec"]["initContainers"]  # prepare, place-scripts, working-dir-initializer first
    ours = inits[-1]
    assert ours["name"] == SIDECAR_CONTAINER and ours["restartPolicy"] == "Always"
    assert ours["startupProbe"]["exec"] == ours["readinessProbe"]["exec"]
    assert patched["spec"]["containers"] == [*steps_of(patched), pod["spec"]["containers"][-1]]
    assert patched["spec"]["containers"][-1]["name"] == "sidecar-registry"  # the Task's own sidecar, untouched


def test_container_sidecar_is_named_so_tekton_treats_it_as_a_sidecar() -> None:
    pod = all_kinds_pod()
    patched, mutation = applied(pod, CONTAINER)
    assert not mutation.native_sidecar
    ours = patched["spec"]["containers"][-1]
    assert ours["name"] == SIDECAR_CONTAINER and not ours["name"].startswith("step-")
    assert "restartPolicy" not in ours and "startupProbe" not in ours
    assert patched["spec"]["initContainers"] == pod["spec"]["initContainers"]
    # Tekton already waits for its sidecars here (the Task has one): step 0 is left waiting as it was.
    assert steps_of(patched)[0]["args"][:3] == ["-wait_file", "/tekton/downward/ready", "-wait_file_content"]
    assert steps_of(patched)[0]["args"].count("/tekton/downward/ready") == 1
    assert "tekton.dev/ready" not in patched["metadata"]["annotations"]


def test_container_sidecar_makes_a_ready_at_creation_pod_wait_for_it() -> None:
    # No sidecars and running-in-environment-with-injected-sidecars=false: Tekton starts step 0 at once.
    pod = build_pod(
        [{"name": "a", "image": "alpine", "command": ["true"]}, {"name": "b", "image": "alpine", "command": ["true"]}],
        running_in_environment_with_injected_sidecars=False,
    )
    assert pod["metadata"]["annotations"]["tekton.dev/ready"] == "READY"
    assert "-wait_file_content" not in pod["spec"]["containers"][0]["args"]
    patched, _ = applied(pod, CONTAINER)
    assert "tekton.dev/ready" not in patched["metadata"]["annotations"]  # Tekton sets it once sidecars are Ready
    first = steps_of(patched)[0]
    assert first["args"][:3] == ["-wait_file", "/tekton/downward/ready", "-wait_file_content"]
    assert {"name": "tekton-internal-downward", "mountPath": "/tekton/downward", "readOnly": True} in first[
        "volumeMounts"
    ]
    downward = [v for v in patched["spec"]["volumes"] if v["name"] == "tekton-internal-downward"]
    assert downward == [
        {
            "name": "tekton-internal-downward",
            "downwardAPI": {
                "items": [{"path": "ready", "fieldRef": {"fieldPath": "metadata.annotations['tekton.dev/ready']"}}]
            },
        }
    ]
    assert steps_of(patched)[1]["args"][:2] == ["-wait_file", "/tekton/run/0/out"]
    # The native sidecar needs none of this: the kubelet holds the steps until its startup probe passes.
    native, _ = applied(pod, NATIVE)
    assert native["metadata"]["annotations"]["tekton.dev/ready"] == "READY"
    assert "-wait_file_content" not in steps_of(native)[0]["args"]


def test_ready_gate_reuses_tektons_downward_volume_when_keep_pod_on_cancel_made_one() -> None:
    pod = build_pod(
        [{"name": "a", "image": "alpine", "command": ["true"]}],
        running_in_environment_with_injected_sidecars=False,
        keep_pod_on_cancel=True,
    )
    patched, _ = applied(pod, CONTAINER)
    assert [v["name"] for v in patched["spec"]["volumes"]].count("tekton-internal-downward") == 1
    assert [m["name"] for m in steps_of(patched)[0]["volumeMounts"]].count("tekton-internal-downward") == 1


def test_tektons_native_sidecars_stay_before_ours() -> None:
    pod = all_kinds_pod(kubernetes_sidecars=True)
    patched, _ = applied(pod)
    names = [c["name"] for c in patched["spec"]["initContainers"]]
    assert names == ["prepare", "place-scripts", "working-dir-initializer", "sidecar-registry", SIDECAR_CONTAINER]


@pytest.mark.parametrize(
    ("labels", "tekton"),
    [
        ({"app.kubernetes.io/managed-by": "tekton-pipelines"}, True),
        ({"tekton.dev/taskRun": "x"}, True),
        ({"app.kubernetes.io/managed-by": "helm"}, False),
        ({}, False),
    ],
)
def test_only_tekton_pods_are_touched(labels: dict[str, str], tekton: bool) -> None:
    pod = build_pod([{"name": "a", "image": "alpine", "command": ["true"]}])
    pod["metadata"]["labels"] = labels
    mutation = mutate(pod, NATIVE)
    assert bool(mutation.patch) == tekton
    assert mutation.skipped == ("" if tekton else "not-tekton")


def test_plain_pods_are_left_alone() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "nginx", "labels": {"app": "nginx"}},
        "spec": {"containers": [{"name": "step-x", "image": "nginx"}]},
    }
    assert mutate(pod, NATIVE) == Mutation(skipped="not-tekton")
    assert mutate(["not", "a", "pod"], NATIVE).skipped == "not-a-pod"


@pytest.mark.parametrize("where", ["labels", "annotations"])
@pytest.mark.parametrize("value", ["false", "False", "disabled"])
def test_opt_out_from_the_taskrun_or_pipeline(where: str, value: str) -> None:
    pod = build_pod([{"name": "a", "image": "alpine", "command": ["true"]}])
    pod["metadata"][where][OPT_OUT_KEY] = value
    assert mutate(pod, NATIVE) == Mutation(skipped="opted-out")
    pod["metadata"][where][OPT_OUT_KEY] = "true"
    assert mutate(pod, NATIVE).patch


@pytest.mark.parametrize("options", [NATIVE, CONTAINER], ids=["native", "container"])
def test_a_mutated_pod_is_left_alone(options: WebhookOptions) -> None:
    once, _ = applied(all_kinds_pod(running_in_environment_with_injected_sidecars=False), options)
    again = mutate(once, options)
    assert again == Mutation(skipped="already-instrumented")


def patched_task_pod(step_name: str = "a", index: int = 0, table_steps: Any = None) -> dict[str, Any]:
    """What `step-tracer inject` makes of a Task, built into a pod by Tekton: the wrapper already in the command;
    the wrapper's options and the sidecar's step table as the Task was when it was patched."""
    steps = [
        {
            "name": "a",
            "image": "alpine",
            "command": [*wrapper_command(InjectOptions(), step_name, index, None), "make"],
            "volumeMounts": step_mounts(),
        }
    ]
    table = steps if table_steps is None else table_steps
    pod = build_pod(steps, sidecars=[sidecar(InjectOptions(), "tekton.dev/v1", table)])
    pod["spec"]["volumes"] += volumes(InjectOptions())
    return pod


def test_a_pod_from_a_patched_task_is_left_alone() -> None:
    pod = patched_task_pod()
    # What the API server fills in and other admission plugins add are not differences.
    pod["spec"]["containers"][-1]["readinessProbe"]["timeoutSeconds"] = 1
    pod["spec"]["containers"][-1]["volumeMounts"].append({"name": "kube-api-access-x", "mountPath": "/var/run/sa"})
    pod["spec"]["volumes"][-1]["downwardAPI"]["defaultMode"] = 420
    assert mutate(pod, NATIVE) == Mutation(skipped="already-instrumented")
    # Even without our volumes, a step that already runs the wrapper is not wrapped twice.
    steps = [{"name": "a", "image": "alpine", "command": [*wrapper_command(InjectOptions(), "a", 0, None), "make"]}]
    bare = build_pod(steps)
    patched, mutation = applied(bare)
    assert [s.state for s in mutation.steps] == ["already"]
    assert entrypoint_command(steps_of(patched)[0]) == entrypoint_command(steps_of(bare)[0])


def test_an_outdated_instrumentation_is_brought_up_to_date() -> None:
    """A pod from a Task patched before its step was renamed and its image bumped: the wrapper's options and the
    sidecar's step table follow the pod; nothing else changes, and the result is current."""
    old_table = [{"name": "old-name", "image": "alpine:3.18"}]
    pod = patched_task_pod("old-name", 3, old_table)
    patched, mutation = applied(pod)
    ci = len(pod["spec"]["containers"]) - 1
    assert [op["path"] for op in mutation.patch] == ["/spec/containers/0/args", f"/spec/containers/{ci}/env/0"]
    assert entrypoint_command(steps_of(patched)[0])[:7] == wrapper_command(InjectOptions(), "a", 0, None)[:7]
    assert json.loads(patched["spec"]["containers"][ci]["env"][0]["value"]) == [{"name": "a", "image": "alpine"}]
    assert mutate(patched, NATIVE) == Mutation(skipped="already-instrumented")
    # An older sidecar image and a volume of another shape are replaced, by name.
    stale = copy.deepcopy(patched)
    stale["spec"]["containers"][ci]["image"] = "quay.io/step-tracer/step-tracer:0.0.1"
    stale["spec"]["volumes"][-1] = {"name": "step-tracer-podinfo", "emptyDir": {}}
    again, mutation = applied(stale)
    assert again == patched
    assert mutate(again, NATIVE) == Mutation(skipped="already-instrumented")


def test_windows_pods_are_left_alone() -> None:
    pod = build_pod([{"name": "a", "image": "mcr.microsoft.com/windows/nanoserver", "command": ["cmd"]}])
    pod["spec"]["nodeSelector"] = {"kubernetes.io/os": "windows"}
    assert mutate(pod, NATIVE) == Mutation(skipped="windows")


def test_a_step_mounting_something_at_our_paths_is_a_conflict() -> None:
    pod = build_pod([{"name": "a", "image": "alpine", "command": ["true"]}])
    pod["spec"]["containers"][0]["volumeMounts"].append({"name": "mine", "mountPath": "/step-tracer/spool/"})
    assert mutate(pod, NATIVE) == Mutation(skipped="conflict")


def test_unreadable_steps_are_reported_and_the_rest_still_wrapped() -> None:
    pod = build_pod(
        [
            {"name": "a", "image": "alpine", "command": ["true"]},
            {"name": "b", "image": "alpine", "command": ["true"]},
            {"name": "c", "image": "quay.io/x/y:1", "args": ["x"]},
        ],
        image_commands={"quay.io/x/y:1": {"linux/amd64": ["/y"]}},
    )
    b, c = pod["spec"]["containers"][1], pod["spec"]["containers"][2]
    b["args"].remove("--")  # not in Tekton's FLAGS -- ARGS form
    c["env"][-1]["value"] = "not json"
    patched, mutation = applied(pod)
    assert [s.state for s in mutation.steps] == ["wrapped", "unwrapped", "unwrapped"]
    assert patched["spec"]["containers"][1]["args"] == b["args"]
    assert "step-b: entrypoint arguments" in patched["metadata"]["annotations"][NOT_WRAPPED_ANNOTATION]
    assert "step-c: no -entrypoint" in patched["metadata"]["annotations"][NOT_WRAPPED_ANNOTATION]
    assert patched["spec"]["containers"][1]["volumeMounts"][-3:] == step_mounts()  # still sees the spool


def test_nothing_wrappable_means_no_sidecar() -> None:
    pod = build_pod([{"name": "a", "image": "quay.io/x/y:1", "args": ["x"]}], image_commands={"quay.io/x/y:1": {}})
    mutation = mutate(pod, NATIVE)
    assert mutation.skipped == "nothing-to-wrap" and not mutation.patch
    assert [s.state for s in mutation.steps] == ["unwrapped"]


def test_flag_forms_the_go_flag_package_accepts() -> None:
    args = ["--wait_file_content", "-timeout=5s", "--entrypoint=/bin/sh", "-on_error", "-entrypoint", "--", "-c", "x"]
    parsed = parse_entrypoint_args(args)
    assert parsed is not None
    # "-entrypoint" is the *value* of -on_error here; the real one is the inline --entrypoint=/bin/sh.
    assert parsed.value("on_error") == "-entrypoint" and parsed.value("entrypoint") == "/bin/sh"
    assert parsed.value("timeout") == "5s" and parsed.command_args == ["-c", "x"]
    pod = build_pod([{"name": "a", "image": "alpine", "command": ["true"]}])
    pod["spec"]["containers"][0]["args"] = args
    patched, _ = applied(pod)
    assert entrypoint_command(patched["spec"]["containers"][0]) == [
        *wrapper_command(InjectOptions(), "a", 0, "5s"),
        "/bin/sh",
        "-c",
        "x",
    ]
    for bad in (["-entrypoint", "x"], ["--", "x"], ["-post_file"], ["positional", "--"]):
        assert parse_entrypoint_args(bad) is None


def test_long_step_names_are_the_container_names_tekton_cut() -> None:
    name = "a" * 62
    pod = build_pod([{"name": name, "image": "alpine", "command": ["true"]}])
    patched, _ = applied(pod)
    argv = entrypoint_command(steps_of(patched)[0])
    assert argv[argv.index("--tekton-step") + 1] == name[:58]  # "step-" + 58 = 63


def test_go_duration_matches_time_duration_string() -> None:
    cases = {5: "5s", 90: "1m30s", 3600: "1h0m0s", 0.5: "500ms", 1.5: "1.5s", 0: "0s", 7322.25: "2h2m2.25s"}
    assert {k: go_duration(k) for k in cases} == cases


@pytest.fixture
def scripts_dir(tmp_path: Path) -> str:
    return str(tmp_path / "tekton" / "scripts")


def test_patched_steps_run_under_the_real_wrapper(tmp_path: Path, scripts_dir: str) -> None:
    """Each kind of patched step, run the way the entrypoint would run it, with the installed wrapper."""
    launcher = str(Path(sys.executable).parent / "step-tracer")
    steps = [
        {"name": "script", "image": "alpine", "script": 'echo "script $1"\nexit 3\n', "args": ["arg1"]},
        {"name": "shebang", "image": "alpine", "script": '#!/bin/sh\necho "shebang $@"\n', "args": ["a", "b"]},
        {"name": "command", "image": "alpine", "command": ["sh", "-c"], "args": ["echo command; exit 0"]},
        {"name": "image", "image": "quay.io/x/tool:1", "args": ["-c", "echo image"]},
    ]
    pod = build_pod(steps, scripts_dir=scripts_dir, image_commands={"quay.io/x/tool:1": {"linux/amd64": ["sh"]}})
    write_scripts(pod)
    options = WebhookOptions(inject=InjectOptions(wrapper=launcher))
    patched, _ = applied(pod, options)
    spans = tmp_path / "spans.jsonl"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STEP_TRACER_", "TRACE"))}
    outputs, codes = [], []
    for container in steps_of(patched):
        env = {**base_env, **{e["name"]: e["value"] for e in container.get("env", [])}, "STEP_TRACER_FILE": str(spans)}
        env["STEP_TRACER_SPOOL"] = str(tmp_path / "no-spool")  # no spool dir here: the wrapper exports to the file
        env["STEP_TRACER_PODINFO"] = str(tmp_path / "no-podinfo")
        done = subprocess.run(entrypoint_command(container), env=env, capture_output=True, timeout=60)
        outputs.append(done.stdout.decode())
        codes.append(done.returncode)
    assert outputs == ["script arg1\n", "shebang a b\n", "command\n", "image\n"]
    assert codes == [3, 0, 0, 0]
    recorded = [s for line in spans.read_text().splitlines() for b in json_codec.decode(line) for s in b.spans]
    assert [(s.name, s.attributes["tekton.step.index"]) for s in recorded] == [
        ("script", 0),
        ("shebang", 1),
        ("command", 2),
        ("image", 3),
    ]
    assert [s.attributes["process.exit.code"] for s in recorded] == [3, 0, 0, 0]
    assert str(recorded[0].attributes["process.command"]).startswith(scripts_dir + "/script-0-")


@pytest.mark.parametrize(
    "pod",
    [
        {"metadata": "x", "spec": []},
        {"metadata": {"labels": {"tekton.dev/taskRun": "x"}}, "spec": {"containers": "x", "volumes": 3}},
        {"metadata": {"labels": {"tekton.dev/taskRun": "x"}}, "spec": {"containers": [{"name": 1}, "x", None]}},
        {
            "metadata": {"labels": {"tekton.dev/taskRun": "x"}, "annotations": None},
            "spec": {"containers": [{"name": "step-a", "command": ["/tekton/bin/entrypoint"], "args": ["-x", 1]}]},
        },
        {
            "metadata": {"labels": {"tekton.dev/taskRun": "x"}},
            "spec": {
                "containers": [
                    {
                        "name": "step-a",
                        "command": ["/tekton/bin/entrypoint"],
                        "args": ["-post_file", "f", "--"],
                        "env": [{"name": "TEKTON_PLATFORM_COMMANDS", "value": '{"linux/amd64": [1]}'}],
                    }
                ]
            },
        },
    ],
    ids=["meta-string", "containers-string", "odd-containers", "args-not-strings", "commands-not-strings"],
)
def test_odd_pods_are_skipped_not_crashed_on(pod: dict[str, Any]) -> None:
    mutation = mutate(pod, NATIVE)
    assert not mutation.patch and mutation.skipped

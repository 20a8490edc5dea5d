"""Pod Security `restricted`: what the webhook and `inject` add keeps a compliant pod compliant.

A `restricted` namespace rejects a pod with any non-compliant container, and PodSecurity admission runs after the
mutating webhook: a sidecar without runAsNonRoot made compliant TaskRun pods fail to start.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from ruamel.yaml import YAML

from step_tracer.inject.model import InjectOptions
from step_tracer.inject.resources import sidecar
from step_tracer.inject.runner import patch_text
from step_tracer.webhook.mutate import WebhookOptions, mutate
from tests.pod_security import container_violations, containers_of, pod_violations, task_pod_spec
from tests.webhook_pods import apply_patch, build_pod

RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def compliant(pod: dict[str, Any]) -> dict[str, Any]:
    """`pod` with every container restricted, as Tekton's set-security-context and the Task's steps make it."""
    pod = copy.deepcopy(pod)
    for _, container in containers_of(pod["spec"]):
        container["securityContext"] = copy.deepcopy(RESTRICTED_CONTAINER)  # type: ignore[index]
    return pod


def tekton_pod(**kwargs: Any) -> dict[str, Any]:
    return build_pod(
        [
            {"name": "build", "image": "alpine", "script": "make\n"},
            {"name": "test", "image": "alpine", "command": ["make", "test"], "timeout": "10m"},
        ],
        **kwargs,
    )


def test_the_checker_finds_what_restricted_forbids() -> None:
    pod = tekton_pod()
    bad = pod_violations(pod["spec"])
    assert any("runAsNonRoot" in b for b in bad) and any("allowPrivilegeEscalation" in b for b in bad)
    assert pod_violations(compliant(pod)["spec"]) == []
    spec = compliant(pod)["spec"]
    spec["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    spec["containers"][0]["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
    spec["containers"][1]["securityContext"]["runAsUser"] = 0
    assert len(pod_violations(spec)) == 4  # hostPath, beyond baseline, beyond NET_BIND_SERVICE, root user


@pytest.mark.parametrize("native", [True, False], ids=["native", "container"])
@pytest.mark.parametrize("pod_level", [False, True], ids=["container-level", "pod-level"])
def test_the_webhook_keeps_a_restricted_pod_restricted(native: bool, pod_level: bool) -> None:
    pod = compliant(tekton_pod(sidecars=[{"name": "registry", "image": "registry:2"}]))
    if pod_level:  # the pod promises non-root and seccomp; containers only drop what the pod cannot
        pod["spec"]["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        for _, c in containers_of(pod["spec"]):
            del c["securityContext"]["runAsNonRoot"], c["securityContext"]["seccompProfile"]
    assert pod_violations(pod["spec"]) == []
    mutation = mutate(pod, WebhookOptions(native_sidecar=native))
    assert mutation.patch, mutation.skipped
    patched = apply_patch(pod, mutation.patch)
    assert pod_violations(patched["spec"]) == []


def test_the_webhooks_sidecar_is_restricted_on_its_own() -> None:
    """Whatever the pod says: a non-compliant pod is not made worse, and our container is never the reason."""
    pod = tekton_pod()
    patched = apply_patch(pod, mutate(pod, WebhookOptions()).patch)
    before, after = set(pod_violations(pod["spec"])), set(pod_violations(patched["spec"]))
    assert after == before
    ours = [c for where, c in containers_of(patched["spec"]) if c.get("name") == "sidecar-step-tracer"]
    assert len(ours) == 1 and container_violations("sidecar", ours[0], {}) == []


RESTRICTED_YAML = """\
securityContext:
  runAsNonRoot: true
  allowPrivilegeEscalation: false
  capabilities:
    drop: [ALL]
  seccompProfile:
    type: RuntimeDefault
"""


def indented(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line for line in text.splitlines(keepends=True))


TASK = (
    "apiVersion: tekton.dev/{version}\nkind: Task\nmetadata:\n  name: t\nspec:\n  stepTemplate:\n"
    + indented(RESTRICTED_YAML, 4)
    + "  steps:\n    - name: build\n      image: alpine\n      script: make\n"
    + "    - name: test\n      image: alpine\n      command: [make, test]\n"
    + "  sidecars:\n    - name: db\n      image: postgres\n"
    + indented(RESTRICTED_YAML, 6)
)


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_inject_keeps_a_restricted_task_restricted(version: str) -> None:
    text = TASK.format(version=version)
    before = YAML(typ="safe", pure=True).load(text)
    assert pod_violations(task_pod_spec(before["spec"])) == []
    result = patch_text(text, InjectOptions(), source="t.yaml")
    assert result.changed
    after = YAML(typ="safe", pure=True).load(result.text)
    assert [s["name"] for s in after["spec"]["sidecars"]] == ["db", "step-tracer"]
    assert pod_violations(task_pod_spec(after["spec"])) == []


@pytest.mark.parametrize("api_version", ["tekton.dev/v1", "tekton.dev/v1beta1"])
def test_injects_sidecar_is_restricted_on_its_own(api_version: str) -> None:
    assert container_violations("sidecar", sidecar(InjectOptions(), api_version, []), {}) == []

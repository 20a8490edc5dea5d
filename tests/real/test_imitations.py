"""The imitations kept because they are faster, checked against the real thing they stand for.

tests/webhook_pods.py builds pods "exactly as Tekton's pod builder makes them" for the webhook's unit tests and
benchmark, in microseconds; here each shape is built both ways, by it and by Tekton v1.15.1's own reconciler
(hack/tekton's tekton-pod), and must agree but for what differs between any two runs or builds (the images of
Tekton's own containers, the release annotation, the random part of script names)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.real.tekton import build_pod as tektons_pod
from tests.webhook_pods import build_pod as imitation

TASKRUN, NAMESPACE, UID = "build-x7k2p", "team-a", "6f1c2a8e-4b7d-4e2a-9c3f-1d2e3f4a5b6c"
SCRIPT_NAME = re.compile(r"(script-\d+)-[a-z0-9]{5}")

SHAPES: dict[str, dict[str, Any]] = {
    "scripts, command, onError, timeout, results, a sidecar": {
        "steps": [
            {"name": "build", "image": "alpine", "script": "echo hi"},
            {
                "name": "push",
                "image": "quay.io/x/tool:1",
                "command": ["tool", "push"],
                "args": ["--all"],
                "onError": "continue",
                "timeout": "10s",
            },
            {"name": "py", "image": "python:3", "script": "#!/usr/bin/env python3\nprint(1)\n"},
        ],
        "sidecars": [{"name": "db", "image": "postgres", "command": ["postgres"]}],
        "results": ["digest"],
    },
    "an unnamed step, env and a working directory, no sidecar": {
        "steps": [
            {"name": "", "image": "alpine", "command": ["sh", "-c", "make"], "workingDir": "/workspace/src"},
            {"name": "test", "image": "golang:1.22", "env": [{"name": "CGO", "value": "0"}], "script": "go test"},
        ],
        "sidecars": [],
        "results": [],
    },
}


def _comparable(pod: dict[str, Any]) -> dict[str, Any]:
    meta = pod["metadata"]
    out: dict[str, Any] = {
        "labels": meta.get("labels"),
        "annotations": {k: v for k, v in (meta.get("annotations") or {}).items() if k != "pipeline.tekton.dev/release"},
        "volumes": sorted(json.dumps(v, sort_keys=True) for v in pod["spec"]["volumes"]),
        "spec": {k: v for k, v in pod["spec"].items() if k not in ("initContainers", "containers", "volumes")},
    }
    for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
        fields = {k: v for k, v in c.items() if k not in ("image", "resources")}
        out["container " + c["name"]] = json.loads(SCRIPT_NAME.sub(r"\1", json.dumps(fields)))
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_webhook_pods_builds_the_pod_tektons_builder_builds(rig: object, shape: str, tmp_path: Path) -> None:
    spec = SHAPES[shape]
    task: dict[str, Any] = {"apiVersion": "tekton.dev/v1", "kind": "Task", "metadata": {"name": "t"}}
    task["spec"] = {
        "steps": spec["steps"],
        "sidecars": spec["sidecars"],
        "results": [{"name": r} for r in spec["results"]],
    }
    (tmp_path / "task.yaml").write_text(json.dumps(task))
    real = tektons_pod([tmp_path / "task.yaml"], name=TASKRUN, namespace=NAMESPACE, uid=UID)
    ours = imitation(
        spec["steps"],
        taskrun=TASKRUN,
        namespace=NAMESPACE,
        taskrun_uid=UID,
        sidecars=spec["sidecars"],
        results=spec["results"],
        labels={"tekton.dev/task": "t"},
    )
    assert _comparable(ours) == _comparable(real)

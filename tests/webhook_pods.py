"""TaskRun pods exactly as Tekton's pod builder makes them, for the webhook's tests and benchmark.

A port of tektoncd/pipeline v1.15 `pkg/pod` for what reaches a pod: Build (pod.go: implicit volumes and mounts,
creds-init and run volumes per step, `step-`/`sidecar-` names, labels, annotations, the ready annotation, native
sidecars), orderContainers (entrypoint.go: the entrypoint's flags), convertScripts (script.go: the place-scripts
init container, `/tekton/scripts/script-<i>-<rand>`, Tekton's `#!/bin/sh\\nset -e` preamble), resolveEntrypoints
(entrypoint_lookup.go: image by digest, TEKTON_PLATFORM_COMMANDS) and workingDirInit. Steps are given as the
controller hands them to Build: stepTemplate merged, StepActions resolved, parameters substituted.

Kept because it is fast (the webhook's unit tests and benchmark build thousands of pods); tests/real/
test_imitations.py checks its pods against the ones Tekton's own reconciler builds (hack/tekton's tekton-pod).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from step_tracer.wrapper.options import parse_duration

ENTRYPOINT = "/tekton/bin/entrypoint"
RELEASE = "v1.15.0"
RUN_DIR = "/tekton/run"
DOWNWARD_READY = "/tekton/downward/ready"
IMPLICIT_MOUNTS: list[dict[str, Any]] = [
    {"name": "tekton-internal-workspace", "mountPath": "/workspace"},
    {"name": "tekton-internal-home", "mountPath": "/tekton/home"},
    {"name": "tekton-internal-results", "mountPath": "/tekton/results"},
    {"name": "tekton-internal-steps", "mountPath": "/tekton/steps", "readOnly": True},
    {"name": "tekton-internal-artifacts", "mountPath": "/tekton/artifacts"},
]
BIN_RO_MOUNT: dict[str, Any] = {"name": "tekton-internal-bin", "mountPath": "/tekton/bin", "readOnly": True}
DOWNWARD_MOUNT: dict[str, Any] = {"name": "tekton-internal-downward", "mountPath": "/tekton/downward", "readOnly": True}
_CONTAINER_FIELDS = (
    "name",
    "image",
    "command",
    "args",
    "workingDir",
    "env",
    "envFrom",
    "volumeMounts",
    "securityContext",
    "imagePullPolicy",
    "readinessProbe",
)
_RAND_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery utilrand.String


def go_duration(seconds: float) -> str:
    """time.Duration.String(), as Tekton writes `-timeout`: "5s", "1m30s", "1h0m0s", "500ms"."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                whole, frac = divmod(ns, size)
                digits = f"{frac:0{len(str(size)) - 1}d}".rstrip("0") if size > 1 else ""
                return f"{whole}{'.' + digits if digits else ''}{unit}"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs, frac = divmod(rest, 1_000_000_000)
    digits = f"{frac:09d}".rstrip("0")
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return f"{text}{secs}{'.' + digits if digits else ''}s"


def go_json(value: Any) -> str:
    """encoding/json.Marshal: compact, map keys sorted, <, > and & escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def by_digest(image: str) -> str:
    """ref.Context().Digest(...): the repository (Docker Hub names expanded) at a made-up digest."""
    repo = image.split("@", 1)[0]
    head, _, last = repo.rpartition("/")
    if ":" in last:
        repo = f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]
    first = repo.split("/", 1)[0]
    if "/" not in repo:
        repo = f"index.docker.io/library/{repo}"
    elif "." not in first and ":" not in first and first != "localhost":
        repo = f"index.docker.io/{repo}"
    return f"{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def container_name(prefix: str, name: str) -> str:
    """names.SimpleNameGenerator.RestrictLength: at most 63 characters, ending alphanumeric."""
    base = (prefix + name)[:63]
    while base and not base[-1].isalnum():
        base = base[:-1]
    return base


def build_pod(
    steps: Sequence[Mapping[str, Any]],
    *,
    taskrun: str = "build-x7k2p",
    namespace: str = "team-a",
    taskrun_uid: str = "6f1c2a8e-4b7d-4e2a-9c3f-1d2e3f4a5b6c",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    sidecars: Sequence[Mapping[str, Any]] = (),
    results: Sequence[str] = (),
    image_commands: Mapping[str, Mapping[str, list[str]]] | None = None,
    scripts_dir: str = "/tekton/scripts",
    running_in_environment_with_injected_sidecars: bool = True,
    await_sidecar_readiness: bool = True,
    keep_pod_on_cancel: bool = False,
    kubernetes_sidecars: bool = False,
    timeout_seconds: float = 3600,
) -> dict[str, Any]:
    """The Pod Tekton creates for a TaskRun running `steps` (and `sidecars`)."""
    rand = random.Random(taskrun)
    volumes: list[dict[str, Any]] = [{"name": m["name"], "emptyDir": {}} for m in IMPLICIT_MOUNTS]
    implicit_mounts = [BIN_RO_MOUNT, *IMPLICIT_MOUNTS]

    init_containers = [
        {
            "name": "prepare",
            "image": "ghcr.io/tektoncd/pipeline/entrypoint@sha256:" + "e" * 64,
            "workingDir": "/",
            "command": [
                "/ko-app/entrypoint",
                "init",
                "/ko-app/entrypoint",
                ENTRYPOINT,
                *(container_name("step-", s.get("name") or f"unnamed-{i}") for i, s in enumerate(steps)),
            ],
            "volumeMounts": [
                {"name": "tekton-internal-bin", "mountPath": "/tekton/bin"},
                {"name": "tekton-internal-steps", "mountPath": "/tekton/steps"},
            ],
        }
    ]
    place_scripts: dict[str, Any] = {
        "name": "place-scripts",
        "image": "cgr.dev/chainguard/busybox@sha256:" + "b" * 64,
        "command": ["sh"],
        "args": ["-c", ""],
        "volumeMounts": [
            {"name": "tekton-internal-scripts", "mountPath": "/tekton/scripts"},
            {"name": "tekton-internal-bin", "mountPath": "/tekton/bin"},
        ],
    }

    def convert(item: Mapping[str, Any], index: int, prefix: str) -> dict[str, Any]:
        container = {k: copy.deepcopy(item[k]) for k in _CONTAINER_FIELDS if k in item}
        if "computeResources" in item:
            container["resources"] = copy.deepcopy(item["computeResources"])
        script = item.get("script")
        if script:
            path = f"{scripts_dir}/{prefix}-{index}-{''.join(rand.choice(_RAND_ALPHABET) for _ in range(5))}"
            if not script.strip().startswith("#!"):
                script = "#!/bin/sh\nset -e\n" + script
            encoded = base64.b64encode(script.encode()).decode()
            place_scripts["args"][1] += (
                f'scriptfile="{path}"\ntouch ${{scriptfile}} && chmod +x ${{scriptfile}}\n'
                f"cat > ${{scriptfile}} << '_EOF_'\n{encoded}\n_EOF_\n"
                f'{ENTRYPOINT} decode-script "${{scriptfile}}"\n'
            )
            container["command"] = [path]
            container["volumeMounts"] = [
                *container.get("volumeMounts", []),
                {"name": "tekton-internal-scripts", "mountPath": "/tekton/scripts", "readOnly": True},
            ]
        return container

    step_containers = [convert(s, i, "script") for i, s in enumerate(steps)]
    sidecar_containers = [convert(s, i, "sidecar-script") for i, s in enumerate(sidecars)]
    if any(s.get("script") for s in [*steps, *sidecars]):
        init_containers.append(place_scripts)
        volumes.append({"name": "tekton-internal-scripts", "emptyDir": {}})

    relative = sorted(
        {
            re.sub(r"/+$", "", c["workingDir"])
            for c in step_containers
            if c.get("workingDir")
            and (not c["workingDir"].startswith("/") or c["workingDir"].startswith("/workspace/"))
        }
    )
    if relative:
        init_containers.append(
            {
                "name": "working-dir-initializer",
                "image": "ghcr.io/tektoncd/pipeline/workingdirinit@sha256:" + "d" * 64,
                "command": ["/ko-app/workingdirinit"],
                "args": relative,
                "workingDir": "/workspace",
                "volumeMounts": copy.deepcopy(IMPLICIT_MOUNTS),
            }
        )

    for container in step_containers:
        if container.get("command"):
            continue
        image = container["image"]
        commands = (image_commands or {}).get(image)
        if commands is None:
            raise KeyError(f"no registry entry for {image}: Tekton would fail to look up its entrypoint")
        container["image"] = by_digest(image)
        container["env"] = [*container.get("env", []), {"name": "TEKTON_PLATFORM_COMMANDS", "value": go_json(commands)}]

    ready_immediately = not ((sidecars or running_in_environment_with_injected_sidecars) and await_sidecar_readiness)
    for i, (step, container) in enumerate(zip(steps, step_containers, strict=True)):
        flags: list[str] = []
        if i == 0:
            if not ready_immediately:
                flags += ["-wait_file", DOWNWARD_READY, "-wait_file_content"]
        else:
            flags += ["-wait_file", f"{RUN_DIR}/{i - 1}/out"]
        flags += [
            "-post_file",
            f"{RUN_DIR}/{i}/out",
            "-termination_path",
            "/tekton/termination",
            "-step_metadata_dir",
            f"{RUN_DIR}/{i}/status",
        ]
        if step.get("onError"):
            flags += ["-on_error", step["onError"]]
        if step.get("timeout") is not None:
            flags += ["-timeout", go_duration(parse_duration(str(step["timeout"])))]
        if step.get("results"):
            flags += ["-step_results", ",".join(r["name"] for r in step["results"])]
        if results:
            flags += ["-results", ",".join(results)]
        command, args = container.get("command") or [], list(container.get("args") or [])
        if command:
            flags += ["-entrypoint", command[0]]
            args = [*command[1:], *args]
        container["command"] = [ENTRYPOINT]
        container["args"] = [*flags, "--", *args]
        container["terminationMessagePath"] = "/tekton/termination"
        if (i == 0 and not ready_immediately) or keep_pod_on_cancel:
            container["volumeMounts"] = [*container.get("volumeMounts", []), DOWNWARD_MOUNT]

    volumes.append({"name": "tekton-internal-bin", "emptyDir": {}})
    if not ready_immediately or keep_pod_on_cancel:
        items = [{"path": "ready", "fieldRef": {"fieldPath": "metadata.annotations['tekton.dev/ready']"}}]
        if keep_pod_on_cancel:
            items.append({"path": "cancel", "fieldRef": {"fieldPath": "metadata.annotations['tekton.dev/cancel']"}})
        volumes.append({"name": "tekton-internal-downward", "downwardAPI": {"items": items}})

    for i, container in enumerate(step_containers):
        mounts = list(container.get("volumeMounts", []))
        volumes.append({"name": f"tekton-creds-init-home-{i}", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": f"tekton-creds-init-home-{i}", "mountPath": "/tekton/creds"})
        volumes.append({"name": f"tekton-internal-run-{i}", "emptyDir": {}})
        for j in range(len(step_containers)):
            run = {"name": f"tekton-internal-run-{j}", "mountPath": f"{RUN_DIR}/{j}"}
            mounts.append({**run, "readOnly": True} if i != j else run)
        taken = {m["mountPath"].rstrip("/") for m in mounts}
        mounts += [copy.deepcopy(m) for m in implicit_mounts if m["mountPath"] not in taken]
        container["volumeMounts"] = mounts
        container["name"] = container_name("step-", steps[i].get("name") or f"unnamed-{i}")

    containers = step_containers
    for sidecar in sidecar_containers:
        sidecar["name"] = container_name("sidecar-", sidecar["name"])
        if kubernetes_sidecars:
            sidecar["restartPolicy"] = "Always"
            init_containers.append(sidecar)
        else:
            containers.append(sidecar)

    pod_annotations = {k: v for k, v in (annotations or {}).items() if k != "app.kubernetes.io/managed-by"}
    pod_annotations["pipeline.tekton.dev/release"] = RELEASE
    if ready_immediately:
        pod_annotations["tekton.dev/ready"] = "READY"
    pod_labels = {
        **(labels or {}),
        "tekton.dev/taskRun": taskrun,
        "tekton.dev/taskRunUID": taskrun_uid,
        "app.kubernetes.io/managed-by": "tekton-pipelines",
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{taskrun}-pod",
            "namespace": namespace,
            "labels": pod_labels,
            "annotations": pod_annotations,
            "ownerReferences": [
                {
                    "apiVersion": "tekton.dev/v1",
                    "kind": "TaskRun",
                    "name": taskrun,
                    "uid": taskrun_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "restartPolicy": "Never",
            "initContainers": init_containers,
            "containers": containers,
            "serviceAccountName": "default",
            "volumes": volumes,
            "activeDeadlineSeconds": int(timeout_seconds * 1.5),
        },
    }


def placed_scripts(pod: Mapping[str, Any]) -> dict[str, str]:
    """What place-scripts writes: script path -> content (the heredocs, base64-decoded as `decode-script` does)."""
    for container in pod["spec"]["initContainers"]:
        if container["name"] == "place-scripts":
            text = container["args"][1]
            return {
                path: base64.b64decode(body).decode()
                for path, body in re.findall(r'scriptfile="([^"]+)"\n.*?<< \'_EOF_\'\n(.*?)\n_EOF_\n', text, re.S)
            }
    return {}


def write_scripts(pod: Mapping[str, Any]) -> None:
    for path, text in placed_scripts(pod).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
        Path(path).chmod(0o755)


def review(pod: Mapping[str, Any], uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002") -> dict[str, Any]:
    """The AdmissionReview the API server sends for the pod's CREATE."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"].get("name", ""),
            "namespace": pod["metadata"].get("namespace", ""),
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:tekton-pipelines:tekton-pipelines-controller",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def apply_patch(doc: Any, patch: Sequence[Mapping[str, Any]]) -> Any:
    """RFC 6902 add/replace/remove, strict as the API server's: replace and remove need an existing target."""
    doc = copy.deepcopy(doc)
    for op in patch:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if isinstance(parent, list):
            if op["op"] == "add":
                parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
            elif op["op"] == "replace":
                parent[int(last)] = copy.deepcopy(op["value"])
            elif op["op"] == "remove":
                del parent[int(last)]
            else:
                raise ValueError(op)
        else:
            if op["op"] in ("replace", "remove") and last not in parent:
                raise KeyError(f"{op['op']} of a missing member: {op['path']}")
            if op["op"] == "remove":
                del parent[last]
            elif op["op"] in ("add", "replace"):
                parent[last] = copy.deepcopy(op["value"])
            else:
                raise ValueError(op)
    return doc


def entrypoint_command(container: Mapping[str, Any], platform: str = "linux/amd64") -> list[str]:
    """The argv Tekton's entrypoint runs for a step container (cmd/entrypoint/main.go: -entrypoint, else the
    TEKTON_PLATFORM_COMMANDS entry for the platform or the platform without its variant, then the args after --)."""
    assert container["command"] == [ENTRYPOINT]
    args = container["args"]
    end = args.index("--")
    flags, rest = args[:end], args[end + 1 :]
    entrypoint = None
    i = 0
    while i < len(flags):
        name = flags[i].lstrip("-")
        if "=" in name:
            key, _, value = name.partition("=")
            entrypoint = value if key == "entrypoint" else entrypoint
        elif name in ("wait_file_content", "breakpoint_on_failure", "debug_before_step", "enable_spire"):
            pass
        else:
            i += 1
            entrypoint = flags[i] if name == "entrypoint" else entrypoint
        i += 1
    if entrypoint is not None:
        return [entrypoint, *rest]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    commands = json.loads(env["TEKTON_PLATFORM_COMMANDS"])
    chosen = commands.get(platform) or commands.get(platform.rsplit("/", 1)[0])
    if chosen is None:
        raise LookupError(f"could not find command for platform {platform!r}")
    return [*chosen, *rest]

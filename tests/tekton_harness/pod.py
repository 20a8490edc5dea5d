"""Build the pod Tekton's controller would create for a TaskRun (tektoncd/pipeline pkg/pod, pkg/reconciler/taskrun).

Followed step by step: labels and annotations (pod.go makeLabels, Task metadata propagated to the TaskRun),
substitution passes in the reconciler's order (resources/apply.go: params, context, workspaces, results, exit-code
paths, credentials; one single-pass replacer per pass, array params expanding in command/args), stepTemplate merged
with strategic-merge semantics (env by name, volumeMounts by mountPath, merge_test.go's ordering), scripts written with
the `#!/bin/sh\\nset -e\\n` preamble when they lack `#!` (script.go), image-entrypoint steps given
TEKTON_PLATFORM_COMMANDS (entrypoint_lookup.go), the entrypoint's flags (entrypoint.go orderContainers), implicit
mounts, container names `step-<name>` / `step-unnamed-<i>` / `sidecar-<name>` cut to 63 characters.

The one deviation: paths. Volumes are host directories under the pod's root, and the path variables Tekton
substitutes (`$(results.x.path)`, `$(step.results.x.path)`, `$(workspaces.w.path)`, `$(steps.s.exitCode.path)`,
`$(credentials.path)`) become those host paths; literal mount paths in command, args, env values and workingDir are
translated when a container starts (`Container.translate`), and containers that mount step-tracer's spool or
podinfo get STEP_TRACER_SPOOL / STEP_TRACER_PODINFO. Why not `unshare --mount` and bind mounts: that needs root,
a mount point at /tekton and /step-tracer on the host's root filesystem (or a pivot_root into a fake root), and
a kernel and seccomp profile that allow mount namespaces; translation works unprivileged wherever the tests run,
and the env overrides are what the runtime contract defines for exactly this.
"""

from __future__ import annotations

import copy
import hashlib
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.tekton_harness.entrypoint import PLATFORM_COMMANDS_ENV, go_json, parse_go_duration, platform_key

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SCRIPT_PREAMBLE = "#!/bin/sh\nset -e\n"
RELEASE = "devel"  # pipeline.tekton.dev/release: changeset.Get() of the controller build
MANAGED_BY = "app.kubernetes.io/managed-by"
READY_ANNOTATION = "tekton.dev/ready"
ENTRYPOINT_BINARY = "/tekton/bin/entrypoint"
SPOOL_MOUNT = "/step-tracer/spool"
PODINFO_MOUNT = "/step-tracer/podinfo"
MAX_NAME = 63

ParamValue = str | list[str] | dict[str, str]


class HarnessError(Exception):
    """The TaskRun cannot be turned into a pod (Tekton would fail it before any step ran)."""


@dataclass(frozen=True)
class Image:
    """What the registry tells Tekton about an image, and what its config gives a container (PATH only)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    path: str = DEFAULT_PATH
    workdir: str = ""

    def command(self, has_args: bool) -> list[str]:
        """entrypoint_lookup_impl.go imageInfo: ENTRYPOINT (+ CMD when the step has no args), else CMD."""
        if not self.entrypoint:
            return list(self.cmd)
        return [*self.entrypoint, *([] if has_args else self.cmd)]


@dataclass(frozen=True)
class PipelineInfo:
    """Labels the PipelineRun reconciler puts on the TaskRuns it creates."""

    pipeline: str
    pipeline_run: str
    pipeline_run_uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    pipeline_task: str = "task"
    member_of: str = "tasks"

    def labels(self) -> dict[str, str]:
        return {
            "tekton.dev/pipeline": self.pipeline,
            "tekton.dev/pipelineRun": self.pipeline_run,
            "tekton.dev/pipelineRunUID": self.pipeline_run_uid,
            "tekton.dev/pipelineTask": self.pipeline_task,
            "tekton.dev/memberOf": self.member_of,
        }


@dataclass
class TaskRun:
    name: str = "taskrun"
    namespace: str = "default"
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    workspaces: Sequence[str] = ()  # declared workspaces bound to an emptyDir
    retry_count: int = 0
    pipeline: PipelineInfo | None = None
    service_account: str = "default"


@dataclass(frozen=True)
class Mount:
    name: str
    mount_path: str
    read_only: bool = False


@dataclass
class Container:
    name: str
    kind: Literal["step", "sidecar"]
    index: int
    step_name: str
    image: str
    command: list[str]
    args: list[str]
    env: list[dict[str, Any]]
    env_from: list[dict[str, Any]]
    working_dir: str
    volume_mounts: list[Mount]
    readiness_probe: dict[str, Any] | None
    image_config: Image
    termination_path: Path
    on_error: str = ""

    def mount_table(self, pod: Pod) -> list[tuple[str, Path]]:
        """(mount path, host directory), longest mount path first."""
        table = [(m.mount_path.rstrip("/") or "/", pod.volume_dir(m.name)) for m in self.volume_mounts]
        table.append(("/tekton/termination", self.termination_path))
        return sorted(table, key=lambda item: len(item[0]), reverse=True)

    def translate(self, pod: Pod, value: str) -> str:
        """A literal container path -> where that mount is on this machine (the one deviation, see module doc)."""
        for mount_path, host in self.mount_table(pod):
            if value == mount_path:
                return str(host)
            if value.startswith(mount_path + "/"):
                return str(host) + value[len(mount_path) :]
        return value


@dataclass
class Pod:
    root: Path
    name: str
    namespace: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]
    volumes: list[dict[str, Any]]
    containers: list[Container]
    scripts: dict[str, str]  # /tekton/scripts/... -> content
    node_name: str
    service_account: str
    taskrun: TaskRun
    task_name: str
    workspaces: dict[str, Path] = field(default_factory=dict)  # bound workspace -> host directory

    @property
    def steps(self) -> list[Container]:
        return [c for c in self.containers if c.kind == "step"]

    @property
    def sidecars(self) -> list[Container]:
        return [c for c in self.containers if c.kind == "sidecar"]

    def volume_dir(self, name: str) -> Path:
        return self.root / "volumes" / name

    def volume(self, name: str) -> dict[str, Any]:
        for volume in self.volumes:
            if volume.get("name") == name:
                return volume
        raise KeyError(name)

    def meta(self) -> dict[str, object]:
        """What the Downward API can read of this pod."""
        return {
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "nodeName": self.node_name,
            "serviceAccountName": self.service_account,
            "podIP": "127.0.0.1",
            "hostIP": "127.0.0.1",
        }


def restrict_length(name: str) -> str:
    """names.SimpleNameGenerator.RestrictLength: at most 63 characters, ending in an ASCII letter or digit."""
    name = name[:MAX_NAME]
    while name and not (name[-1].isascii() and name[-1].isalnum()):
        name = name[:-1]
    return name


def step_container_name(name: str, index: int) -> str:
    return restrict_length(f"step-{name}" if name else f"step-unnamed-{index}")


def child_name(parent: str, suffix: str) -> str:
    """knative kmeta.ChildName: parent + suffix, or a hashed form that fits 63 characters."""
    if len(parent + suffix) <= MAX_NAME:
        return parent + suffix
    digest = hashlib.md5(parent.encode()).hexdigest()
    head = parent[: MAX_NAME - len(suffix) - len(digest)]
    return (head + digest + suffix)[:MAX_NAME]


def go_duration_string(seconds: float) -> str:
    """time.Duration.String of a step timeout (what orderContainers passes as -timeout)."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)

    def fraction(value: int, digits: int) -> str:
        whole, frac = divmod(value, 10**digits)
        tail = f"{frac:0{digits}d}".rstrip("0")
        return f"{whole}.{tail}" if tail else str(whole)

    if ns < 1000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{fraction(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{fraction(ns, 6)}ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{fraction(rest, 9)}s"


# -- substitution (pkg/substitution, pkg/container, resources/apply.go) ------------------------------------------


def apply_string(text: str, strings: Mapping[str, str]) -> str:
    """substitution.ApplyReplacements: one pass of strings.NewReplacer over every `$(key)`.

    Go's generic Replacer picks, at each position, the first matching pair in argument order; keys here never
    share a `$(...)` occurrence, so leftmost-match with the longest key is the same thing.
    """
    if not strings or "$(" not in text:
        return text
    pairs = sorted(((f"$({k})", v) for k, v in strings.items()), key=lambda kv: len(kv[0]), reverse=True)
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$(", i):
            for old, new in pairs:
                if text.startswith(old, i):
                    out.append(new)
                    i += len(old)
                    break
            else:
                out.append("$(")
                i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def apply_array(text: str, strings: Mapping[str, str], arrays: Mapping[str, list[str]]) -> list[str]:
    """substitution.ApplyArrayReplacements: an element that is exactly `$(array)` / `$(array[*])` expands."""
    for key, values in arrays.items():
        if text in (f"$({key})", f"$({key}[*])"):
            return list(values)
    return [apply_string(text, strings)]


def _apply_container(c: dict[str, Any], strings: Mapping[str, str], arrays: Mapping[str, list[str]]) -> None:
    for key in ("name", "image", "imagePullPolicy", "workingDir"):
        if isinstance(c.get(key), str):
            c[key] = apply_string(c[key], strings)
    for key in ("command", "args"):
        if isinstance(c.get(key), list):
            c[key] = [item for element in c[key] for item in apply_array(str(element), strings, arrays)]
    for env in c.get("env") or []:
        if isinstance(env.get("value"), str):
            env["value"] = apply_string(env["value"], strings)
        source = env.get("valueFrom") or {}
        for ref in ("secretKeyRef", "configMapKeyRef"):
            if isinstance(source.get(ref), dict):
                for key in ("name", "key"):
                    if isinstance(source[ref].get(key), str):
                        source[ref][key] = apply_string(source[ref][key], strings)
    for env_from in c.get("envFrom") or []:
        for ref in ("secretRef", "configMapRef"):
            if isinstance(env_from.get(ref), dict) and isinstance(env_from[ref].get("name"), str):
                env_from[ref]["name"] = apply_string(env_from[ref]["name"], strings)
    for mount in c.get("volumeMounts") or []:
        for key in ("name", "mountPath", "subPath"):
            if isinstance(mount.get(key), str):
                mount[key] = apply_string(mount[key], strings)


def apply_step(step: dict[str, Any], strings: Mapping[str, str], arrays: Mapping[str, list[str]]) -> None:
    """container.ApplyStepReplacements (sidecars: ApplySidecarReplacements, same fields)."""
    if isinstance(step.get("script"), str):
        step["script"] = apply_string(step["script"], strings)
    if isinstance(step.get("onError"), str):
        step["onError"] = apply_string(step["onError"], strings)
    _apply_container(step, strings, arrays)


def apply_spec(spec: dict[str, Any], strings: Mapping[str, str], arrays: Mapping[str, list[str]] | None = None) -> None:
    """ApplyReplacements over a TaskSpec: steps, stepTemplate, volumes, workspaces' mountPath, sidecars."""
    arrays = arrays or {}
    for step in spec.get("steps") or []:
        apply_step(step, strings, arrays)
    if isinstance(spec.get("stepTemplate"), dict):
        _apply_container(spec["stepTemplate"], strings, arrays)
    for volume in spec.get("volumes") or []:
        if isinstance(volume.get("name"), str):
            volume["name"] = apply_string(volume["name"], strings)
    for ws in spec.get("workspaces") or []:
        if isinstance(ws.get("mountPath"), str):
            ws["mountPath"] = apply_string(ws["mountPath"], strings)
    for sidecar in spec.get("sidecars") or []:
        apply_step(sidecar, strings, arrays)


_PARAM_PATTERNS: tuple[Callable[[str], str], ...] = (
    lambda n: f"params.{n}",
    lambda n: f'params["{n}"]',
    lambda n: f"params['{n}']",
)


def _add_param(name: str, value: Any, strings: dict[str, str], arrays: dict[str, list[str]]) -> None:
    if isinstance(value, list):
        for pattern in _PARAM_PATTERNS:
            for i, item in enumerate(value):
                strings[f"{pattern(name)}[{i}]"] = str(item)
            arrays[pattern(name)] = [str(v) for v in value]
    elif isinstance(value, dict):
        for key, item in value.items():
            strings[f"params.{name}.{key}"] = str(item)
    else:
        for pattern in _PARAM_PATTERNS:
            strings[pattern(name)] = str(value)


def param_replacements(
    spec: Mapping[str, Any], given: Mapping[str, ParamValue]
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """getTaskParameters: defaults (those referencing other params resolved in a second pass), then the TaskRun's."""
    strings: dict[str, str] = {}
    arrays: dict[str, list[str]] = {}
    declared = [p for p in spec.get("params") or [] if isinstance(p, Mapping)]
    for p in declared:
        if "default" in p and not (isinstance(p["default"], str) and "$(params." in p["default"]):
            _add_param(p["name"], p["default"], strings, arrays)
    for p in declared:
        default = p.get("default")
        if isinstance(default, str) and "$(params." in default:
            _add_param(p["name"], apply_string(default, strings), strings, arrays)
    names = {p["name"] for p in declared}
    missing = [p["name"] for p in declared if "default" not in p and p["name"] not in given]
    if missing:
        raise HarnessError(f"missing parameters: {missing}")
    unknown = sorted(set(given) - names)
    if unknown:
        raise HarnessError(f"parameters not declared by the Task: {unknown}")
    for name, value in given.items():
        _add_param(name, value, strings, arrays)
    return strings, arrays


def _three_patterns(base: str, name: str, tail: str) -> tuple[str, str, str]:
    """The three spellings Tekton accepts: `x.name`, `x["name"]`, `x['name']`."""
    return f"{base}.{name}{tail}", f'{base}["{name}"]{tail}', f"{base}['{name}']{tail}"


# -- stepTemplate merge (v1.MergeStepsWithStepTemplate: strategic merge patch) -----------------------------------


def _merge_keyed(template: list[Any], step: list[Any], key: str) -> list[Any]:
    """A strategic-merge list with `key` as merge key; items ordered as mergeSortedSlice orders them."""
    server_order = [t.get(key) for t in template]
    template_by_key = {t.get(key): t for t in template}
    patch = []
    for item in step:
        base = template_by_key.get(item.get(key))
        merged = {**base, **item} if base is not None else dict(item)
        if base is not None and "valueFrom" in merged and "value" in merged:
            merged = dict(item)  # amendConflictingContainerFields: the step's own entry wins
        patch.append(merged)
    step_keys = {item.get(key) for item in step}
    server_only = [t for t in template if t.get(key) not in step_keys]
    out: list[Any] = []
    i = j = 0
    while i < len(server_only) or j < len(patch):
        if i >= len(server_only):
            out.append(patch[j])
            j += 1
        elif j >= len(patch):
            out.append(server_only[i])
            i += 1
        else:
            left, right = server_only[i].get(key), patch[j].get(key)
            if left in server_order and right in server_order and server_order.index(left) < server_order.index(right):
                out.append(server_only[i])
                i += 1
            else:
                out.append(patch[j])
                j += 1
    return out


def _deep_merge(template: Any, step: Any) -> Any:
    if isinstance(template, dict) and isinstance(step, dict):
        merged = dict(template)
        for key, value in step.items():
            merged[key] = _deep_merge(template.get(key), value) if key in template else value
        return merged
    return step


def merge_step_template(template: Mapping[str, Any] | None, step: dict[str, Any]) -> dict[str, Any]:
    if not template or "ref" in step:
        return step
    merged = _deep_merge(copy.deepcopy(dict(template)), step)
    merged["env"] = _merge_keyed(list(template.get("env") or []), list(step.get("env") or []), "name")
    merged["volumeMounts"] = _merge_keyed(
        list(template.get("volumeMounts") or []), list(step.get("volumeMounts") or []), "mountPath"
    )
    return {k: v for k, v in merged.items() if v not in (None, [])}


# -- the pod --------------------------------------------------------------------------------------------------


def _random_suffix() -> str:
    """utilrand.String(5): k8s.io/apimachinery's alphabet without vowels and confusable characters."""
    return "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))


def _task_parts(task: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """(spec, metadata, referenced by taskRef): a full Task resource, or a bare (embedded) taskSpec."""
    if "spec" in task and "kind" in task:
        if task.get("kind") != "Task" or task.get("apiVersion") not in ("tekton.dev/v1", "tekton.dev/v1beta1"):
            raise HarnessError(f"not a tekton.dev/v1 or v1beta1 Task: {task.get('apiVersion')} {task.get('kind')}")
        return copy.deepcopy(dict(task["spec"])), dict(task.get("metadata") or {}), True
    return copy.deepcopy(dict(task)), {}, False


def build_pod(
    task: Mapping[str, Any],
    taskrun: TaskRun,
    root: Path,
    *,
    images: Mapping[str, Image] | None = None,
    node_name: str = "harness-node",
    pod_uid: str | None = None,
) -> Pod:
    """The pod the TaskRun reconciler creates, with volumes under `root` (not created here)."""
    images = images or {}
    spec, task_meta, task_ref = _task_parts(task)
    task_name = str(task_meta.get("name", "")) if task_ref else taskrun.name
    steps: list[dict[str, Any]] = [dict(s) for s in spec.get("steps") or []]
    if not steps:
        raise HarnessError("no steps specified")
    spec["steps"] = steps
    sidecar_specs: list[dict[str, Any]] = [dict(s) for s in spec.get("sidecars") or []]
    spec["sidecars"] = sidecar_specs

    # TaskRun metadata (storeTaskSpecAndMergeMeta), then the pod's (pod.go).
    tr_labels = {**(task_meta.get("labels") or {}), **(taskrun.pipeline.labels() if taskrun.pipeline else {})}
    tr_labels.update(taskrun.labels)
    if task_ref:
        tr_labels["tekton.dev/task"] = task_name
    tr_annotations = {
        k: v
        for k, v in (task_meta.get("annotations") or {}).items()
        if k != "kubectl.kubernetes.io/last-applied-configuration"
    }
    tr_annotations.update(taskrun.annotations)
    tr_annotations["pipeline.tekton.dev/release"] = RELEASE
    labels = {
        **tr_labels,
        "tekton.dev/taskRun": taskrun.name,
        "tekton.dev/taskRunUID": taskrun.uid,
        MANAGED_BY: "tekton-pipelines",
    }
    annotations = {k: v for k, v in tr_annotations.items() if k != MANAGED_BY}
    ready_immediately = not sidecar_specs
    if ready_immediately:
        annotations[READY_ANNOTATION] = "READY"
    suffix = "-pod" + (f"-retry{taskrun.retry_count}" if taskrun.retry_count else "")
    pod = Pod(
        root=root,
        name=child_name(taskrun.name, suffix),
        namespace=taskrun.namespace,
        uid=pod_uid or str(uuid.uuid4()),
        labels=labels,
        annotations=annotations,
        volumes=[],
        containers=[],
        scripts={},
        node_name=node_name,
        service_account=taskrun.service_account,
        taskrun=taskrun,
        task_name=task_name,
    )

    def host(volume: str, rest: str = "") -> str:
        return str(pod.volume_dir(volume)) + rest

    # Substitution passes, in applyParamsContextsResultsAndWorkspaces' order.
    strings, arrays = param_replacements(spec, taskrun.params)
    apply_spec(spec, strings, arrays)
    apply_spec(
        spec,
        {
            "context.taskRun.name": taskrun.name,
            "context.task.name": task_name,
            "context.taskRun.namespace": taskrun.namespace,
            "context.taskRun.uid": taskrun.uid,
            "context.task.retry-count": str(taskrun.retry_count),
        },
    )
    workspace_mounts: list[tuple[str, str, bool]] = []
    ws_strings: dict[str, str] = {}
    for ws in spec.get("workspaces") or []:
        name = ws["name"]
        bound = name in taskrun.workspaces
        if not bound and not ws.get("optional"):
            raise HarnessError(f"workspace {name} is not bound")
        ws_strings[f"workspaces.{name}.bound"] = "true" if bound else "false"
        if bound:
            volume = f"ws-{_random_suffix()}"
            pod.volumes.append({"name": volume, "emptyDir": {}})
            mount_path = ws.get("mountPath") or f"/workspace/{name}"
            workspace_mounts.append((volume, mount_path, bool(ws.get("readOnly"))))
            ws_strings[f"workspaces.{name}.path"] = host(volume)
            pod.workspaces[name] = pod.volume_dir(volume)
            ws_strings[f"workspaces.{name}.volume"] = volume
            ws_strings[f"workspaces.{name}.claim"] = ""
        else:
            ws_strings[f"workspaces.{name}.path"] = ""
    apply_spec(spec, ws_strings)
    for i, step in enumerate(steps):
        container = step_container_name(str(step.get("name") or ""), i)
        step_strings: dict[str, str] = {}
        for result in step.get("results") or []:
            for key in _three_patterns("step.results", result["name"], ".path"):
                step_strings[key] = host("tekton-internal-steps", f"/{container}/results/{result['name']}")
        apply_step(step, step_strings, {})
    result_strings: dict[str, str] = {}
    for result in spec.get("results") or []:
        for key in _three_patterns("results", result["name"], ".path"):
            result_strings[key] = host("tekton-internal-results", f"/{result['name']}")
    apply_spec(spec, result_strings)
    for i, step in enumerate(steps):
        container = step_container_name(str(step.get("name") or ""), i)
        apply_step(
            step,
            {
                "step.artifacts.path": host("tekton-internal-steps", f"/{container}/artifacts/provenance.json"),
                "artifacts.path": host("tekton-internal-artifacts", "/provenance.json"),
            },
            {},
        )
    apply_spec(
        spec,
        {
            f"steps.{step_container_name(str(s.get('name') or ''), i)}.exitCode.path": host(
                "tekton-internal-steps", f"/{step_container_name(str(s.get('name') or ''), i)}/exitCode"
            )
            for i, s in enumerate(steps)
        },
    )
    apply_spec(spec, {"credentials.path": host("tekton-creds-init-home")})

    template = spec.get("stepTemplate") if isinstance(spec.get("stepTemplate"), Mapping) else None
    merged_steps = [merge_step_template(template, copy.deepcopy(s)) for s in steps]

    # Implicit volumes, then the Task's.
    for name in (
        "tekton-internal-workspace",
        "tekton-internal-home",
        "tekton-internal-results",
        "tekton-internal-steps",
        "tekton-internal-artifacts",
        "tekton-internal-bin",
        "tekton-creds-init-home",
    ):
        pod.volumes.append({"name": name, "emptyDir": {}})
    for i in range(len(merged_steps)):
        pod.volumes.append({"name": f"tekton-internal-run-{i}", "emptyDir": {}})
    if any(s.get("script") for s in [*merged_steps, *sidecar_specs]):
        pod.volumes.append({"name": "tekton-internal-scripts", "emptyDir": {}})
    if not ready_immediately:
        pod.volumes.append(
            {
                "name": "tekton-internal-downward",
                "downwardAPI": {
                    "items": [
                        {"path": "ready", "fieldRef": {"fieldPath": f"metadata.annotations['{READY_ANNOTATION}']"}}
                    ]
                },
            }
        )
    declared = {v.get("name") for v in pod.volumes}
    for volume in spec.get("volumes") or []:
        if volume.get("name") in declared:
            raise HarnessError(f"volume name {volume.get('name')} is declared twice")
        if not ("emptyDir" in volume or "downwardAPI" in volume):
            raise HarnessError(f"volume {volume.get('name')}: only emptyDir and downwardAPI volumes are supported")
        pod.volumes.append(copy.deepcopy(volume))

    results_flag = ",".join(r["name"] for r in spec.get("results") or [] if "value" not in r)
    for i, step in enumerate(merged_steps):
        pod.containers.append(
            _step_container(pod, step, i, len(merged_steps), results_flag, workspace_mounts, images, ready_immediately)
        )
    for i, sidecar in enumerate(sidecar_specs):
        pod.containers.append(_sidecar_container(pod, sidecar, i, workspace_mounts, images))
    return pod


def _mounts(raw: Sequence[Mapping[str, Any]]) -> list[Mount]:
    return [Mount(m["name"], m["mountPath"], bool(m.get("readOnly"))) for m in raw]


def _place_script(pod: Pod, script: str, name: str) -> str:
    """script.go placeScriptInContainer: the preamble when the trimmed script lacks `#!`; returns the path."""
    if not script.strip().startswith("#!"):
        script = DEFAULT_SCRIPT_PREAMBLE + script
    path = f"/tekton/scripts/{name}-{_random_suffix()}"
    pod.scripts[path] = script
    return path


def _step_container(
    pod: Pod,
    step: dict[str, Any],
    i: int,
    count: int,
    results_flag: str,
    workspace_mounts: list[tuple[str, str, bool]],
    images: Mapping[str, Image],
    ready_immediately: bool,
) -> Container:
    name = str(step.get("name") or "")
    image_name = str(step.get("image") or "")
    image = images.get(image_name, Image())
    command = [str(c) for c in step.get("command") or []]
    args = [str(a) for a in step.get("args") or []]
    env = copy.deepcopy(list(step.get("env") or []))
    mounts = _mounts(step.get("volumeMounts") or [])
    script = step.get("script")
    if script and command:
        raise HarnessError(f"step {name or i}: script cannot be used with command")
    if script:
        if str(script).strip().startswith("#!win"):
            raise HarnessError("Windows scripts are not supported")
        command = [_place_script(pod, str(script), f"script-{i}")]
        mounts.append(Mount("tekton-internal-scripts", "/tekton/scripts", True))
    if not command:
        if image_name not in images:
            raise HarnessError(f"step {name or i}: no command and the image {image_name!r} is unknown to the harness")
        resolved = image.command(bool(args))
        if not resolved:
            raise HarnessError(f"step {name or i}: image {image_name!r} has neither ENTRYPOINT nor CMD")
        env.append({"name": PLATFORM_COMMANDS_ENV, "value": go_json({platform_key(): resolved})})

    flags: list[str] = []
    if i == 0:
        if not ready_immediately:
            flags += ["-wait_file", "/tekton/downward/ready", "-wait_file_content"]
    else:
        flags += ["-wait_file", f"/tekton/run/{i - 1}/out"]
    flags += [
        "-post_file",
        f"/tekton/run/{i}/out",
        "-termination_path",
        "/tekton/termination",
        "-step_metadata_dir",
        f"/tekton/run/{i}/status",
    ]
    on_error = str(step.get("onError") or "")
    if on_error:
        if on_error not in ("continue", "stopAndFail"):
            raise HarnessError(f'task step onError must be either "continue" or "stopAndFail", not {on_error!r}')
        flags += ["-on_error", on_error]
    if step.get("timeout") not in (None, ""):
        flags += ["-timeout", go_duration_string(parse_go_duration(str(step["timeout"])))]
    if step.get("results"):
        flags += ["-step_results", ",".join(r["name"] for r in step["results"])]
    if results_flag:
        flags += ["-results", results_flag]
    if command:
        flags += ["-entrypoint", command[0]]
    entry_args = [*flags, "--", *command[1:], *args]

    mounts += [Mount(f"tekton-internal-run-{j}", f"/tekton/run/{j}", j != i) for j in range(count)]
    if i == 0 and not ready_immediately:
        mounts.append(Mount("tekton-internal-downward", "/tekton/downward", True))
    for volume, mount_path, read_only in workspace_mounts:
        mounts.append(Mount(volume, mount_path, read_only))
    requested = {m.mount_path.rstrip("/") for m in mounts}
    implicit = [
        Mount("tekton-internal-bin", "/tekton/bin", True),
        Mount("tekton-internal-workspace", "/workspace"),
        Mount("tekton-internal-home", "/tekton/home"),
        Mount("tekton-internal-results", "/tekton/results"),
        Mount("tekton-internal-steps", "/tekton/steps", True),
        Mount("tekton-internal-artifacts", "/tekton/artifacts"),
        Mount("tekton-creds-init-home", "/tekton/creds"),
    ]
    mounts += [m for m in implicit if m.mount_path not in requested]
    return Container(
        name=step_container_name(name, i),
        kind="step",
        index=i,
        step_name=name,
        image=image_name,
        command=[ENTRYPOINT_BINARY],
        args=entry_args,
        env=env,
        env_from=copy.deepcopy(list(step.get("envFrom") or [])),
        working_dir=str(step.get("workingDir") or ""),
        volume_mounts=mounts,
        readiness_probe=None,
        image_config=image,
        termination_path=pod.root / "containers" / step_container_name(name, i) / "termination",
        on_error=on_error,
    )


def _sidecar_container(
    pod: Pod,
    sidecar: dict[str, Any],
    i: int,
    workspace_mounts: list[tuple[str, str, bool]],
    images: Mapping[str, Image],
) -> Container:
    name = restrict_length(f"sidecar-{sidecar.get('name') or ''}")
    image_name = str(sidecar.get("image") or "")
    image = images.get(image_name, Image())
    command = [str(c) for c in sidecar.get("command") or []]
    args = [str(a) for a in sidecar.get("args") or []]
    mounts = _mounts(sidecar.get("volumeMounts") or [])
    if sidecar.get("script"):
        command = [_place_script(pod, str(sidecar["script"]), f"sidecar-script-{i}")]
        mounts.append(Mount("tekton-internal-scripts", "/tekton/scripts", True))
    if not command:
        # The kubelet runs the image's own ENTRYPOINT/CMD; Tekton does not look sidecars up.
        command, args = (list(image.entrypoint), args or list(image.cmd)) if image.entrypoint else (args, [])
        if not command:
            command = list(image.cmd)
    for volume, mount_path, read_only in workspace_mounts:
        mounts.append(Mount(volume, mount_path, read_only))
    return Container(
        name=name,
        kind="sidecar",
        index=i,
        step_name=str(sidecar.get("name") or ""),
        image=image_name,
        command=command,
        args=args,
        env=copy.deepcopy(list(sidecar.get("env") or [])),
        env_from=copy.deepcopy(list(sidecar.get("envFrom") or [])),
        working_dir=str(sidecar.get("workingDir") or ""),
        volume_mounts=mounts,
        readiness_probe=copy.deepcopy(sidecar.get("readinessProbe")),
        image_config=image,
        termination_path=pod.root / "containers" / name / "termination",
    )

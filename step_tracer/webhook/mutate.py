"""Pod -> JSONPatch: how the webhook instruments a pod Tekton built. Pure: no I/O, no clock, no cluster calls.

At pod creation Tekton has already run every step through `/tekton/bin/entrypoint FLAGS -- ARGS`
(tektoncd/pipeline pkg/pod/entrypoint.go, orderContainers):

- command and script steps carry `-entrypoint CMD` (a script step's CMD is its file under /tekton/scripts, whose own
  `#!` line still applies). CMD becomes the wrapper, and `run --tekton-step NAME --tekton-step-index I
  [--tekton-step-timeout T] -- CMD` goes in front of the step's ARGS. Every other flag stays as it was.
- image-ENTRYPOINT steps have no `-entrypoint`: the entrypoint picks the command at run time from
  TEKTON_PLATFORM_COMMANDS (JSON, platform -> command) for the node's os/arch[/variant]. The node is unknown at
  admission, so every linux entry of the map is wrapped: whichever platform the pod lands on runs the wrapper around
  its own command. Non-linux entries are left alone (the wrapper is a Linux program).

The pod also gets what the file patcher adds to a Task (step_tracer.inject.resources: the three volumes, their
mounts in every step, the sidecar), the sidecar named as Tekton names a Task's sidecar (`sidecar-step-tracer`) so
Tekton treats it as a sidecar, never as a step. The sidecar is a Kubernetes native sidecar (an init container with
`restartPolicy: Always` and a startup probe, so no step starts before the wrapper is installed, and it is stopped
after the steps), or, with `native_sidecar=False`, a plain container gated the way Tekton gates Task sidecars: step 0
waits for the `tekton.dev/ready` annotation, which Tekton sets once every sidecar is Ready.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from step_tracer.inject.model import BIN_VOLUME, PODINFO_VOLUME, SIDECAR_NAME, SPOOL_VOLUME, InjectOptions
from step_tracer.inject.resources import sidecar, step_mounts, volumes
from step_tracer.inject.steps import wrapper_command

TEKTON_ENTRYPOINT = "/tekton/bin/entrypoint"
STEP_PREFIX = "step-"
SIDECAR_PREFIX = "sidecar-"
# Tekton prefixes a Task's sidecars with "sidecar-"; a container named "step-..." would be taken for a step.
SIDECAR_CONTAINER = SIDECAR_PREFIX + SIDECAR_NAME

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_TEKTON = "tekton-pipelines"
TASKRUN_LABEL = "tekton.dev/taskRun"
OS_LABEL = "kubernetes.io/os"

# Opt-out, as a label or an annotation. Tekton copies both from Task/Pipeline to their runs and from a TaskRun to
# its pod, so setting it on any of Task, TaskRun, Pipeline or PipelineRun reaches the pod.
OPT_OUT_KEY = "step-tracer.dev/inject"
OPT_OUT_VALUES = frozenset({"false", "no", "off", "disabled"})
INJECTED_ANNOTATION = "step-tracer.dev/injected"
NOT_WRAPPED_ANNOTATION = "step-tracer.dev/not-wrapped"

READY_ANNOTATION = "tekton.dev/ready"
READY_VALUE = "READY"
DOWNWARD_VOLUME = "tekton-internal-downward"
DOWNWARD_DIR = "/tekton/downward"
READY_FILE = DOWNWARD_DIR + "/ready"

PLATFORM_COMMANDS_ENV = "TEKTON_PLATFORM_COMMANDS"

# The entrypoint's boolean flags (cmd/entrypoint/main.go, spire.go): they never take the next argument.
BOOL_FLAGS = frozenset(
    {"wait_file_content", "breakpoint_on_failure", "debug_before_step", "compress_termination_message", "enable_spire"}
)

# A native sidecar that never reports started keeps every step waiting; after this many failed probes (1 s apart)
# the kubelet restarts it instead of waiting forever.
STARTUP_FAILURE_THRESHOLD = 120

SkipReason = Literal[
    "",
    "not-a-pod",
    "not-tekton",
    "opted-out",
    "windows",
    "already-instrumented",
    "conflict",
    "no-steps",
    "nothing-to-wrap",
    "first-step-not-gated",
]
StepState = Literal["wrapped", "already", "unwrapped"]
JsonPatch = list[dict[str, Any]]


@dataclass(frozen=True)
class WebhookOptions:
    inject: InjectOptions = field(default_factory=InjectOptions)
    native_sidecar: bool = True


@dataclass(frozen=True)
class StepResult:
    container: str
    index: int
    state: StepState
    reason: str = ""


@dataclass
class Mutation:
    """The patch (empty when the pod is left alone), why it was left alone, and what happened to each step."""

    patch: JsonPatch = field(default_factory=list)
    skipped: SkipReason = ""
    steps: list[StepResult] = field(default_factory=list)
    native_sidecar: bool = False


@dataclass
class EntrypointArgs:
    """A step container's args split the way Tekton's entrypoint splits them (cmd/entrypoint/args.go)."""

    flags: list[str]
    command_args: list[str]
    # flag name -> (index in `flags` of the token holding the value, the value, whether it is a `-name=value` token)
    values: dict[str, tuple[int, str, bool]]

    def value(self, name: str) -> str | None:
        found = self.values.get(name)
        return found[1] if found else None


def parse_entrypoint_args(args: Sequence[Any]) -> EntrypointArgs | None:
    """Go `flag` parsing of the tokens before the first `--`; None when the args are not in Tekton's shape."""
    if not all(isinstance(a, str) for a in args):
        return None
    try:
        end = list(args).index("--")
    except ValueError:
        return None
    if end == 0:
        return None  # the entrypoint parses a leading "--" differently; Tekton never writes it
    flags, values = list(args[:end]), {}
    i = 0
    while i < len(flags):
        token = flags[i]
        if not token.startswith("-") or token in ("-", "--"):
            return None
        name = token[2:] if token.startswith("--") else token[1:]
        if "=" in name:
            name, _, value = name.partition("=")
            values[name] = (i, value, True)
        elif name in BOOL_FLAGS:
            values[name] = (i, "true", True)
        elif i + 1 < len(flags):
            i += 1
            values[name] = (i, flags[i], False)
        else:
            return None
        i += 1
    return EntrypointArgs(flags, list(args[end + 1 :]), values)


def is_tekton_pod(labels: Mapping[str, str]) -> bool:
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY_TEKTON or TASKRUN_LABEL in labels


def opted_out(labels: Mapping[str, str], annotations: Mapping[str, str]) -> bool:
    return any(m.get(OPT_OUT_KEY, "").strip().lower() in OPT_OUT_VALUES for m in (labels, annotations))


def pod_sidecar(options: WebhookOptions, steps: list[dict[str, str]], *, native: bool) -> dict[str, Any]:
    """The patcher's sidecar as a pod container, under the name Tekton gives a Task's sidecar."""
    # The v1beta1 form uses Kubernetes' own field name `resources` (v1 Tasks call it `computeResources`).
    container = sidecar(options.inject, "tekton.dev/v1beta1", steps)
    container["name"] = SIDECAR_CONTAINER
    if native:
        container["restartPolicy"] = "Always"
        # The kubelet starts the next containers only once a native sidecar's startup probe passes: no step can
        # run before the wrapper is installed and the spool is ready.
        container["startupProbe"] = {**container["readinessProbe"], "failureThreshold": STARTUP_FAILURE_THRESHOLD}
    return container


def mutate(pod: Any, options: WebhookOptions) -> Mutation:
    """The JSONPatch that instruments `pod` (an AdmissionReview's `request.object`), or why it is left alone."""
    if not isinstance(pod, Mapping):
        return Mutation(skipped="not-a-pod")
    meta = _mapping(pod.get("metadata"))
    labels, annotations = _str_map(meta.get("labels")), _str_map(meta.get("annotations"))
    spec = _mapping(pod.get("spec"))
    if not is_tekton_pod(labels):
        return Mutation(skipped="not-tekton")
    if opted_out(labels, annotations):
        return Mutation(skipped="opted-out")
    if _str_map(spec.get("nodeSelector")).get(OS_LABEL, "linux") != "linux":
        return Mutation(skipped="windows")

    containers, init_containers = _list(spec.get("containers")), _list(spec.get("initContainers"))
    pod_volumes = _list(spec.get("volumes"))
    ours = {BIN_VOLUME, SPOOL_VOLUME, PODINFO_VOLUME}
    steps = [(i, c) for i, c in enumerate(containers) if isinstance(c, Mapping) and _is_step(c)]
    if any(_mapping(v).get("name") in ours for v in pod_volumes) or any(
        _mapping(c).get("name") in (SIDECAR_CONTAINER, SIDECAR_NAME) for c in [*containers, *init_containers]
    ):
        return _update(spec, steps, options)
    if not steps:
        return Mutation(skipped="no-steps")
    mounts = step_mounts()
    our_paths = {m["mountPath"] for m in mounts}
    for _, c in steps:
        for m in _list(c.get("volumeMounts")):
            if _clean(_mapping(m).get("mountPath")) in our_paths:
                return Mutation(skipped="conflict")

    native = options.native_sidecar
    # A plain-container sidecar is only waited for when step 0 waits for the ready annotation; Tekton skips that
    # wait (and sets the annotation at creation) when the Task has no sidecars of its own and the cluster is
    # configured as free of injected sidecars, or when await-sidecar-readiness is off.
    gate = not native and annotations.get(READY_ANNOTATION) == READY_VALUE

    patch: JsonPatch = []
    results: list[StepResult] = []
    table: list[dict[str, str]] = []
    for index, (ci, c) in enumerate(steps):
        if gate and index == 0 and c.get("command") != [TEKTON_ENTRYPOINT]:
            return Mutation(skipped="first-step-not-gated")
        ops, result, info = _step(c, ci, index, options.inject, gate=gate and index == 0)
        patch += ops
        results.append(result)
        table.append(info)
        extra = [_downward_mount()] if gate and index == 0 and not _has_mount(c, DOWNWARD_DIR) else []
        patch += _append(("spec", "containers", ci, "volumeMounts"), c.get("volumeMounts"), [*mounts, *extra])
    if not any(r.state in ("wrapped", "already") for r in results):
        return Mutation(skipped="nothing-to-wrap", steps=results)

    new_volumes = volumes(options.inject)
    if gate and not any(_mapping(v).get("name") == DOWNWARD_VOLUME for v in pod_volumes):
        new_volumes.append(_downward_volume())
    patch += _append(("spec", "volumes"), spec.get("volumes"), new_volumes)
    container = pod_sidecar(options, table, native=native)
    if native:
        patch += _append(("spec", "initContainers"), spec.get("initContainers"), [container])
    else:
        patch += _append(("spec", "containers"), spec.get("containers"), [container])
    patch += _annotations(meta, results, native, remove_ready=gate)
    return Mutation(patch, steps=results, native_sidecar=native)


def _update(spec: Mapping[str, Any], steps: list[tuple[int, Any]], options: WebhookOptions) -> Mutation:
    """A pod instrumented already (by this webhook on an earlier call, or from a Task `step-tracer inject` patched
    when it had other steps): bring what step-tracer put there up to date, or leave it unchanged when it is.

    Steps that run the wrapper get their wrapper options and mounts fixed; the others are left as they are (a
    script step's wrapper is in its script file, which admission cannot see). The sidecar, its step table and the
    volumes are compared with what this pod needs by the fields step-tracer sets only: the API server's defaults
    and what other admission plugins added (a service account token mount) are not differences.
    """
    patch: JsonPatch = []
    results: list[StepResult] = []
    table: list[dict[str, str]] = []
    for index, (ci, c) in enumerate(steps):
        ops, result, info = _step(c, ci, index, options.inject, gate=False)
        table.append(info)
        if result.state == "already":
            patch += ops
            patch += _update_named(("spec", "containers", ci, "volumeMounts"), c.get("volumeMounts"), step_mounts())
            results.append(result)
    found = [
        (where, i, c)
        for where in ("initContainers", "containers")
        for i, c in enumerate(_list(spec.get(where)))
        if _mapping(c).get("name") in (SIDECAR_CONTAINER, SIDECAR_NAME)
    ]
    if len(found) == 1:
        where, i, c = found[0]
        want = pod_sidecar(options, table, native=where == "initContainers")
        want["name"] = c["name"]
        want["env"][0]["value"] = _table_value(c, table, want["env"][0]["value"])
        for key, value in want.items():
            path = ("spec", where, i, key)
            if key in ("volumeMounts", "env"):
                patch += _update_named(path, c.get(key), value)
            elif not _covers(c.get(key), value):
                patch.append({"op": "replace" if key in c else "add", "path": _ptr(*path), "value": value})
    patch += _update_named(("spec", "volumes"), spec.get("volumes"), volumes(options.inject))
    if not patch:
        return Mutation(skipped="already-instrumented")
    return Mutation(patch, steps=results, native_sidecar=any(where == "initContainers" for where, _, _ in found))


def _table_value(sidecar: Mapping[str, Any], table: list[dict[str, str]], value: str) -> str:
    """The sidecar's STEP_TRACER_STEPS when it still describes this pod's steps, else `value`. A table the file
    patcher wrote names StepAction references (`ref`) where the pod shows the image Tekton resolved: still current."""
    env = [e for e in _list(sidecar.get("env")) if _mapping(e).get("name") == "STEP_TRACER_STEPS"]
    try:
        have = json.loads(_mapping(env[0]).get("value") or "") if env else None
    except ValueError:
        return value
    if not isinstance(have, list) or len(have) != len(table) or not all(isinstance(h, dict) for h in have):
        return value
    for h, want in zip(have, table, strict=True):
        same_image = h.get("image") == want.get("image") or ("ref" in h and "image" not in h)
        if h.get("name") != want.get("name") or h.get("onError") != want.get("onError") or not same_image:
            return value
    return str(_mapping(env[0]).get("value"))


def _covers(actual: Any, desired: Any) -> bool:
    """`actual` has every field of `desired` with its value; more fields (defaults the API server filled in) are
    fine, and lists must match item by item."""
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(k in actual and _covers(actual[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(desired)
            and all(_covers(a, d) for a, d in zip(actual, desired, strict=True))
        )
    return type(actual) is type(desired) and actual == desired


def _update_named(path: tuple[str | int, ...], existing: Any, items: list[dict[str, Any]]) -> JsonPatch:
    """Add the `items` a list lacks (by name) and replace those of the same name that differ; leave the rest."""
    if not isinstance(existing, list):
        return _append(path, existing, items)
    names = {_mapping(e).get("name"): i for i, e in enumerate(existing)}
    ops: JsonPatch = []
    for item in items:
        at = names.get(item["name"])
        if at is None:
            ops.append({"op": "add", "path": _ptr(*path, "-"), "value": item})
        elif not _covers(existing[at], item):
            ops.append({"op": "replace", "path": _ptr(*path, at), "value": item})
    return ops


def _step(
    c: Mapping[str, Any], ci: int, index: int, options: InjectOptions, *, gate: bool
) -> tuple[JsonPatch, StepResult, dict[str, str]]:
    """Ops for one step container (run by Tekton's entrypoint), its result, and its row of STEP_TRACER_STEPS."""
    name = str(c["name"])
    label = name[len(STEP_PREFIX) :]
    info = {"name": label, "image": str(c.get("image") or "")}
    base = ("spec", "containers", ci)
    args = _list(c.get("args"))
    # Step 0 of a gated pod waits for the ready file, wrapped or not: later steps need the wrapper installed.
    waits = gate and READY_FILE not in args and f"-wait_file={READY_FILE}" not in args
    prefix = ["-wait_file", READY_FILE, "-wait_file_content"] if waits else []
    ops: JsonPatch = []

    def finish(new_args: list[Any], state: StepState, reason: str = "") -> tuple[JsonPatch, StepResult, dict[str, str]]:
        if new_args != args:
            ops.insert(0, {"op": "replace" if "args" in c else "add", "path": _ptr(*base, "args"), "value": new_args})
        return ops, StepResult(name, index, state, reason), info

    if c.get("command") != [TEKTON_ENTRYPOINT]:
        return finish(args, "unwrapped", f"not run by {TEKTON_ENTRYPOINT}")
    parsed = parse_entrypoint_args(args)
    if parsed is None:
        return finish([*prefix, *args], "unwrapped", "entrypoint arguments not in Tekton's form (FLAGS -- ARGS)")
    on_error, timeout = parsed.value("on_error"), parsed.value("timeout")
    if on_error:
        info["onError"] = on_error
    wrap = wrapper_command(options, label, index, timeout)

    found = parsed.values.get("entrypoint")
    if found is not None:
        at, cmd, inline = found
        if cmd == options.wrapper:
            # Wrapped before (by this webhook, or in the Task): its options follow the step as it is now.
            rest = parsed.command_args
            end = rest.index("--") + 1 if rest[:1] == ["run"] and "--" in rest else 0
            if end and rest[:end] != wrap[1:]:
                return finish([*prefix, *parsed.flags, "--", *wrap[1:], *rest[end:]], "already")
            return finish([*prefix, *args], "already")
        flags = list(parsed.flags)
        flags[at] = f"-entrypoint={options.wrapper}" if inline else options.wrapper
        return finish([*prefix, *flags, "--", *wrap[1:], cmd, *parsed.command_args], "wrapped")

    env = _list(c.get("env"))
    at_env = max((j for j, e in enumerate(env) if _mapping(e).get("name") == PLATFORM_COMMANDS_ENV), default=-1)
    commands = _platform_commands(_mapping(env[at_env]).get("value") if at_env >= 0 else None)
    if commands is None:
        return finish([*prefix, *args], "unwrapped", f"no -entrypoint and no usable {PLATFORM_COMMANDS_ENV}")
    linux = {p for p, cmd in commands.items() if p.startswith("linux/") and cmd}
    if not linux:
        return finish([*prefix, *args], "unwrapped", f"{PLATFORM_COMMANDS_ENV} has no linux command")
    if any(commands[p][0] == options.wrapper for p in linux):
        return finish([*prefix, *args], "already")
    wrapped = {p: [*wrap, *cmd] if p in linux else cmd for p, cmd in commands.items()}
    value = json.dumps(wrapped, separators=(",", ":"))
    ops.append({"op": "replace", "path": _ptr(*base, "env", at_env, "value"), "value": value})
    return finish([*prefix, *args], "wrapped")


def _platform_commands(raw: Any) -> dict[str, list[str]] | None:
    if not isinstance(raw, str):
        return None
    try:
        commands = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(commands, dict) or not commands:
        return None
    for cmd in commands.values():
        if not isinstance(cmd, list) or not all(isinstance(part, str) for part in cmd):
            return None
    return commands


def _annotations(meta: Mapping[str, Any], results: list[StepResult], native: bool, *, remove_ready: bool) -> JsonPatch:
    wrapped = sum(r.state != "unwrapped" for r in results)
    values = {INJECTED_ANNOTATION: f"steps {wrapped}/{len(results)}, sidecar {'native' if native else 'container'}"}
    missed = [f"{r.container}: {r.reason}" for r in results if r.state == "unwrapped"]
    if missed:
        values[NOT_WRAPPED_ANNOTATION] = "; ".join(missed)
    if not isinstance(meta.get("annotations"), Mapping):
        return [{"op": "add", "path": "/metadata/annotations", "value": values}]
    ops: JsonPatch = [{"op": "add", "path": _ptr("metadata", "annotations", k), "value": v} for k, v in values.items()]
    if remove_ready:
        ops.append({"op": "remove", "path": _ptr("metadata", "annotations", READY_ANNOTATION)})
    return ops


def _append(path: tuple[str | int, ...], existing: Any, items: list[dict[str, Any]]) -> JsonPatch:
    if not items:
        return []
    if not isinstance(existing, list):
        return [{"op": "add", "path": _ptr(*path), "value": items}]
    return [{"op": "add", "path": _ptr(*path, "-"), "value": item} for item in items]


def _downward_volume() -> dict[str, Any]:
    """Tekton's own (pkg/pod/entrypoint.go, downwardVolume): the ready annotation as a file."""
    return {
        "name": DOWNWARD_VOLUME,
        "downwardAPI": {
            "items": [{"path": "ready", "fieldRef": {"fieldPath": f"metadata.annotations['{READY_ANNOTATION}']"}}]
        },
    }


def _downward_mount() -> dict[str, Any]:
    return {"name": DOWNWARD_VOLUME, "mountPath": DOWNWARD_DIR, "readOnly": True}


def _is_step(c: Mapping[str, Any]) -> bool:
    name = c.get("name")
    return isinstance(name, str) and name.startswith(STEP_PREFIX)


def _has_mount(c: Mapping[str, Any], path: str) -> bool:
    return any(_clean(_mapping(m).get("mountPath")) == path for m in _list(c.get("volumeMounts")))


def _clean(path: Any) -> Any:
    return (path.rstrip("/") or "/") if isinstance(path, str) else path


def _ptr(*parts: str | int) -> str:
    """A JSON pointer (RFC 6901: "~" and "/" escaped)."""
    return "/" + "/".join(_escape(p) for p in parts)


def _escape(part: str | int) -> str:
    text = str(part)
    return text.replace("~", "~0").replace("/", "~1") if "~" in text or "/" in text else text


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str_map(value: Any) -> dict[str, str]:
    return (
        {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(value, Mapping)
        else {}
    )

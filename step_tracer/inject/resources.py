"""Which resources get patched, and the pod-level additions every patched Task spec needs.

Tasks (v1, v1beta1) and every inline `taskSpec` of a Pipeline (tasks and finally, nested `pipelineSpec`
included) get their steps wrapped plus: three volumes, their mounts in stepTemplate (so every step, ref
steps included, sees the wrapper) and the step-tracer sidecar that installs the wrapper and ships spans.
StepActions (v1alpha1, v1beta1) are wrapped like a single step; they have no volumes or sidecars.
Everything else passes through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from step_tracer.inject.model import (
    BIN_DIR,
    BIN_VOLUME,
    PODINFO_DIR,
    PODINFO_VOLUME,
    SIDECAR_NAME,
    SPOOL_DIR,
    SPOOL_VOLUME,
    AppendItems,
    InjectError,
    InjectOptions,
    Location,
    Note,
    Op,
    Path,
    Problem,
    Replace,
    Resolver,
    SetKey,
    StepReport,
)
from step_tracer.inject.steps import plan_step, step_label

TASK_API_VERSIONS = frozenset({"tekton.dev/v1", "tekton.dev/v1beta1"})
STEPACTION_API_VERSIONS = frozenset({"tekton.dev/v1alpha1", "tekton.dev/v1beta1"})


@dataclass
class Plan:
    ops: list[Op] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    steps: list[StepReport] = field(default_factory=list)
    additions_missing: list[Location] = field(default_factory=list)
    additions_stale: list[tuple[Location, str]] = field(default_factory=list)
    resources: int = 0


def iter_resources(doc: Any, prefix: Path = ()) -> Iterator[tuple[Path, Mapping[str, Any]]]:
    """Every object in a document: the document itself, or the items of a `kind: List` / JSON array."""
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from iter_resources(item, (*prefix, i))
    elif isinstance(doc, Mapping):
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            yield from iter_resources(doc["items"], (*prefix, "items"))
        else:
            yield prefix, doc


def resource_label(res: Mapping[str, Any]) -> str:
    meta = res.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not name and isinstance(meta, Mapping):
        name = meta.get("generateName")
    return f"{res.get('kind')}/{name or '?'}"


def volumes(options: InjectOptions) -> list[dict[str, Any]]:
    return [
        {"name": BIN_VOLUME, "emptyDir": {}},
        {"name": SPOOL_VOLUME, "emptyDir": {}},
        {
            "name": PODINFO_VOLUME,
            "downwardAPI": {
                "items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}},
                    {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
                ]
            },
        },
    ]


def step_mounts() -> list[dict[str, Any]]:
    return [
        {"name": BIN_VOLUME, "mountPath": BIN_DIR, "readOnly": True},
        {"name": SPOOL_VOLUME, "mountPath": SPOOL_DIR},
        {"name": PODINFO_VOLUME, "mountPath": PODINFO_DIR, "readOnly": True},
    ]


def steps_manifest(steps: Any) -> str:
    """The sidecar's STEP_TRACER_STEPS: what a step's span should say but its container cannot see (image,
    onError), by step index. Tekton substitutes `$(params...)` in sidecar env, so parameterised images resolve."""
    entries = []
    for step in steps if isinstance(steps, list) else []:
        entry: dict[str, str] = {}
        if isinstance(step, Mapping):
            for key in ("name", "image", "onError"):
                if isinstance(step.get(key), str) and step[key]:
                    entry[key] = step[key]
            if "ref" in step and isinstance(step["ref"], Mapping) and isinstance(step["ref"].get("name"), str):
                entry["ref"] = step["ref"]["name"]
        entries.append(entry)
    return json.dumps(entries, separators=(",", ":"))


def sidecar(options: InjectOptions, api_version: str, steps: Any = None) -> dict[str, Any]:
    # v1 renamed the container's `resources` to `computeResources`; v1 rejects (or drops) the old name.
    resources_key = "resources" if api_version == "tekton.dev/v1beta1" else "computeResources"
    return {
        "name": SIDECAR_NAME,
        "image": options.sidecar_image,
        "command": ["step-tracer", "sidecar", "--spool", SPOOL_DIR, "--install-wrapper", BIN_DIR],
        "volumeMounts": [
            {"name": BIN_VOLUME, "mountPath": BIN_DIR},
            {"name": SPOOL_VOLUME, "mountPath": SPOOL_DIR},
            {"name": PODINFO_VOLUME, "mountPath": PODINFO_DIR, "readOnly": True},
        ],
        "env": [
            {"name": "STEP_TRACER_STEPS", "value": steps_manifest(steps)},
            {"name": "K8S_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        # Later envFrom sources win: the Secret (credentials, headers) overrides the ConfigMap.
        "envFrom": [
            *([{"configMapRef": {"name": options.otlp_configmap, "optional": True}}] if options.otlp_configmap else []),
            {"secretRef": {"name": options.otlp_secret, "optional": True}},
        ],
        resources_key: {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
        "readinessProbe": {
            "exec": {"command": ["step-tracer", "sidecar", "--ready", "--spool", SPOOL_DIR]},
            "periodSeconds": 1,
        },
        "securityContext": sidecar_security_context(),
    }


def sidecar_security_context() -> dict[str, Any]:
    """All the Pod Security `restricted` profile asks of a container, so the sidecar never makes a compliant pod
    non-compliant. The sidecar only writes emptyDirs and talks to the network. runAsNonRoot without runAsUser:
    the image's USER (65532) satisfies it, and OpenShift's restricted SCC can still pick the UID; a custom
    --sidecar-image must run as a numeric non-root USER too."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


class _Walker:
    def __init__(self, source: str, options: InjectOptions, resolve: Resolver | None) -> None:
        self.source = source
        self.options = options
        self.resolve = resolve
        self.plan = Plan()
        self._seen: set[int] = set()
        self._stale: list[str] = []

    def document(self, doc: Any) -> Plan:
        for prefix, res in iter_resources(doc):
            self.resource(prefix, res)
        return self.plan

    def resource(self, prefix: Path, res: Mapping[str, Any]) -> None:
        api_version, kind = res.get("apiVersion"), res.get("kind")
        if not isinstance(api_version, str) or not api_version.startswith("tekton.dev/"):
            return
        loc = Location(self.source, resource_label(res))
        spec = res.get("spec")
        if kind in ("Task", "Pipeline") and api_version not in TASK_API_VERSIONS:
            self.plan.notes.append(Note("warning", loc, f"{api_version} {kind} is not supported; left as is"))
            return
        if kind == "StepAction" and api_version not in STEPACTION_API_VERSIONS:
            self.plan.notes.append(Note("warning", loc, f"{api_version} StepAction is not supported; left as is"))
            return
        if kind not in ("Task", "Pipeline", "StepAction"):
            return
        self.plan.resources += 1
        if not isinstance(spec, Mapping):
            raise InjectError([Problem(loc, "spec is missing or not a mapping")])
        if kind == "Task":
            self.task_spec(spec, (*prefix, "spec"), loc, api_version)
        elif kind == "Pipeline":
            self.pipeline_spec(spec, (*prefix, "spec"), loc, api_version)
        else:
            name = resource_label(res).partition("/")[2]
            self._step(spec, (*prefix, "spec"), 0, loc, None, name)

    def pipeline_spec(self, spec: Mapping[str, Any], path: Path, loc: Location, api_version: str) -> None:
        for section in ("tasks", "finally"):
            tasks = spec.get(section)
            if tasks is None:
                continue
            if not isinstance(tasks, list):
                raise InjectError([Problem(loc, f"{section} is not a list")])
            for i, pt in enumerate(tasks):
                if not isinstance(pt, Mapping):
                    raise InjectError([Problem(loc, f"{section}[{i}] is not a mapping")])
                where = Location(loc.source, f"{loc.resource} {section}[{pt.get('name', i)}]")
                task_path = (*path, section, i)
                if isinstance(pt.get("taskSpec"), Mapping):
                    ts = pt["taskSpec"]
                    if "apiVersion" in ts and "kind" in ts:
                        self.plan.notes.append(Note("info", where, "embedded custom task left as is"))
                    else:
                        self.task_spec(ts, (*task_path, "taskSpec"), where, api_version)
                elif isinstance(pt.get("pipelineSpec"), Mapping):
                    self.pipeline_spec(pt["pipelineSpec"], (*task_path, "pipelineSpec"), where, api_version)
                elif "taskRef" in pt or "pipelineRef" in pt:
                    ref = pt.get("taskRef") or pt.get("pipelineRef")
                    what = ref.get("name") or ref.get("resolver") if isinstance(ref, Mapping) else ref
                    self.plan.notes.append(
                        Note("info", where, f"reference ({what}) left as is; patch the referenced resource")
                    )

    def task_spec(self, spec: Mapping[str, Any], path: Path, loc: Location, api_version: str) -> None:
        self._once(spec, loc, "task spec")
        steps = spec.get("steps")
        if steps is None:
            steps = []
        if not isinstance(steps, list):
            raise InjectError([Problem(loc, "steps is not a list")])
        template = spec.get("stepTemplate")
        template = template if isinstance(template, Mapping) else None
        for i, step in enumerate(steps):
            self._step(step, (*path, "steps", i), i, loc, template, None)
        self.additions(spec, path, loc, api_version)

    def _step(
        self,
        step: Any,
        path: Path,
        index: int,
        loc: Location,
        template: Mapping[str, Any] | None,
        name: str | None,
    ) -> None:
        self._once(step, loc, "step")
        sp = plan_step(
            step,
            path=path,
            index=index,
            location=loc,
            options=self.options,
            resolve=self.resolve,
            template=template,
            name=name,
        )
        self.plan.ops += sp.ops
        self.plan.notes += sp.notes
        self.plan.steps += sp.reports

    def _once(self, node: Any, loc: Location, what: str) -> None:
        # A YAML alias makes one node appear at two places; editing it once would patch both, wrongly.
        if isinstance(node, Mapping):
            if id(node) in self._seen:
                raise InjectError([Problem(loc, f"{what} is a YAML alias of another one; expand aliases first")])
            self._seen.add(id(node))

    def additions(self, spec: Mapping[str, Any], path: Path, loc: Location, api_version: str) -> None:
        before = len(self.plan.ops)
        self._stale = []
        problems: list[Problem] = []
        ours_vols = volumes(self.options)
        ours_mounts = step_mounts()
        ours_paths = {m["mountPath"]: m for m in ours_mounts}
        ours_names = {m["name"]: m for m in ours_mounts}

        self._merge_list(
            spec, path, "volumes", ours_vols, loc, problems, lambda v: v.get("name"), ("stepTemplate", "steps"), ()
        )

        template = spec.get("stepTemplate")
        if template is None:
            self.plan.ops.append(SetKey(path, "stepTemplate", {"volumeMounts": ours_mounts}, before=("steps",)))
        elif not isinstance(template, Mapping):
            problems.append(Problem(loc, "stepTemplate is not a mapping"))
        else:
            self._merge_list(
                template,
                (*path, "stepTemplate"),
                "volumeMounts",
                ours_mounts,
                Location(loc.source, loc.resource, "stepTemplate"),
                problems,
                lambda m: m.get("name"),
                (),
                (),
                key_paths=True,
            )

        for i, step in enumerate(spec.get("steps") or []):
            if not isinstance(step, Mapping):
                continue
            for mount in step.get("volumeMounts") or []:
                if not isinstance(mount, Mapping):
                    continue
                mine = ours_paths.get(_norm(mount.get("mountPath"))) or ours_names.get(mount.get("name"))
                if mine is not None and dict(mount) != mine:
                    problems.append(Problem(loc.at_step(step_label(step, i)), _collision("volumeMounts", mount, mine)))
        for ws in spec.get("workspaces") or []:
            if isinstance(ws, Mapping) and _norm(ws.get("mountPath")) in ours_paths:
                problems.append(Problem(loc, f"workspace {ws.get('name')} is mounted at {ws.get('mountPath')}"))

        self._merge_list(
            spec,
            path,
            "sidecars",
            [sidecar(self.options, api_version, spec.get("steps"))],
            loc,
            problems,
            lambda s: s.get("name"),
            (),
            ("steps",),
        )
        if problems:
            raise InjectError(problems)
        if self._stale:
            self.plan.additions_stale.append((loc, "; ".join(self._stale)))
        elif len(self.plan.ops) > before:
            self.plan.additions_missing.append(loc)

    def _merge_list(
        self,
        parent: Mapping[str, Any],
        path: Path,
        key: str,
        ours: list[dict[str, Any]],
        loc: Location,
        problems: list[Problem],
        ident: Any,
        before: tuple[str, ...],
        after: tuple[str, ...],
        key_paths: bool = False,
    ) -> None:
        """Add what is missing of `ours` to `parent[key]` and bring entries of our names up to date (they are
        step-tracer's: an earlier patch wrote them for what the Task was then); another entry where ours goes
        (the same mount path under another name) collides."""
        existing = parent.get(key)
        if existing is None:
            self.plan.ops.append(SetKey(path, key, ours, before=before, after=after))
            return
        if not isinstance(existing, list):
            problems.append(Problem(loc, f"{key} is not a list"))
            return
        missing = []
        for mine in ours:
            same = [i for i, e in enumerate(existing) if isinstance(e, Mapping) and ident(e) == ident(mine)]
            clash = [
                e
                for e in existing
                if isinstance(e, Mapping)
                and ident(e) != ident(mine)
                and key_paths
                and _norm(e.get("mountPath")) == mine["mountPath"]
            ]
            problems.extend(Problem(loc, _collision(key, e, mine)) for e in clash)
            if not same:
                missing.append(mine)
            elif len(same) == 1:
                ops = reconcile((*path, key, same[0]), existing[same[0]], mine)
                if ops:
                    self.plan.ops += ops
                    where = f"{loc.step} {key}" if loc.step else key
                    self._stale.append(f"{where} entry {mine['name']!r} out of date ({_changed_fields(ops, path)})")
        if missing:
            self.plan.ops.append(AppendItems((*path, key), tuple(missing)))


def reconcile(path: Path, have: Any, want: Any) -> list[Op]:
    """The smallest edits that turn `have` (at `path`) into `want`: down to the values that differ, a whole
    mapping only when it has keys `want` lacks, a whole list only when its length changes."""
    if type(have) is type(want) and have == want:
        return []
    if isinstance(have, Mapping) and isinstance(want, Mapping) and set(have) <= set(want):
        ops: list[Op] = []
        for k, v in want.items():
            if k not in have:
                ops.append(SetKey(path, k, v))
            else:
                ops += reconcile((*path, k), have[k], v)
        return ops
    if isinstance(have, list) and isinstance(want, list) and len(have) == len(want):
        return [op for i, (h, w) in enumerate(zip(have, want, strict=True)) for op in reconcile((*path, i), h, w)]
    return [Replace(path, want)]


def _changed_fields(ops: list[Op], base: Path) -> str:
    """The changed fields of a list entry, as dotted paths below it (`env[0].value`)."""
    fields = []
    for op in ops:
        rel = op.path[len(base) + 2 :]
        if isinstance(op, SetKey):
            rel = (*rel, op.key)
        text = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in rel).lstrip(".")
        fields.append(text or "the whole entry")
    return ", ".join(dict.fromkeys(fields))


def _norm(mount_path: Any) -> Any:
    return mount_path.rstrip("/") or "/" if isinstance(mount_path, str) else mount_path


def _collision(key: str, theirs: Mapping[str, Any], mine: Mapping[str, Any]) -> str:
    if theirs.get("name") != mine["name"]:
        return (
            f"{key} entry {theirs.get('name')!r} sits at {theirs.get('mountPath')}, "
            f"where step-tracer mounts {mine['name']!r}"
        )
    differ = sorted(k for k in {*theirs, *mine} if theirs.get(k) != mine.get(k))
    return (
        f"{key} entry {mine['name']!r} already exists and differs from step-tracer's "
        f"(fields {', '.join(differ)}); remove it to inject again"
    )


def plan_document(doc: Any, *, source: str, options: InjectOptions, resolve: Resolver | None) -> Plan:
    return _Walker(source, options, resolve).document(doc)

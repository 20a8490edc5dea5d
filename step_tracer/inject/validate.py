"""Structural checks of patched resources, by the rules Tekton's admission webhook applies.

Run on the patcher's output so a broken result is reported here, naming file, resource and step, rather
than by the cluster at apply time or, worse, at run time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from step_tracer.inject.model import Location, Problem
from step_tracer.inject.resources import (
    STEPACTION_API_VERSIONS,
    TASK_API_VERSIONS,
    iter_resources,
    resource_label,
)
from step_tracer.inject.steps import step_label

MAX_BUNDLE_OBJECTS = 20
BUNDLE_KINDS = ("Task", "Pipeline", "StepAction")
REF_STEP_FORBIDDEN = ("image", "command", "args", "script", "workingDir", "env", "volumeMounts", "results")


def validate_document(doc: Any, source: str) -> list[Problem]:
    return [p for _, res in iter_resources(doc) for p in validate_resource(res, source)]


def validate_resource(res: Mapping[str, Any], source: str) -> list[Problem]:
    """Problems of one Task, Pipeline or StepAction; other kinds have none."""
    api_version, kind, spec = res.get("apiVersion"), res.get("kind"), res.get("spec")
    loc = Location(source, resource_label(res))
    if not isinstance(spec, Mapping) or not isinstance(api_version, str):  # `apiVersion: [..]` is no Tekton's
        return []
    if kind == "Task" and api_version in TASK_API_VERSIONS:
        return _task_spec(spec, loc)
    if kind == "Pipeline" and api_version in TASK_API_VERSIONS:
        return _pipeline_spec(spec, loc)
    if kind == "StepAction" and api_version in STEPACTION_API_VERSIONS:
        problems = []
        if spec.get("script") and spec.get("command"):
            problems.append(Problem(loc, "sets both script and command"))
        problems += _mounts(spec.get("volumeMounts"), loc)
        return problems
    return []


def _pipeline_spec(spec: Mapping[str, Any], loc: Location) -> list[Problem]:
    problems = []
    for section in ("tasks", "finally"):
        for i, pt in enumerate(_list(spec.get(section))):
            if not isinstance(pt, Mapping):
                continue
            where = Location(loc.source, f"{loc.resource} {section}[{pt.get('name', i)}]")
            ts, ps = pt.get("taskSpec"), pt.get("pipelineSpec")
            if isinstance(ts, Mapping) and not ("apiVersion" in ts and "kind" in ts):
                problems += _task_spec(ts, where)
            elif isinstance(ps, Mapping):
                problems += _pipeline_spec(ps, where)
    return problems


def _task_spec(spec: Mapping[str, Any], loc: Location) -> list[Problem]:
    problems: list[Problem] = []
    steps = [s for s in _list(spec.get("steps")) if isinstance(s, Mapping)]
    for i, step in enumerate(steps):
        at = loc.at_step(step_label(step, i))
        if "ref" in step:
            bad = [k for k in REF_STEP_FORBIDDEN if k in step]
            if bad:
                problems.append(Problem(at, f"a StepAction reference may not set {', '.join(bad)}"))
        if step.get("script") and step.get("command"):
            problems.append(Problem(at, "sets both script and command"))
        problems += _mounts(step.get("volumeMounts"), at)
    names = Counter(str(s["name"]) for s in steps if s.get("name"))
    problems += [Problem(loc.at_step(n), f"step name used {c} times") for n, c in names.items() if c > 1]

    volume_names = Counter(str(v.get("name")) for v in _list(spec.get("volumes")) if isinstance(v, Mapping))
    problems += [Problem(loc, f"volume name {n!r} used {c} times") for n, c in volume_names.items() if c > 1]
    problems += [
        Problem(loc, f"volume name {n!r} is reserved for Tekton")
        for n in volume_names
        if n.startswith("tekton-internal-")
    ]
    template = spec.get("stepTemplate")
    if isinstance(template, Mapping):
        problems += _mounts(template.get("volumeMounts"), loc.at_step("stepTemplate"))
    sidecar_names = Counter(str(s.get("name")) for s in _list(spec.get("sidecars")) if isinstance(s, Mapping))
    problems += [Problem(loc, f"sidecar name {n!r} used {c} times") for n, c in sidecar_names.items() if c > 1]
    return problems


def _mounts(mounts: Any, loc: Location) -> list[Problem]:
    problems = []
    for m in _list(mounts):
        path = m.get("mountPath") if isinstance(m, Mapping) else None
        if isinstance(path, str) and path.startswith("/tekton/") and not path.startswith("/tekton/home"):
            problems.append(
                Problem(loc, f"volume mount {m.get('name')!r} at {path}: paths under /tekton/ are reserved")
            )
    return problems


def _list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def validate_bundle(objects: Iterable[Mapping[str, Any]], source: str = "bundle") -> list[Problem]:
    """Rules for the objects of one Tekton bundle: at most 20, Tasks/Pipelines/StepActions, unique kind+name."""
    objs = list(objects)
    problems = []
    if len(objs) > MAX_BUNDLE_OBJECTS:
        problems.append(Problem(Location(source), f"{len(objs)} objects; a bundle holds at most {MAX_BUNDLE_OBJECTS}"))
    seen: Counter[tuple[Any, Any]] = Counter()
    for obj in objs:
        label = resource_label(obj)
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, Mapping) else None
        if obj.get("kind") not in BUNDLE_KINDS:
            problems.append(Problem(Location(source, label), f"kind must be one of {', '.join(BUNDLE_KINDS)}"))
        if not name:
            problems.append(Problem(Location(source, label), "metadata.name is required in a bundle"))
        seen[(obj.get("kind"), name)] += 1
    problems += [
        Problem(Location(source, f"{kind}/{name}"), f"appears {count} times; names must be unique per kind")
        for (kind, name), count in seen.items()
        if count > 1
    ]
    return problems

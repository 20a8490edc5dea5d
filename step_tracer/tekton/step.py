"""Where a Tekton step's span belongs: its parent, its pod's attributes, and where it is written.

One decision per step, in the order of the runtime contract (README, "In a Tekton pod"): TRACEPARENT, then
the TaskRun's span-context annotation, then the context the sidecar read from the TaskRun's status, then ids
derived from the TaskRun UID, then a new trace. Every problem is one warning and a fallback, never a failure.
"""

from __future__ import annotations

import os

from step_tracer import context
from step_tracer.tekton import paths, podinfo

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~20 ms here)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from step_tracer.span import Attributes


class StepPlacement:
    """`parent` is None for a new trace; `source` says where it came from (recorded as
    `tekton.trace.parent_source`); `spool` is the spool directory when the pod has one."""

    __slots__ = ("attributes", "parent", "resource", "source", "spool")

    def __init__(self) -> None:
        self.parent: context.SpanContext | None = None
        self.source = "none"
        self.attributes: Attributes = {}
        self.resource: Attributes = {}
        self.spool: str | None = None


def place(
    env: Mapping[str, str],
    step_name: str,
    step_index: int | None,
    warn: Callable[[str], None],
) -> StepPlacement:
    placement = StepPlacement()
    spool = paths.spool_dir(env)
    if os.path.isdir(spool):
        placement.spool = spool
    info_dir = paths.podinfo_dir(env)
    info: podinfo.PodInfo | None = None
    try:
        info = podinfo.read(info_dir)
    except (OSError, ValueError) as err:
        warn(f"ignoring pod info in {info_dir} ({err}); the step's span lacks the TaskRun's attributes")
    if info is not None:
        placement.attributes = info.span_attributes()
        placement.resource = info.resource_attributes()
        placement.resource["k8s.container.name"] = podinfo.container_name(step_name, step_index)

    traceparent = env.get("TRACEPARENT")
    if traceparent:
        parent = context.parse_traceparent(traceparent, env.get("TRACESTATE", ""))
        if parent is not None:
            placement.parent, placement.source = parent, "env"
            return placement
        warn(f"ignoring malformed TRACEPARENT {traceparent[:80]!r}")
    if info is not None:
        annotation = info.annotations.get(podinfo.SPAN_CONTEXT_ANNOTATION)
        if annotation:
            parent = _carrier(annotation, f"annotation {podinfo.SPAN_CONTEXT_ANNOTATION}", warn)
            if parent is not None:
                placement.parent, placement.source = parent, "annotation"
                return placement
    if placement.spool is not None:
        path = os.path.join(placement.spool, paths.STATUS_CONTEXT_FILE)
        text = read_status_context(path, warn)
        if text:
            parent = _carrier(text, path, warn)
            if parent is not None:
                placement.parent, placement.source = parent, "taskrun-status"
                return placement
    if info is not None and info.taskrun_uid:
        placement.parent, placement.source = podinfo.derived_context(info.taskrun_uid), "taskrun-uid"
    return placement


def read_status_context(path: str, warn: Callable[[str], None]) -> str:
    """The sidecar's `taskrun-context.json`, or "" when absent or not acceptable (one warning). Any step can write
    the spool, so this is untrusted: a FIFO, a symlink or a huge file in its place means no context, never a
    step that hangs or runs out of memory before its command starts."""
    from step_tracer.tekton.spool import read_limited

    try:
        return read_limited(path, paths.MAX_STATUS_CONTEXT_BYTES)[0].decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    except OSError as err:
        warn(f"ignoring {path}: {err.strerror}")
    except ValueError as err:
        warn(f"ignoring {path}: {err}")
    return ""


def _carrier(text: str, where: str, warn: Callable[[str], None]) -> context.SpanContext | None:
    try:
        parent = podinfo.carrier_context(text)
    except ValueError as err:
        warn(f"ignoring malformed span context in {where} ({err})")
        return None
    if parent is None:
        warn(f"ignoring span context in {where}: no valid traceparent")
    return parent

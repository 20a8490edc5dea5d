"""The TaskRun's side of the trace: finding Tekton's context for a standalone TaskRun (contract case 3) and
emitting the TaskRun span when the steps' parent was derived from the TaskRun UID (case 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from step_tracer.span import STATUS_ERROR, Span
from step_tracer.tekton import podinfo
from step_tracer.tekton.paths import MAX_STATUS_CONTEXT_BYTES, STATUS_CONTEXT_FILE
from step_tracer.tekton.spool import read_limited

if TYPE_CHECKING:
    from step_tracer.context import SpanContext
    from step_tracer.span import AttributeValue

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TASKRUN_LABEL = "tekton.dev/taskRun"
RESULT = "cicd.pipeline.task.run.result"
#: The lookup's own retry budget is 2 s; this bounds the whole child (interpreter and client import included).
LOOKUP_HARD_LIMIT = 20.0


def annotation_context(info: podinfo.PodInfo | None) -> bool:
    """Does the pod carry Tekton's span context (case 2)?"""
    if info is None:
        return False
    text = info.annotations.get(podinfo.SPAN_CONTEXT_ANNOTATION, "")
    if not text:
        return False
    try:
        return podinfo.carrier_context(text) is not None
    except ValueError:
        return False


def status_context(spool: str) -> bool:
    """Did the sidecar read the TaskRun's status.spanContext (case 3)?"""
    return status_span_context(spool) is not None


def status_span_context(spool: str) -> SpanContext | None:
    """The context in `<spool>/taskrun-context.json`; None when absent, not a regular file, too large or invalid
    (a step can write the spool: the read never blocks and is bounded)."""
    try:
        data = read_limited(os.path.join(spool, STATUS_CONTEXT_FILE), MAX_STATUS_CONTEXT_BYTES)[0]
        return podinfo.carrier_context(data.decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None


def resolve_status_context(
    info: podinfo.PodInfo | None,
    spool: str,
    kube_api: str,
    env: Mapping[str, str],
    debug: Callable[[str], None],
    sa_dir: str = SERVICE_ACCOUNT_DIR,
) -> bool:
    """Write `<spool>/taskrun-context.json` from the TaskRun's status when the pod has no span-context annotation
    and may ask the API server. True when the file exists afterwards."""
    if info is None or annotation_context(info):
        return False
    if status_context(spool):
        return True
    name = info.labels.get(TASKRUN_LABEL, "")
    if not name:
        return False
    namespace = info.namespace or _read(os.path.join(sa_dir, "namespace"))
    if not namespace:
        debug("pod namespace unknown (no podinfo namespace file, no service account); not reading the TaskRun")
        return False
    if not kube_api and not os.path.exists(os.path.join(sa_dir, "token")):
        debug("no service account token mounted; not reading the TaskRun's span context")
        return False
    argv = [sys.executable, "-m", "step_tracer.sidecar.kube", "--output", os.path.join(spool, STATUS_CONTEXT_FILE)]
    argv += ["--namespace", namespace, "--name", name]
    if kube_api:
        argv += ["--api", kube_api]
    try:
        subprocess.run(argv, env=dict(env), stdin=subprocess.DEVNULL, timeout=LOOKUP_HARD_LIMIT, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        debug(f"TaskRun lookup did not finish ({err})")
    return status_context(spool)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


class TaskRunSpan:
    """Collects what the TaskRun span needs while step spans are shipped; `build` decides whether it is ours.

    It is ours only when the steps were parented on ids derived from the TaskRun UID (contract case 4): with an
    annotation or a status context Tekton owns the TaskRun span, and with TRACEPARENT in the steps' environment
    no step refers to the derived ids.
    """

    def __init__(self, info: podinfo.PodInfo | None, spool: str, started_ns: int) -> None:
        self.info = info
        self.spool = spool
        self.derived = podinfo.derived_context(info.taskrun_uid) if info is not None and info.taskrun_uid else None
        # Decided once, before any step ran: a step that writes taskrun-context.json later cannot take the
        # TaskRun span away (nor move the pod's trace, see `pod_trace`).
        self.status = status_span_context(spool) if info is not None else None
        self.tekton_owns = annotation_context(info) or self.status is not None
        self.earliest_ns = started_ns
        self.steps = 0
        self.children = 0
        self.failure: tuple[str, str] | None = None  # (error.type, message) of the first failed step

    def observe(self, span: Span, on_error: str) -> None:
        self.steps += 1
        derived = self.derived
        if derived is not None and span.trace_id == derived.trace_id and span.parent_span_id == derived.span_id:
            self.children += 1
        if 0 < span.start_ns < self.earliest_ns:
            self.earliest_ns = span.start_ns
        result = span.attributes.get(RESULT)
        failed = span.status_code == STATUS_ERROR or (result is not None and result != "success")
        if failed and on_error != "continue" and self.failure is None:
            error_type = span.attributes.get("error.type") or result or "step_failed"
            self.failure = (str(error_type), f"step {span.name} ended with {result or 'an error'}")

    def pod_trace(self) -> str:
        """The trace every step span of this pod belongs to ("" when the sidecar cannot know it): Tekton's
        (annotation or TaskRun status, read before any step ran) or the one derived from the TaskRun UID."""
        info = self.info
        if info is not None:
            text = info.annotations.get(podinfo.SPAN_CONTEXT_ANNOTATION, "")
            try:
                found = podinfo.carrier_context(text) if text else None
            except ValueError:
                found = None
            if found is not None:
                return found.trace_id
        found = self.status
        if found is not None:
            return found.trace_id
        return self.derived.trace_id if self.derived is not None else ""

    def build(
        self, end_ns: int, resource: Mapping[str, AttributeValue]
    ) -> tuple[dict[str, AttributeValue], Span] | None:
        """(resource, span) of the TaskRun span, or None when the TaskRun span is not the sidecar's to emit."""
        derived, info = self.derived, self.info
        if derived is None or info is None or self.tekton_owns:
            return None
        if self.steps and not self.children:
            return None
        span = Span(
            info.labels.get(TASKRUN_LABEL) or "taskrun",
            derived.trace_id,
            derived.span_id,
            trace_flags=derived.trace_flags,
            start_ns=min(self.earliest_ns, end_ns),
            end_ns=end_ns,
        )
        span.attributes.update(info.span_attributes())
        span.attributes[RESULT] = "failure" if self.failure else "success"
        if self.failure:
            span.attributes["error.type"] = self.failure[0]
            span.status_code = STATUS_ERROR
            span.status_message = self.failure[1]
        merged: dict[str, AttributeValue] = dict(resource)
        merged.update(info.resource_attributes())
        return merged, span

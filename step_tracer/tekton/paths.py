"""Where step-tracer's parts are in a traced pod: one definition for the patcher, the webhook, the wrapper and
the sidecar (README, "In a Tekton pod"). Constants only: the wrapper imports this on every step."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~20 ms here)
if TYPE_CHECKING:
    from collections.abc import Mapping

BIN_DIR = "/step-tracer/bin"
WRAPPER = BIN_DIR + "/step-tracer"
SPOOL_DIR = "/step-tracer/spool"
PODINFO_DIR = "/step-tracer/podinfo"

#: In the spool: the context the sidecar read from a standalone TaskRun's status, and its readiness mark.
STATUS_CONTEXT_FILE = "taskrun-context.json"
READY_FILE = ".ready"
#: A span-context carrier is a traceparent and a tracestate (at most 512 characters by W3C): far below this.
MAX_STATUS_CONTEXT_BYTES = 64 * 1024

#: Overrides for odd layouts and for tests, which cannot mount at /step-tracer.
SPOOL_ENV = "STEP_TRACER_SPOOL"
PODINFO_ENV = "STEP_TRACER_PODINFO"


def spool_dir(env: Mapping[str, str]) -> str:
    return env.get(SPOOL_ENV) or SPOOL_DIR


def podinfo_dir(env: Mapping[str, str]) -> str:
    return env.get(PODINFO_ENV) or PODINFO_DIR

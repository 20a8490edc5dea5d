"""Reading a standalone TaskRun's `status.spanContext` through the Kubernetes API (contract case 3).

Run as its own process (`python -m step_tracer.sidecar.kube`) by the sidecar at start-up: importing the kubernetes
client takes a process from 10 MiB to 43 MiB of RSS, which a long-lived sidecar under a 64 MiB limit cannot keep.
Tekton writes status.spanContext just after it created the pod, so a missing one is retried for a short while.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from step_tracer import context
from step_tracer.tekton.spool import open_new

GROUP = "tekton.dev"
VERSIONS = ("v1", "v1beta1")
DEFAULT_BUDGET = 2.0
EXIT_FOUND, EXIT_NOT_FOUND, EXIT_FORBIDDEN, EXIT_UNAVAILABLE = 0, 1, 3, 4


def _debug(message: str) -> None:
    if os.environ.get("STEP_TRACER_DEBUG", "") not in ("", "0"):
        sys.stderr.write(f"step-tracer sidecar: {message}\n")
        sys.stderr.flush()


def _say(message: str) -> None:
    sys.stderr.write(f"step-tracer sidecar: {message}\n")
    sys.stderr.flush()


def carrier_from(taskrun: Any) -> dict[str, str] | None:
    """The `{"traceparent", "tracestate"}` carrier of a TaskRun object when its status holds a valid one."""
    status = taskrun.get("status") if isinstance(taskrun, dict) else None
    span_context = status.get("spanContext") if isinstance(status, dict) else None
    if not isinstance(span_context, dict):
        return None
    traceparent = span_context.get("traceparent")
    tracestate = span_context.get("tracestate") or ""
    if not isinstance(traceparent, str) or not isinstance(tracestate, str):
        return None
    if context.parse_traceparent(traceparent, tracestate) is None:
        return None
    carrier = {"traceparent": traceparent.strip()}
    if tracestate.strip():
        carrier["tracestate"] = tracestate.strip()
    return carrier


def write_carrier(path: str, carrier: dict[str, str]) -> None:
    """Atomically, readable by the steps' UIDs (the wrapper reads it at every step start)."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    data = json.dumps(carrier, separators=(",", ":")).encode() + b"\n"
    fd = open_new(tmp, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def lookup(namespace: str, name: str, api: str, budget: float) -> tuple[int, dict[str, str] | None]:
    """(exit code, carrier). Tries tekton.dev/v1 then v1beta1, retrying until `budget` seconds have passed."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    deadline = time.monotonic() + budget
    configuration = client.Configuration()
    if api:
        configuration.host = api
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException as err:
            _debug(f"no in-cluster Kubernetes configuration ({err}); cannot read the TaskRun's span context")
            return EXIT_UNAVAILABLE, None
    configuration.retries = 0  # our own loop retries, within the budget
    api_client = client.ApiClient(configuration)
    objects = client.CustomObjectsApi(api_client)
    versions = list(VERSIONS)
    last = "no answer"
    while True:
        for version in list(versions):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            per_request = max(min(remaining, 1.0), 0.05)
            try:
                taskrun = objects.get_namespaced_custom_object(
                    GROUP, version, namespace, "taskruns", name, _request_timeout=(per_request, per_request)
                )
            except ApiException as err:
                if err.status in (401, 403):
                    # Said whatever STEP_TRACER_DEBUG is: a missing RoleBinding is the operator's to fix.
                    _say(
                        f"not allowed to get TaskRun {namespace}/{name} ({err.status} {err.reason}): grant `get` on "
                        "taskruns.tekton.dev to the TaskRun's service account (tekton/rbac.yaml) to join Tekton's "
                        "trace; using ids derived from the TaskRun UID"
                    )
                    return EXIT_FORBIDDEN, None
                last = f"{err.status} {err.reason} from {GROUP}/{version}"
                if err.status == 404 and len(versions) > 1:
                    versions.remove(version)  # this version is not served: try the next one
                continue
            except (HTTPError, OSError) as err:
                last = f"{type(err).__name__}: {err}"
                continue
            carrier = carrier_from(taskrun)
            if carrier is not None:
                return EXIT_FOUND, carrier
            last = f"TaskRun {namespace}/{name} has no status.spanContext yet"
            versions = [version]
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _debug(f"no span context for TaskRun {namespace}/{name} within {budget:g}s ({last})")
            return EXIT_NOT_FOUND, None
        time.sleep(min(0.2, remaining))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m step_tracer.sidecar.kube")
    parser.add_argument("--output", required=True, help="where to write the carrier JSON")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--api", default="", help="API server URL instead of the in-cluster configuration")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="seconds for all attempts")
    args = parser.parse_args(argv)
    code, carrier = lookup(args.namespace, args.name, args.api, args.budget)
    if carrier is not None:
        write_carrier(args.output, carrier)
        _debug(f"TaskRun {args.namespace}/{args.name}: parent {carrier['traceparent']}")
    return code


if __name__ == "__main__":
    sys.exit(main())

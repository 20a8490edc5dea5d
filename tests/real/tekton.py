"""Tekton's real controller code, through hack/tekton's `tekton-pod`: the Pod for a TaskRun, and the TaskRun
status Tekton makes of that Pod once it has run."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.real.images import tekton_bin_dir


def _args(
    task: str | None,
    name: str | None,
    namespace: str,
    uid: str | None,
    annotations: Mapping[str, str],
    labels: Mapping[str, str],
    params: Mapping[str, str],
    workspaces: Mapping[str, str],
) -> list[str]:
    args = ["-namespace", namespace]
    for key, value in workspaces.items():
        args += ["-workspace", f"{key}={value}"]
    if task:
        args += ["-task", task]
    if name:
        args += ["-name", name]
    if uid:
        args += ["-uid", uid]
    for key, value in annotations.items():
        args += ["-annotation", f"{key}={value}"]
    for key, value in labels.items():
        args += ["-label", f"{key}={value}"]
    for key, value in params.items():
        args += ["-param", f"{key}={value}"]
    return args


class TektonError(Exception):
    """Tekton's reconciler refused the TaskRun (the message is Tekton's)."""


def _run(args: Sequence[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [str(tekton_bin_dir() / "tekton-pod"), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise TektonError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def build_pod(
    files: Sequence[Path],
    *,
    task: str | None = None,
    name: str | None = None,
    namespace: str = "default",
    uid: str | None = None,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    workspaces: Mapping[str, str] | None = None,
    feature_flags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Pod Tekton's TaskRun reconciler creates for a TaskRun of `task` (a Task in `files`), with Tekton's
    default feature flags but `feature_flags`."""
    args = _args(task, name, namespace, uid, annotations or {}, labels or {}, params or {}, workspaces or {})
    for key, value in (feature_flags or {}).items():
        args += ["-feature-flag", f"{key}={value}"]
    return _run([*args, *map(str, files)])


def taskrun_status(
    files: Sequence[Path],
    pod: Mapping[str, Any],
    *,
    task: str | None = None,
    name: str | None = None,
    namespace: str = "default",
    uid: str | None = None,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    workspaces: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The TaskRun (with status) Tekton's reconciler makes of `pod`, a Pod that ran, with its status."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(pod, f)
        f.flush()
        args = _args(task, name, namespace, uid, annotations or {}, labels or {}, params or {}, workspaces or {})
        args += ["-pod", f.name]
        return _run([*args, *map(str, files)])

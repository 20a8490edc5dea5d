"""Installing the self-contained wrapper tree into the pod's shared bin volume.

The tree is copied into a hidden directory first and its top-level entries renamed into place, the entry point
`step-tracer` last: a step that looks early sees no wrapper or a whole one, never half of it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable

DEFAULT_SOURCE = "/opt/step-tracer/wrapper"
ENTRY_POINT = "step-tracer"


def install_wrapper(source: str, dest: str, warn: Callable[[str], None]) -> bool:
    """Copy `source` into `dest`, keeping modes and symlinks. False (after one line on `warn`) when it cannot."""
    if not os.path.isfile(os.path.join(source, ENTRY_POINT)):
        warn(
            f"no wrapper to install: {os.path.join(source, ENTRY_POINT)} does not exist (set --wrapper-source or "
            f"STEP_TRACER_WRAPPER_SOURCE); steps that run {os.path.join(dest, ENTRY_POINT)} will fail"
        )
        return False
    try:
        os.makedirs(dest, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".tmp-", dir=dest)
        try:
            for entry in os.scandir(source):
                target = os.path.join(staging, entry.name)
                if entry.is_dir(follow_symlinks=False):
                    shutil.copytree(entry.path, target, symlinks=True)
                else:
                    shutil.copy2(entry.path, target, follow_symlinks=False)
            names = sorted(os.listdir(staging), key=lambda name: (name == ENTRY_POINT, name))
            for name in names:
                _replace(os.path.join(staging, name), os.path.join(dest, name))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as err:
        warn(f"cannot install the wrapper from {source} into {dest}: {err}")
        return False
    # Steps only read and execute here (an emptyDir starts 0777). A non-root sidecar on a root-owned volume may
    # not change it; the steps mount it read-only anyway.
    with contextlib.suppress(OSError):
        os.chmod(dest, 0o755)
    return True


def _replace(new: str, target: str) -> None:
    """rename(2) replaces a file or symlink atomically, but not a non-empty directory: move that aside first."""
    if os.path.isdir(target) and not os.path.islink(target):
        aside = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(target))
        os.rename(target, os.path.join(aside, "old"))
        os.rename(new, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(new, target)

"""Fixtures that start real components, in one place: Tekton's binaries, the local images, the OTLP receiver."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real.e2e import Rig


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount namespaces, chroot)"
    if shutil.which("go") is None:
        return "needs Go to build Tekton's code (hack/build-tekton)"
    for tool in ("nsenter", "dpkg-query"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@pytest.fixture(scope="session")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """Tekton's binaries built, the local images made and an OTLP receiver started, once per session."""
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the real-Tekton tests cannot run in CI: {reason}")
        pytest.skip(reason)
    with Rig(tmp_path_factory.mktemp("real")) as rig:
        yield rig


TASKS = Path(__file__).with_name("tasks")

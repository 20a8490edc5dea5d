"""The Go-built real components: hack/build-NAME's output, brought up to date once per test process."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def built(name: str) -> Path:
    """`.cache/NAME/bin` after `hack/build-NAME` (tekton, cluster, otel): seconds once .ci/run has built it, as
    Go's build cache holds everything."""
    out = REPO / ".cache" / name / "bin"
    subprocess.run(["bash", str(REPO / "hack" / f"build-{name}"), str(out)], check=True)
    return out

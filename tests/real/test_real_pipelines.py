"""A PipelineRun through Tekton's own PipelineRun and TaskRun reconcilers with Tekton's tracing on, Tekton and
the sidecars exporting to a real Collector, read back through a real Jaeger's API: one trace from Tekton's
PipelineRun span through its TaskRun spans to one span per executed step, on both tracing paths, with every
TaskRun's outcome what it is without step-tracer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real.conftest import TASKS
from tests.real.e2e import Rig
from tests.real.otel import Collector, Jaeger
from tests.real.pipelines import PipelineRunResult, check_traces, run_pipeline, step_outcomes

pytestmark = pytest.mark.root

PIPELINE = TASKS / "pipeline-docker-build.yaml"


def _run(rig: Rig, path: str, tmp_path: Path) -> PipelineRunResult:
    return run_pipeline(
        rig,
        [PIPELINE],
        path,
        name=f"docker-build-{path}",
        tracing_endpoint=rig.tekton_tracing_endpoint,
        workspaces={"workspace": "pvc:workspace"},
        claims={"workspace": tmp_path},
    )


@pytest.fixture(scope="module")
def backend_rig(
    rig: Rig, collector: Collector, jaeger: Jaeger, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    """The session rig's images, exporting to the real Collector; spans read back from Jaeger."""
    with Rig(tmp_path_factory.mktemp("backend-rig"), rig.images, rig.default) as r:
        r.use_backend(collector, jaeger)
        yield r


@pytest.fixture(scope="module")
def unpatched(backend_rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> PipelineRunResult:
    return _run(backend_rig, "unpatched", tmp_path_factory.mktemp("ws"))


@pytest.mark.parametrize("path", ["inject", "webhook"])
def test_one_trace_from_tektons_pipelinerun_span_to_every_step(
    backend_rig: Rig, jaeger: Jaeger, unpatched: PipelineRunResult, path: str, tmp_path: Path
) -> None:
    run = _run(backend_rig, path, tmp_path)
    # Tekton's verdict is the same as without step-tracer: the PipelineRun, every TaskRun, every step.
    assert run.succeeded == unpatched.succeeded == "True"
    assert step_outcomes(run) == step_outcomes(unpatched)
    assert step_outcomes(run)[("build-container", "push-sbom")] == (4, "Continued")

    check_traces(run, jaeger)

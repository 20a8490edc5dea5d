"""A stand-in for Tekton (controller, kubelet, entrypoint) that runs TaskRuns on this machine, no Kubernetes needed.

    harness = Harness(tmp_path, images={"tool": Image(entrypoint=("/bin/echo",))})
    result = harness.run(task_dict, TaskRun(name="build-1", params={"x": "1"}))
    result.step("compile").reason  # "Completed", "Error", "Continued", "TimeoutExceeded", "Skipped"

See pod.py (what the controller builds, and the one deviation: paths) and taskrun.py (how it runs).
"""

from tests.tekton_harness.kubelet import format_map, go_quote
from tests.tekton_harness.pod import (
    DEFAULT_PATH,
    Container,
    HarnessError,
    Image,
    Mount,
    PipelineInfo,
    Pod,
    TaskRun,
    build_pod,
)
from tests.tekton_harness.taskrun import (
    ENTRYPOINT_SCRIPT,
    Harness,
    RunningPod,
    SidecarRun,
    StepRun,
    TaskRunResult,
    wait_until,
)

__all__ = [
    "DEFAULT_PATH",
    "ENTRYPOINT_SCRIPT",
    "Container",
    "Harness",
    "HarnessError",
    "Image",
    "Mount",
    "PipelineInfo",
    "Pod",
    "RunningPod",
    "SidecarRun",
    "StepRun",
    "TaskRun",
    "TaskRunResult",
    "build_pod",
    "format_map",
    "go_quote",
    "wait_until",
]

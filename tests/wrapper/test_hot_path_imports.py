"""What the wrapper imports on its way through a step: the costs the benchmark measures, pinned by name."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.otlp_receiver import HttpReceiver

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("opentelemetry", "google.protobuf", "grpc", "click", "psutil", "typing", "re", "enum", "json",
         "dataclasses", "logging", "signal", "subprocess", "threading", "http.client", "email", "ssl", "socket",
         "encodings.idna")  # fmt: skip

_PROBE = """
import os, sys
sys.path.insert(0, {root!r})
from step_tracer.__main__ import main
code = main({argv!r})
heavy = [m for m in {heavy!r} if m in sys.modules or any(k.startswith(m + ".") for k in sys.modules)]
os.write(int(sys.argv[1]), repr((code, heavy)).encode())
"""


def _imports_of_a_traced_step(
    env: dict[str, str], argv: tuple[str, ...] = ("run", "--", "true")
) -> tuple[int, list[str]]:
    """Run one traced `true` in a fresh isolated interpreter; it reports its exit code and heavy imports on a pipe."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _PROBE.format(root=str(ROOT), heavy=HEAVY, argv=list(argv)), str(write_fd)],
        env=env, pass_fds=(write_fd,), capture_output=True, timeout=60,
    )  # fmt: skip
    os.close(write_fd)
    with open(read_fd, "rb") as pipe:
        report = pipe.read().decode()
    assert proc.returncode == 0, proc.stderr
    code, heavy = ast.literal_eval(report)
    return int(code), list(heavy)


def test_file_export_path_imports_nothing_heavy(tmp_path: Path) -> None:
    code, heavy = _imports_of_a_traced_step({"STEP_TRACER_FILE": str(tmp_path / "s.jsonl"), "PATH": "/usr/bin:/bin"})
    assert code == 0
    assert heavy == []
    assert json.loads((tmp_path / "s.jsonl").read_text())["resourceSpans"]


def test_otlp_http_path_imports_nothing_heavy(http_receiver: HttpReceiver) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint, "PATH": "/usr/bin:/bin"}
    code, heavy = _imports_of_a_traced_step(env)
    assert code == 0
    assert http_receiver.wait_for_spans(1)
    assert heavy == []  # not even http.client (email, ssl) or the idna codec (re)


def test_tekton_step_into_the_spool_imports_nothing_heavy(tmp_path: Path) -> None:
    """A patched step in a pod: pod info, parent from the annotation, write-ahead and end records."""
    (tmp_path / "podinfo").mkdir()
    (tmp_path / "spool").mkdir()
    (tmp_path / "podinfo" / "labels").write_text('tekton.dev/taskRunUID="8c1f2a8e-5b7d-4c1e-9f00-123456789abc"')
    (tmp_path / "podinfo" / "annotations").write_text(
        'tekton.dev/taskrunSpanContext="{\\"traceparent\\":\\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\\"}"'
    )
    script = tmp_path / "script-0-x"
    script.write_text(
        "#!/step-tracer/bin/step-tracer run-script --tekton-step=s --tekton-step-index=0\n#!/bin/sh\ntrue\n"
    )
    env = {"STEP_TRACER_PODINFO": str(tmp_path / "podinfo"), "STEP_TRACER_SPOOL": str(tmp_path / "spool"),
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    for argv in (
        ("run", "--tekton-step", "s", "--tekton-step-index", "0", "--", "true"),
        ("run-script --tekton-step=s --tekton-step-index=0", str(script)),
    ):
        code, heavy = _imports_of_a_traced_step(env, argv)
        assert code == 0 and heavy == []
    ends = [p.read_text() for p in (tmp_path / "spool").glob("*.end")]
    assert len(ends) == 2 and all("0af7651916cd43dd8448eb211c80319c" in e for e in ends)


def test_sidecar_readiness_probe_imports_nothing_heavy(tmp_path: Path) -> None:
    """The kubelet runs the probe every second in every traced pod."""
    argv = ("sidecar", "--ready", "--spool", str(tmp_path))
    assert _imports_of_a_traced_step({"PATH": "/usr/bin:/bin"}, argv) == (1, [])
    (tmp_path / ".ready").write_text("")
    assert _imports_of_a_traced_step({"PATH": "/usr/bin:/bin"}, argv) == (0, [])

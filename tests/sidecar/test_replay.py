"""Nothing lost when the collector is down at pod end: the sidecar writes what is left to its log, and
`step-tracer replay` ships it from there (or from spool records)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from step_tracer.tekton import podinfo, spool
from tests.otlp_receiver import HttpReceiver, free_port
from tests.sidecar.test_sidecar_pod import LAUNCHER, TASKRUN_UID, Pod, Sidecar, clean_env, step_span, write_step


def replay(receiver: HttpReceiver, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    return subprocess.run(
        [str(LAUNCHER), "replay", *args], input=stdin, env=env, capture_output=True, timeout=60, check=False
    )


def test_spans_left_at_the_drain_deadline_reach_the_collector_through_the_log(
    tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    pod = Pod(tmp_path)
    pod.write_podinfo(pod.taskrun_labels())
    dead = f"http://127.0.0.1:{free_port()}"
    env = pod.env(OTEL_EXPORTER_OTLP_ENDPOINT=dead, OTEL_EXPORTER_OTLP_TIMEOUT="200", STEP_TRACER_DRAIN_DEADLINE="1")
    parent = podinfo.derived_context(TASKRUN_UID)
    written = [step_span(i, parent) for i in range(3)]
    with Sidecar(pod, env) as sidecar:
        sidecar.wait_ready()
        for span in written:
            write_step(pod, span)
        sidecar.wait_for_stderr("cannot export")
        assert sidecar.stop()[0] == 0
    assert "4 written to stdout as OTLP JSON lines" in sidecar.stderr  # the 3 steps and the TaskRun span
    assert pod.records() == (set(), set())
    lines = sidecar.stdout.decode().splitlines()
    # What `kubectl logs --timestamps --prefix` shows, with another container's noise mixed in.
    log = "\n".join(
        [f"[pod/build-pod/step-tracer] 2026-12-07T10:00:0{i}.000000000Z {line}" for i, line in enumerate(lines)]
        + ["plain text from somewhere", '{"resourceSpans": [{"broken'],
    )
    result = replay(http_receiver, "-", stdin=log.encode())
    assert result.returncode == 0, result.stderr
    received = http_receiver.wait_for_spans(4)
    assert {s.span_id for s in received} == {s.span_id for s in written} | {parent.span_id}
    assert result.stderr.decode() == (
        "step-tracer replay: 4 span(s) exported, 1 line(s) without an OTLP JSON request skipped, "
        "1 malformed request(s) or span(s) skipped from 6 line(s)\n"
    )


def test_spool_records_replay_and_unfinished_starts_are_counted(tmp_path: Path, http_receiver: HttpReceiver) -> None:
    finished, unfinished = step_span(0), step_span(1)
    end = spool.write_end(str(tmp_path), {"service.name": "x"}, finished)
    start = spool.write_start(
        str(tmp_path),
        {"service.name": "x"},
        unfinished.__class__(unfinished.name, unfinished.trace_id, unfinished.span_id, start_ns=unfinished.start_ns),
    )
    result = replay(http_receiver, end, start)
    assert result.returncode == 0, result.stderr
    assert [s.span_id for s in http_receiver.wait_for_spans(1)] == [finished.span_id]
    assert b"1 unfinished start record(s) skipped" in result.stderr


def test_a_collector_that_is_down_fails_the_replay(tmp_path: Path) -> None:
    end = spool.write_end(str(tmp_path), {}, step_span(0))
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}", STEP_TRACER_EXPORT_DEADLINE="1")
    result = subprocess.run([str(LAUNCHER), "replay", end], env=env, capture_output=True, timeout=60, check=False)
    assert result.returncode == 1
    assert b"0 span(s) exported, 1 not" in result.stderr
    assert b"step's result" not in result.stderr

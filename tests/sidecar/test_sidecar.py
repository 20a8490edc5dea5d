"""The sidecar process against real OTLP receivers: shipping, enrichment, outages, drain, readiness, install."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from step_tracer.otlp import json_codec
from step_tracer.sidecar.ready import ready_main
from tests.otlp_receiver import Blackhole, GrpcReceiver, HttpReceiver, ReceivedSpan, free_port
from tests.sidecar.test_sidecar_pod import (
    SIDECAR,
    Forwarder,
    Pod,
    Sidecar,
    as_uid,
    needs_uids,
    shared_root,
    step_span,
    write_step,
)


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    return Pod(tmp_path)


def http_env(pod: Pod, receiver: HttpReceiver | Blackhole, **extra: str) -> dict[str, str]:
    return pod.env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, **extra)


def by_index(spans: list[ReceivedSpan]) -> dict[int, ReceivedSpan]:
    return {int(str(span.attributes["tekton.step.index"])): span for span in spans}


def test_finished_steps_are_shipped_enriched_and_deleted(pod: Pod, http_receiver: HttpReceiver) -> None:
    steps = '[{"name":"build","image":"registry/build:1","onError":"continue"},{"name":"test","image":"registry/t:2"}]'
    env = http_env(pod, http_receiver, K8S_NODE_NAME="node-7", STEP_TRACER_STEPS=steps)
    pod.spool.mkdir()
    written = [step_span(0, name="build", exit_code=3), step_span(1, name="test")]
    for span in written:
        write_step(pod, span)
    with Sidecar(pod, env) as sidecar:
        sidecar.wait_ready()
        received = http_receiver.wait_for_spans(2)
        pod.wait_empty()
        assert sidecar.stop()[0] == 0
    assert len(http_receiver.spans) == 2
    got = by_index(received)
    for original in written:
        shipped = got[int(str(original.attributes["tekton.step.index"]))]
        assert (shipped.trace_id, shipped.span_id, shipped.parent_span_id) == (original.trace_id, original.span_id, "")
        assert (shipped.start_ns, shipped.end_ns, shipped.name) == (original.start_ns, original.end_ns, original.name)
        assert shipped.resource["k8s.node.name"] == "node-7"
        assert shipped.resource["k8s.container.name"] == f"step-{original.name}"
        assert shipped.resource["service.name"] == "step-tracer"
        assert shipped.scope_name == "step-tracer"
    assert got[0].attributes["tekton.step.image"] == "registry/build:1"
    assert got[0].attributes["tekton.step.on_error"] == "continue"
    assert (got[0].status_code, got[0].status_message) == (2, "exit code 3")
    assert got[0].attributes["error.type"] == "exit_code_3"
    assert got[1].attributes["tekton.step.image"] == "registry/t:2"
    assert "tekton.step.on_error" not in got[1].attributes


def test_unsampled_steps_are_deleted_unshipped(pod: Pod, http_receiver: HttpReceiver) -> None:
    pod.spool.mkdir()
    unsampled = step_span(0, name="quiet")
    unsampled.trace_flags = 0
    write_step(pod, unsampled)
    write_step(pod, step_span(1, name="loud"))
    with Sidecar(pod, http_env(pod, http_receiver)) as sidecar:
        sidecar.wait_ready()
        pod.wait_empty()
        assert sidecar.stop()[0] == 0
    assert [s.name for s in http_receiver.spans] == ["loud"]


def test_grpc_protocol(pod: Pod, grpc_receiver: GrpcReceiver) -> None:
    env = pod.env(OTEL_EXPORTER_OTLP_ENDPOINT=grpc_receiver.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    with Sidecar(pod, env) as sidecar:
        sidecar.wait_ready()
        span = step_span(0)
        write_step(pod, span)
        assert [s.span_id for s in grpc_receiver.wait_for_spans(1)] == [span.span_id]
        pod.wait_empty()
        assert sidecar.stop()[0] == 0
    assert grpc_receiver.requests[0].transport == "grpc"


@pytest.mark.parametrize("inotify", ["1", "0"])
def test_records_written_while_running_are_shipped_one_by_one(
    pod: Pod, http_receiver: HttpReceiver, inotify: str
) -> None:
    env = http_env(pod, http_receiver, STEP_TRACER_SIDECAR_INOTIFY=inotify)
    with Sidecar(pod, env) as sidecar:
        sidecar.wait_ready()
        sidecar.wait_for_stderr("exporting to")
        assert ("watching" if inotify == "1" else "polling") in sidecar.stderr
        count = 5 if inotify == "1" else 2  # polling waits up to a second per record
        for index in range(count):
            span = step_span(index)
            write_step(pod, span, end=False)
            write_step(pod, span, start=False)
            assert http_receiver.wait_for_spans(index + 1)[-1].span_id == span.span_id
        pod.wait_empty()
        assert sidecar.stop()[0] == 0
    assert len(http_receiver.spans) == count


def test_an_idle_sidecar_does_not_spin(pod: Pod, http_receiver: HttpReceiver) -> None:
    with Sidecar(pod, http_env(pod, http_receiver)) as sidecar:
        sidecar.wait_ready()
        write_step(pod, step_span(0))
        http_receiver.wait_for_spans(1)
        pod.wait_empty()
        before = sidecar.cpu_seconds()
        time.sleep(3)
        used = sidecar.cpu_seconds() - before
        assert used < 0.3, f"{used:.2f}s of CPU in 3s idle"
        assert sidecar.stop()[0] == 0


def test_collector_down_then_up_loses_nothing_and_ships_nothing_twice(pod: Pod, http_receiver: HttpReceiver) -> None:
    port = free_port()
    env = pod.env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}", OTEL_EXPORTER_OTLP_TIMEOUT="1000")
    written = [step_span(i) for i in range(6)]
    with Sidecar(pod, env) as sidecar:
        sidecar.wait_ready()
        for span in written[:4]:
            write_step(pod, span)
        sidecar.wait_for_stderr("cannot export")
        assert len(pod.records()[1]) == 4  # nothing deleted while the collector is down
        forwarder = Forwarder(port, http_receiver.port)
        try:
            http_receiver.wait_for_spans(4, timeout=30)
            for span in written[4:]:
                write_step(pod, span)
            http_receiver.wait_for_spans(6, timeout=30)
            pod.wait_empty()
            code, _ = sidecar.stop()
        finally:
            forwarder.close()
    assert code == 0
    assert sorted(s.span_id for s in http_receiver.spans) == sorted(s.span_id for s in written)
    assert "works again" in sidecar.stderr
    assert sidecar.stderr.count("cannot export") == 1


def test_503s_are_retried_without_duplicates(pod: Pod, http_receiver: HttpReceiver) -> None:
    http_receiver.set_mode("unavailable", count=3)
    env = http_env(pod, http_receiver, OTEL_EXPORTER_OTLP_TIMEOUT="500")
    pod.spool.mkdir()
    written = [step_span(i) for i in range(3)]
    for span in written:
        write_step(pod, span)
    with Sidecar(pod, env) as sidecar:
        http_receiver.wait_for_spans(3, timeout=30)
        pod.wait_empty()
        assert sidecar.stop()[0] == 0
    assert sorted(s.span_id for s in http_receiver.spans) == sorted(s.span_id for s in written)
    assert [r.outcome for r in http_receiver.requests][:3] == ["unavailable"] * 3


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_the_spool_before_exiting(pod: Pod, http_receiver: HttpReceiver, signum: int) -> None:
    """Spans that could not be shipped before the signal are shipped during the drain, then exit 0."""
    http_receiver.set_mode("unavailable")
    env = http_env(pod, http_receiver, OTEL_EXPORTER_OTLP_TIMEOUT="300", STEP_TRACER_DRAIN_DEADLINE="20")
    written = [step_span(i) for i in range(4)]
    with Sidecar(pod, env) as sidecar:
        sidecar.wait_ready()
        for span in written:
            write_step(pod, span)
        http_receiver.wait_for_requests(1)
        sidecar.proc.send_signal(signum)
        time.sleep(0.5)
        assert sidecar.proc.poll() is None  # still trying: the collector refuses
        http_receiver.set_mode("ok")
        assert sidecar.proc.wait(30) == 0
    assert sorted(s.span_id for s in http_receiver.spans) == sorted(s.span_id for s in written)
    assert pod.records() == (set(), set())
    assert "shipped 4 span(s)" in sidecar.stderr


@pytest.mark.parametrize("collector", ["hang", "blackhole"])
def test_a_hanging_collector_cannot_hold_the_drain_past_its_deadline(
    pod: Pod, http_receiver: HttpReceiver, blackhole: Blackhole, collector: str
) -> None:
    target: HttpReceiver | Blackhole = blackhole if collector == "blackhole" else http_receiver
    http_receiver.set_mode("hang")
    env = http_env(pod, target, STEP_TRACER_DRAIN_DEADLINE="2", OTEL_EXPORTER_OTLP_TIMEOUT="60000")
    with Sidecar(pod, env) as sidecar:
        sidecar.wait_ready()
        span = step_span(0)
        write_step(pod, span)
        if collector == "blackhole":
            blackhole.wait_for_connections(1)
        else:
            http_receiver.wait_for_requests(1)
        code, took = sidecar.stop()
    assert code == 0
    assert took < 10, f"drain took {took:.1f}s with a 2s deadline"
    assert "drain deadline (2s) reached: 0 span(s) shipped" in sidecar.stderr
    assert "1 written to stdout as OTLP JSON lines" in sidecar.stderr
    assert [s.span_id for b in json_codec.decode(sidecar.stdout.decode()) for s in b.spans] == [span.span_id]
    assert pod.records() == (set(), set())  # handed to the log pipeline instead


def test_an_exporter_that_cannot_work_keeps_the_records_until_the_drain_writes_them_out(pod: Pod) -> None:
    env = pod.env(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        STEP_TRACER_DRAIN_DEADLINE="1",
        OTEL_EXPORTER_OTLP_TIMEOUT="200",
    )
    with Sidecar(pod, env) as sidecar:
        sidecar.wait_ready()
        span = step_span(0)
        write_step(pod, span)
        sidecar.wait_for_stderr("cannot export")
        assert len(pod.records()[1]) == 1
        assert sidecar.stop()[0] == 0
    assert [s.span_id for b in json_codec.decode(sidecar.stdout.decode()) for s in b.spans] == [span.span_id]


def test_otel_traces_exporter_none_discards(pod: Pod) -> None:
    with Sidecar(pod, pod.env(OTEL_TRACES_EXPORTER="none")) as sidecar:
        sidecar.wait_ready()
        write_step(pod, step_span(0))
        pod.wait_empty()
        assert sidecar.stop()[0] == 0


def test_console_exporter_prints_to_stdout(pod: Pod) -> None:
    span = step_span(0)
    with Sidecar(pod, pod.env(OTEL_TRACES_EXPORTER="console")) as sidecar:
        sidecar.wait_ready()
        write_step(pod, span)
        pod.wait_empty()
        assert sidecar.stop()[0] == 0
    assert span.span_id in sidecar.stdout.decode()


def test_bad_step_list_costs_one_line_not_the_spans(pod: Pod, http_receiver: HttpReceiver) -> None:
    with Sidecar(pod, http_env(pod, http_receiver, STEP_TRACER_STEPS="{not json")) as sidecar:
        sidecar.wait_ready()
        write_step(pod, step_span(0))
        assert "tekton.step.image" not in http_receiver.wait_for_spans(1)[0].attributes
        assert sidecar.stop()[0] == 0
    assert sidecar.stderr.count("STEP_TRACER_STEPS") == 1


def test_an_unreadable_record_is_set_aside_and_the_rest_shipped(pod: Pod, http_receiver: HttpReceiver) -> None:
    pod.spool.mkdir()
    good = step_span(1)
    write_step(pod, good)
    bad = pod.spool / ("a" * 32 + "-" + "b" * 16 + ".end")
    bad.write_text("{broken\n")
    with Sidecar(pod, http_env(pod, http_receiver)) as sidecar:
        assert http_receiver.wait_for_spans(1)[0].span_id == good.span_id
        pod.wait_empty()
        assert sidecar.stop()[0] == 0
    assert (pod.spool / f".{bad.name}.bad").exists()
    assert sidecar.stderr.count("refused record") == 1
    assert "1 record(s) refused" in sidecar.stderr


# -- readiness -----------------------------------------------------------------------------------------------


def test_readiness_follows_the_ready_file(pod: Pod, http_receiver: HttpReceiver) -> None:
    probe = [*SIDECAR, "--ready", "--spool", str(pod.spool)]
    assert ready_main(["--ready", "--spool", str(pod.spool)]) == 1
    assert subprocess.run(probe, env=pod.env(), timeout=60).returncode == 1
    with Sidecar(pod, http_env(pod, http_receiver)) as sidecar:
        sidecar.wait_ready()
        assert stat.S_IMODE(pod.spool.stat().st_mode) == 0o1777  # sticky: the sidecar may set it here
        assert ready_main(["--ready", "--spool", str(pod.spool)]) == 0
        assert ready_main(["--ready", f"--spool={pod.spool}"]) == 0
        assert subprocess.run(probe, env=pod.env(), timeout=60).returncode == 0
        assert sidecar.stop()[0] == 0


def test_readiness_reads_the_spool_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEP_TRACER_SPOOL", str(tmp_path))
    assert ready_main(["--ready"]) == 1
    (tmp_path / ".ready").write_text("ready\n")
    assert ready_main(["--ready"]) == 0
    assert ready_main(["--ready", "--bogus"]) == 2
    assert ready_main(["--ready", "--spool"]) == 2


# -- wrapper installation ------------------------------------------------------------------------------------


def fake_wrapper(root: Path, version: str) -> Path:
    source = root / f"wrapper-{version}"
    (source / "lib").mkdir(parents=True)
    entry = source / "step-tracer"
    entry.write_text(f"#!/bin/sh\necho wrapper {version}\n")
    entry.chmod(0o755)
    module = source / "lib" / "mod.py"
    module.write_text(f"VERSION = {version!r}\n")
    module.chmod(0o640)
    (source / "lib" / "link.py").symlink_to("mod.py")
    return source


def test_the_wrapper_is_installed_with_modes_and_symlinks_and_reinstalled(
    pod: Pod, http_receiver: HttpReceiver
) -> None:
    for version in ("1", "2"):  # the second run is a restarted sidecar replacing an installed tree
        source = fake_wrapper(pod.root, version)
        args = ("--install-wrapper", str(pod.bin), "--wrapper-source", str(source))
        with Sidecar(pod, http_env(pod, http_receiver), *args) as sidecar:
            sidecar.wait_ready()
            assert sidecar.stop()[0] == 0
        run = subprocess.run([str(pod.bin / "step-tracer")], capture_output=True, text=True, timeout=30)
        assert run.stdout == f"wrapper {version}\n"
        assert stat.S_IMODE((pod.bin / "step-tracer").stat().st_mode) == 0o755
        assert stat.S_IMODE((pod.bin / "lib" / "mod.py").stat().st_mode) == 0o640
        assert os.readlink(pod.bin / "lib" / "link.py") == "mod.py"
        assert (pod.bin / "lib" / "link.py").read_text() == f"VERSION = {version!r}\n"
        assert sorted(os.listdir(pod.bin)) == ["lib", "step-tracer"]  # no staging or old trees left
        assert stat.S_IMODE(pod.bin.stat().st_mode) == 0o755
        (pod.spool / ".ready").unlink()


def test_the_wrapper_source_comes_from_the_environment(pod: Pod, http_receiver: HttpReceiver) -> None:
    source = fake_wrapper(pod.root, "env")
    env = http_env(pod, http_receiver, STEP_TRACER_WRAPPER_SOURCE=str(source))
    with Sidecar(pod, env, "--install-wrapper", str(pod.bin)) as sidecar:
        sidecar.wait_ready()
        assert sidecar.stop()[0] == 0
    assert (pod.bin / "lib" / "mod.py").read_text() == "VERSION = 'env'\n"


def test_a_missing_wrapper_source_is_one_line_and_the_sidecar_still_serves(
    pod: Pod, http_receiver: HttpReceiver
) -> None:
    args = ("--install-wrapper", str(pod.bin), "--wrapper-source", str(pod.root / "nowhere"))
    with Sidecar(pod, http_env(pod, http_receiver), *args) as sidecar:
        sidecar.wait_ready()
        write_step(pod, step_span(0))
        http_receiver.wait_for_spans(1)
        assert sidecar.stop()[0] == 0
    lines = [line for line in sidecar.stderr.splitlines() if "install" in line]
    assert len(lines) == 1 and str(pod.root / "nowhere") in lines[0], sidecar.stderr


@pytest.mark.root
@needs_uids
def test_a_non_root_sidecar_ships_and_deletes_what_another_uid_wrote(http_receiver: HttpReceiver) -> None:
    """The pod's usual shape: root-owned 0777 emptyDir, steps as one UID, the sidecar as another."""
    with shared_root("step-tracer-sidecar-") as base:
        pod = Pod(base)
        pod.spool.mkdir(mode=0o777)
        pod.spool.chmod(0o777)
        span = step_span(0)
        write = (
            "import sys; from pathlib import Path; "
            "from tests.sidecar.test_sidecar_pod import Pod, step_span, write_step; "
            f"s = step_span(0); s.span_id = {span.span_id!r}; write_step(Pod(Path(sys.argv[1])), s)"
        )
        env = {**http_env(pod, http_receiver), "PYTHONPATH": str(Path(__file__).parents[2])}
        subprocess.run(as_uid(12345, sys.executable, "-c", write, str(base)), env=env, check=True, timeout=60, cwd="/")
        assert {p.stat().st_uid for p in pod.spool.iterdir()} == {12345}
        proc = subprocess.Popen(
            as_uid(23456, *SIDECAR, "--spool", str(pod.spool)), env=env, cwd="/", stderr=subprocess.PIPE
        )
        try:
            assert [s.span_id for s in http_receiver.wait_for_spans(1, timeout=30)] == [span.span_id]
            pod.wait_empty()
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert b"cannot" not in err, err
        assert (pod.spool / ".ready").stat().st_uid == 23456

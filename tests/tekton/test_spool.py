"""The spool records steps write and the sidecar reads: names, content, atomicity, modes, other UIDs."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from step_tracer.span import STATUS_ERROR, Event, Span
from step_tracer.tekton import spool

RESOURCE = {"service.name": "step-tracer", "k8s.pod.name": "pod-1", "k8s.container.name": "step-build"}


def make_span(index: int = 0, *, end: bool = True) -> Span:
    start = time.time_ns()
    return Span(
        f"step-{index}",
        os.urandom(16).hex(),
        os.urandom(8).hex(),
        os.urandom(8).hex(),
        trace_state="vendor=1",
        start_ns=start,
        end_ns=start + 1_000_000 if end else 0,
        attributes={"tekton.step.index": index, "tekton.step.timeout": 2.5, "argv": ["a", "b"], "ok": True},
        events=[Event("signal.forwarded", start + 10, {"signal": "SIGTERM"})],
        status_code=STATUS_ERROR if end else 0,
        status_message="exit code 3" if end else "",
    )


def test_record_names_pair_start_and_end() -> None:
    assert spool.record_names("a" * 32, "b" * 16) == (
        "a" * 32 + "-" + "b" * 16 + ".start",
        "a" * 32 + "-" + "b" * 16 + ".end",
    )


def test_records_round_trip_through_the_reader(tmp_path: Path) -> None:
    span = make_span(3)
    start_path = spool.write_start(str(tmp_path), RESOURCE, make_copy(span, end_ns=0))
    end_path = spool.write_end(str(tmp_path), RESOURCE, span)
    assert (Path(start_path).name, Path(end_path).name) == spool.record_names(span.trace_id, span.span_id)
    text = Path(end_path).read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    resource, back = spool.read_record(end_path)
    assert resource == RESOURCE
    for slot in ("name", "trace_id", "span_id", "parent_span_id", "trace_state", "start_ns", "end_ns", "status_code"):
        assert getattr(back, slot) == getattr(span, slot), slot
    assert back.status_message == "exit code 3"
    assert back.attributes == span.attributes
    assert [(e.name, e.time_ns, e.attributes) for e in back.events] == [
        ("signal.forwarded", span.start_ns + 10, {"signal": "SIGTERM"})
    ]
    _, started = spool.read_record(start_path)
    assert started.end_ns == 0
    assert spool.list_records(str(tmp_path)) == (
        {f"{span.trace_id}-{span.span_id}"},
        {f"{span.trace_id}-{span.span_id}"},
    )


def make_copy(span: Span, *, end_ns: int) -> Span:
    return Span(
        span.name,
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        trace_state=span.trace_state,
        start_ns=span.start_ns,
        end_ns=end_ns,
        attributes=dict(span.attributes),
    )


def test_files_are_0644_whatever_the_umask_and_no_temporary_file_remains(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path = spool.write_end(str(tmp_path), RESOURCE, make_span())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(tmp_path) == [Path(path).name]


def test_a_stale_temporary_file_of_the_same_pid_is_replaced(tmp_path: Path) -> None:
    span = make_span()
    name = spool.record_names(span.trace_id, span.span_id)[1]
    stale = tmp_path / f".{name}.{os.getpid()}.tmp"
    stale.write_text("half a record")
    path = spool.write_end(str(tmp_path), RESOURCE, span)
    assert spool.read_record(path)[1].span_id == span.span_id
    assert not stale.exists()


def test_a_failed_write_raises_oserror_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        spool.write_end(str(tmp_path / "missing"), RESOURCE, make_span())
    span = make_span()
    blocker = tmp_path / spool.record_names(span.trace_id, span.span_id)[1]
    blocker.mkdir()  # the rename onto it fails after the temporary file was written
    (blocker / "x").write_text("x")
    with pytest.raises(OSError):
        spool.write_end(str(tmp_path), RESOURCE, span)
    assert sorted(os.listdir(tmp_path)) == [blocker.name]


def test_readers_never_see_a_partial_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race made certain instead of hoped for: the writer's every write is cut to 4 KiB, and between any two
    pieces a reader lists the spool. A record that is listed must parse whole, at every one of those moments."""
    big = make_span()
    big.attributes["blob"] = "x" * 50_000
    real_write = os.write
    moments: list[tuple[int, int]] = []  # (records listed, bytes written so far) at each cut

    def cut_write(fd: int, data: bytes | memoryview) -> int:
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
            return real_write(fd, data)
        written = real_write(fd, bytes(data[:4096]))
        _, ends = spool.list_records(str(tmp_path))
        for key in ends:
            spool.read_record(spool.record_path(str(tmp_path), key, spool.END))  # ValueError if partial
        moments.append((len(ends), os.fstat(fd).st_size))
        return written

    monkeypatch.setattr(os, "write", cut_write)  # the module spool writes through
    spool.write_end(str(tmp_path), RESOURCE, big)
    monkeypatch.undo()
    assert len(moments) > 10, "the write was not cut: the reader saw no in-between state"
    assert [listed for listed, _ in moments] == [0] * len(moments)  # nothing listed before the rename
    assert [span.attributes["blob"] for _, span in [spool.read_record(str(p)) for p in tmp_path.iterdir()]] == [
        big.attributes["blob"]
    ]


def test_listing_ignores_temporary_hidden_and_foreign_files(tmp_path: Path) -> None:
    span = make_span()
    spool.write_end(str(tmp_path), RESOURCE, span)
    name = spool.record_names(span.trace_id, span.span_id)[1]
    for other in (
        f".{name}.12.tmp",
        f".{name}.bad",
        ".ready",
        "taskrun-context.json",
        "not-a-record.end",
        "A" * 32 + "-" + "b" * 16 + ".end",  # ids are lowercase hex
        "a" * 32 + "-" + "b" * 15 + ".start",
    ):
        (tmp_path / other).write_text("x")
    assert spool.list_records(str(tmp_path)) == (set(), {f"{span.trace_id}-{span.span_id}"})


def test_parse_record_rejects_anything_but_one_span() -> None:
    with pytest.raises(ValueError):
        spool.parse_record("not json")
    with pytest.raises(ValueError):
        spool.parse_record('{"resourceSpans":[]}')
    from step_tracer.otlp import json_codec
    from step_tracer.span import Batch

    two = json_codec.encode([Batch(RESOURCE, [make_span(), make_span(1)])])
    with pytest.raises(ValueError, match="exactly one span"):
        spool.parse_record(two)


def test_writing_records_keeps_to_the_hot_path_imports(tmp_path: Path) -> None:
    """The wrapper writes two records per Tekton step; that must not pull in what the brief bans there."""
    code = (
        f"import sys, os, time; sys.path.insert(0, {str(Path(__file__).parents[2])!r}); before = set(sys.modules)\n"
        "from step_tracer.span import Span\nfrom step_tracer.tekton import spool\n"
        "s = Span('s', os.urandom(16).hex(), os.urandom(8).hex(), start_ns=time.time_ns())\n"
        "spool.write_start(sys.argv[1], {'service.name': 'x'}, s); s.end_ns = s.start_ns + 1\n"
        "spool.write_end(sys.argv[1], {'service.name': 'x'}, s)\n"
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    modules = set(loaded.stdout.split())
    forbidden = {"re", "typing", "json", "enum", "dataclasses", "logging", "subprocess", "threading", "signal"}
    assert not modules & forbidden, modules & forbidden
    assert not any(m.startswith(("opentelemetry", "google", "grpc")) for m in modules), modules
    assert len(spool.list_records(str(tmp_path))[1]) == 1


SETPRIV = shutil.which("setpriv")


def as_uid(uid: int, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert SETPRIV is not None
    return subprocess.run(
        [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv to switch UIDs")
def test_records_written_by_one_uid_are_read_and_deleted_by_another() -> None:
    """Steps run as arbitrary UIDs and the sidecar as another: 0777 directory, 0666 files, no sticky bit."""
    # Under /tmp directly: pytest's own temporary directories are 0700, closed to other UIDs.
    base = Path(tempfile.mkdtemp(prefix="step-tracer-spool-"))
    base.chmod(0o755)
    try:
        check_other_uids(base / "spool")
    finally:
        shutil.rmtree(base)


def check_other_uids(directory: Path) -> None:
    directory.mkdir(mode=0o777)
    directory.chmod(0o777)
    write = (
        "import os, sys, time; os.umask(0o077); from step_tracer.span import Span; "
        "from step_tracer.tekton import spool; "
        "s = Span('step', os.urandom(16).hex(), os.urandom(8).hex(), start_ns=time.time_ns()); "
        "print(spool.write_start(sys.argv[1], {'service.name': 'x'}, s))"
    )
    written = as_uid(12345, write, str(directory))
    assert written.returncode == 0, written.stderr
    path = Path(written.stdout.strip())
    info = path.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (12345, 0o644)
    read_and_delete = (
        "import os, sys; from step_tracer.tekton import spool; "
        "print(spool.read_record(sys.argv[1])[1].name); os.unlink(sys.argv[1])"
    )
    other = as_uid(23456, read_and_delete, str(path))
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == "step"
    assert not path.exists()

"""`step-tracer show` against real OTLP JSON lines files written with the project's own encoder."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from step_tracer.otlp.json_codec import encode
from step_tracer.show import (
    PLAIN_WIDTH,
    TREE,
    dedupe,
    format_bytes,
    format_cpu,
    format_duration,
    group_traces,
    read_spans,
    show,
    terminal_width,
    use_color,
)
from step_tracer.span import STATUS_ERROR, STATUS_OK, STATUS_UNSET, Batch, Span

if TYPE_CHECKING:
    from step_tracer.span import Attributes

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
S = 1_000_000_000
MIB = 1024 * 1024

TRACE_A = "aaaa0000000000000000000000000001"
TRACE_B = "bbbb0000000000000000000000000002"
TRACE_C = "cccc0000000000000000000000000003"


def span(
    name: str,
    trace_id: str,
    span_id: str,
    parent: str = "",
    *,
    start: int = 0,
    duration: int = S,
    attributes: Attributes | None = None,
    status: int = STATUS_UNSET,
    flags: int = 1,
    finished: bool = True,
) -> Span:
    return Span(
        name,
        trace_id,
        span_id.ljust(16, "0"),
        parent.ljust(16, "0") if parent else "",
        start_ns=T0 + start,
        end_ns=T0 + start + duration if finished else 0,
        attributes=attributes,
        status_code=status,
        trace_flags=flags,
    )


def write_lines(path: Path, *lines: list[Span] | str) -> Path:
    """Each argument is one request line: a list of spans to encode, or raw text."""
    text = [line if isinstance(line, str) else encode([Batch({"service.name": "t"}, line)]) for line in lines]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def run_show(
    path: Path, *, trace_id: str | None = None, last: int | None = None, color: bool = False, view: str = TREE
) -> tuple[int, str, str]:
    """The tree view unless asked: most tests here are about structure and fields, which it prints in full."""
    out, err = io.StringIO(), io.StringIO()
    code = show(str(path), trace_id=trace_id, last=last, out=out, color=color, err=err, view=view)
    return code, out.getvalue(), err.getvalue()


def trace_blocks(text: str) -> list[list[str]]:
    return [block.splitlines() for block in text.strip("\n").split("\n\n")]


def drawing_and_name(line: str) -> str:
    match = re.match(r"[│├└─ ]*\S+", line)
    assert match, line
    return match.group()


# --- exact rendering of a small case ---------------------------------------------------------


def test_small_trace_renders_exactly(tmp_path: Path) -> None:
    root = span(
        "build",
        TRACE_A,
        "01",
        start=0,
        duration=12_300 * MS,
        attributes={"cicd.pipeline.task.run.result": "failure"},
    )
    clone = span(
        "git-clone",
        TRACE_A,
        "02",
        "01",
        start=10 * MS,
        duration=850 * MS,
        attributes={
            "cicd.pipeline.task.run.result": "success",
            "process.exit.code": 0,
            "process.cpu.time.user": 1.0,
            "process.cpu.time.system": 0.23,
            "process.memory.peak": 210 * MIB,
            "process.pid": 4242,
        },
    )
    fetch = span("fetch", TRACE_A, "03", "02", start=20 * MS, duration=400 * MS, status=STATUS_OK)
    compile_ = span(
        "compile",
        TRACE_A,
        "04",
        "01",
        start=900 * MS,
        duration=245 * S,
        attributes={
            "cicd.pipeline.task.run.result": "failure",
            "process.exit.code": 137,
            "error.type": "SIGKILL",
            "process.memory.peak": 1536 * MIB,
            "container.memory.peak": 2 * 1024 * MIB,
            "container.memory.oom_kills": 1,
        },
        status=STATUS_ERROR,
    )
    orphan = span("late-step", TRACE_A, "05", "ff", start=2 * S, duration=3 * S)
    # File order differs from start order: the tree must follow start times and parents.
    path = write_lines(tmp_path / "spans.jsonl", [compile_, orphan], [fetch, root, clone])

    code, out, err = run_show(path)

    assert (code, err) == (0, "")
    assert out == (
        f"trace {TRACE_A}  5 spans  4m06s\n"
        "build  12.3s  failure\n"
        "├─ git-clone  850ms  success  exit=0  cpu=1.23s  mem=210MiB\n"
        "│  └─ fetch  400ms  ok\n"
        "└─ compile  4m05s  failure  exit=137  error=SIGKILL  mem=1.5GiB  ctr=2.0GiB  oom=1\n"
        "late-step  3.0s  (parent ff000000 not in file)\n"
    )


def test_color_only_when_asked(tmp_path: Path) -> None:
    spans = [
        span("good", TRACE_A, "01", attributes={"cicd.pipeline.task.run.result": "success"}),
        span("bad", TRACE_A, "02", start=S, attributes={"cicd.pipeline.task.run.result": "failure"}),
        span("skipped", TRACE_A, "03", start=2 * S, attributes={"cicd.pipeline.task.run.result": "skip"}),
    ]
    path = write_lines(tmp_path / "spans.jsonl", spans)

    _, plain, _ = run_show(path, color=False)
    _, colored, _ = run_show(path, color=True)

    assert "\x1b" not in plain
    assert "\x1b[32msuccess\x1b[0m" in colored
    assert "\x1b[31mfailure\x1b[0m" in colored
    assert "\x1b[33mskip\x1b[0m" in colored


# --- structure ------------------------------------------------------------------------------


def test_traces_ordered_by_earliest_start_and_children_by_start(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "spans.jsonl",
        [span("b-root", TRACE_B, "b1", start=5 * S), span("c-root", TRACE_C, "c1", start=9 * S)],
        [
            span("a-second", TRACE_A, "a3", "a1", start=3 * S),
            span("a-root", TRACE_A, "a1", start=1 * S, duration=10 * S),
            span("a-first", TRACE_A, "a2", "a1", start=2 * S),
        ],
    )

    code, out, _ = run_show(path)

    blocks = trace_blocks(out)
    assert code == 0
    assert [b[0].split()[1] for b in blocks] == [TRACE_A, TRACE_B, TRACE_C]
    assert [drawing_and_name(line) for line in blocks[0][1:]] == ["a-root", "├─ a-first", "└─ a-second"]


def test_deep_nesting_draws_continuation_bars(tmp_path: Path) -> None:
    spans = [
        span("root", TRACE_A, "01", duration=10 * S),
        span("a", TRACE_A, "02", "01", start=1),
        span("a1", TRACE_A, "03", "02", start=2),
        span("a1x", TRACE_A, "04", "03", start=3),
        span("b", TRACE_A, "05", "01", start=4),
        span("b1", TRACE_A, "06", "05", start=5),
    ]
    path = write_lines(tmp_path / "spans.jsonl", spans)

    _, out, _ = run_show(path)

    assert [drawing_and_name(line) for line in out.splitlines()[1:]] == [
        "root",
        "├─ a",
        "│  └─ a1",
        "│     └─ a1x",
        "└─ b",
        "   └─ b1",
    ]


def test_header_counts_spans_and_wall_time_spans_first_start_to_last_end(tmp_path: Path) -> None:
    spans = [
        span("root", TRACE_A, "01", start=0, duration=2 * S),
        span("straggler", TRACE_A, "02", "01", start=S, duration=9 * S),
    ]
    path = write_lines(tmp_path / "spans.jsonl", spans)

    _, out, _ = run_show(path)

    assert out.splitlines()[0] == f"trace {TRACE_A}  2 spans  10.0s"


def test_missing_parent_spans_become_roots_of_their_trace(tmp_path: Path) -> None:
    spans = [
        span("orphan-1", TRACE_A, "01", "dead0001", start=0),
        span("child", TRACE_A, "02", "01", start=1),
        span("orphan-2", TRACE_A, "03", "dead0002", start=2),
    ]
    path = write_lines(tmp_path / "spans.jsonl", spans)

    _, out, _ = run_show(path)

    lines = out.splitlines()
    assert len(trace_blocks(out)) == 1
    assert lines[1].startswith("orphan-1") and lines[1].endswith("(parent dead0001 not in file)")
    assert lines[2].startswith("└─ child") and "not in file" not in lines[2]
    assert lines[3].startswith("orphan-2") and lines[3].endswith("(parent dead0002 not in file)")


def test_parent_cycle_is_shown_after_the_real_roots_every_span_once(tmp_path: Path) -> None:
    spans = [
        span("loop-a", TRACE_A, "01", "02", start=0),
        span("loop-b", TRACE_A, "02", "01", start=1),
        span("self", TRACE_A, "03", "03", start=2),
    ]
    path = write_lines(tmp_path / "spans.jsonl", spans)

    code, out, _ = run_show(path)

    assert code == 0
    assert [drawing_and_name(line) for line in out.splitlines()[1:]] == ["self", "loop-a", "└─ loop-b"]


def test_unsampled_spans_are_shown_like_any_other(tmp_path: Path) -> None:
    spans = [span("sampled", TRACE_A, "01"), span("unsampled", TRACE_B, "02", start=S, flags=0)]
    path = write_lines(tmp_path / "spans.jsonl", spans)

    _, out, _ = run_show(path)

    assert [b[1].split()[0] for b in trace_blocks(out)] == ["sampled", "unsampled"]


def test_duplicate_span_shown_once_preferring_the_finished_record(tmp_path: Path) -> None:
    started = span("step", TRACE_A, "01", duration=7 * S, finished=False)
    finished = span("step", TRACE_A, "01", duration=7 * S, attributes={"process.exit.code": 3})
    for order in ([started], [finished], [finished]), ([finished], [started]):
        path = write_lines(tmp_path / "spans.jsonl", *order)

        _, out, _ = run_show(path)

        assert out == f"trace {TRACE_A}  1 span  7.0s\nstep  7.0s  exit=3\n"


def test_unfinished_span_says_so(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "spans.jsonl", [span("step", TRACE_A, "01", finished=False)])

    _, out, _ = run_show(path)

    assert out == f"trace {TRACE_A}  1 span  unfinished\nstep  unfinished\n"


def test_same_span_id_in_different_traces_is_not_a_duplicate(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "spans.jsonl", [span("x", TRACE_A, "01"), span("y", TRACE_B, "01")])

    assert len(dedupe(read_spans(path.read_text().splitlines())[0])) == 2


# --- fields ---------------------------------------------------------------------------------


def one_span_line(tmp_path: Path, **kwargs: object) -> str:
    path = write_lines(tmp_path / "spans.jsonl", [span("step", TRACE_A, "01", **kwargs)])  # type: ignore[arg-type]
    _, out, _ = run_show(path)
    return out.splitlines()[1]


def test_result_falls_back_to_status(tmp_path: Path) -> None:
    assert one_span_line(tmp_path, status=STATUS_OK) == "step  1.0s  ok"
    assert one_span_line(tmp_path, status=STATUS_ERROR) == "step  1.0s  error"
    assert one_span_line(tmp_path, status=STATUS_UNSET) == "step  1.0s"
    result = {"cicd.pipeline.task.run.result": "timeout"}
    assert one_span_line(tmp_path, status=STATUS_ERROR, attributes=result) == "step  1.0s  timeout"


def test_unknown_attributes_and_zero_oom_kills_are_omitted(tmp_path: Path) -> None:
    attributes: Attributes = {
        "process.command_args": ["make", "SECRET=hunter2"],
        "k8s.pod.name": "pod-1",
        "container.memory.oom_kills": 0,
    }
    assert one_span_line(tmp_path, attributes=attributes) == "step  1.0s"


def test_cpu_sums_whatever_times_are_present(tmp_path: Path) -> None:
    assert one_span_line(tmp_path, attributes={"process.cpu.time.system": 0.5}) == "step  1.0s  cpu=0.50s"
    both: Attributes = {"process.cpu.time.user": 70, "process.cpu.time.system": 5.0}
    assert one_span_line(tmp_path, attributes=both) == "step  1.0s  cpu=1m15s"


def test_non_numeric_resource_attributes_are_ignored(tmp_path: Path) -> None:
    attributes: Attributes = {"process.memory.peak": "lots", "process.cpu.time.user": True}
    assert one_span_line(tmp_path, attributes=attributes) == "step  1.0s"


def test_control_characters_in_names_are_escaped(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "spans.jsonl", [span("evil\n\x1b[2Jname", TRACE_A, "01")])

    _, out, _ = run_show(path, color=True)

    assert "\x1b[2J" not in out
    assert out.splitlines()[1] == "evil\\n\\x1b[2Jname  1.0s"


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0ms"),
        (850 * MS, "850ms"),
        (999_600_000, "1.0s"),
        (12_340 * MS, "12.3s"),
        (59_960 * MS, "1m00s"),
        (245 * S, "4m05s"),
        (3599_600 * MS, "1h00m"),
        (3720 * S, "1h02m"),
        (26 * 3600 * S, "26h00m"),
        (-5 * S, "0ms"),
    ],
)
def test_format_duration(ns: int, text: str) -> None:
    assert format_duration(ns) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (512, "512B"),
        (1536, "1.5KiB"),
        (210 * MIB, "210MiB"),
        (MIB - 1, "1.0MiB"),
        (1.5 * 1024 * MIB, "1.5GiB"),
    ],
)
def test_format_bytes(size: float, text: str) -> None:
    assert format_bytes(size) == text


def test_format_cpu() -> None:
    assert [format_cpu(s) for s in (0.0, 1.234, 59.994, 59.996, 125.0)] == [
        "0.00s",
        "1.23s",
        "59.99s",
        "1m00s",
        "2m05s",
    ]


# --- selecting traces -----------------------------------------------------------------------


@pytest.fixture
def three_traces(tmp_path: Path) -> Path:
    return write_lines(
        tmp_path / "spans.jsonl",
        [span("c", TRACE_C, "03", start=30 * S)],
        [span("a", TRACE_A, "01", start=10 * S)],
        [span("b", TRACE_B, "02", start=20 * S)],
    )


def test_trace_filter_accepts_a_prefix_in_any_case(three_traces: Path) -> None:
    code, out, _ = run_show(three_traces, trace_id="BBBB")

    assert code == 0
    assert [b[0].split()[1] for b in trace_blocks(out)] == [TRACE_B]


def test_trace_filter_without_match_or_with_ambiguous_prefix_fails(three_traces: Path) -> None:
    code, out, err = run_show(three_traces, trace_id="dddd")
    assert (code, out) == (1, "")
    assert err == f"step-tracer: no trace matching dddd in {three_traces}\n"

    code, out, err = run_show(three_traces, trace_id="")
    assert (code, out) == (1, "")
    assert "matches 3 traces" in err


def test_last_shows_the_most_recent_traces_oldest_first(three_traces: Path) -> None:
    _, out, _ = run_show(three_traces, last=2)
    assert [b[0].split()[1] for b in trace_blocks(out)] == [TRACE_B, TRACE_C]

    _, out, _ = run_show(three_traces, last=10)
    assert len(trace_blocks(out)) == 3


def test_last_below_one_is_a_usage_error(three_traces: Path) -> None:
    code, out, err = run_show(three_traces, last=0)
    assert (code, out) == (2, "")
    assert err.startswith("step-tracer: --last")


def test_group_traces_orders_by_earliest_span_not_first_written(tmp_path: Path) -> None:
    spans = [span("late", TRACE_A, "01", start=9 * S), span("early", TRACE_B, "02", start=1 * S)]
    spans.append(span("earliest-of-a", TRACE_A, "03", start=0))

    assert [t[0].name for t in group_traces(spans)] == ["earliest-of-a", "early"]


# --- files ----------------------------------------------------------------------------------


def test_malformed_lines_are_skipped_with_one_summary(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "spans.jsonl",
        "{not json",
        [span("kept", TRACE_A, "01")],
        "",
        '{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
        [span("also-kept", TRACE_B, "02", start=S)],
    )

    code, out, err = run_show(path)

    assert code == 0
    assert [b[1].split()[0] for b in trace_blocks(out)] == ["kept", "also-kept"]
    assert err == f"step-tracer: skipped 2 malformed lines in {path}\n"


@pytest.mark.parametrize(
    "data",
    [
        b"hello\n",
        b"\x7fELF\x02\x01\x01\x00\x00\x00\n\x00\x00",
        b'\xff\xfe{"resourceSpans": []}\n',
        b'{"resourceSpans": 5}\n',
    ],
    ids=["text", "binary", "not-utf-8", "other-json"],
)
def test_a_file_without_spans_says_so_in_one_line_and_fails(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(data)

    code, out, err = run_show(path)

    assert (code, out) == (1, "")
    assert err.startswith(f"step-tracer: {path} holds no spans: ") and err.count("\n") == 1, err
    assert "not OTLP JSON" in err and "codec" not in err


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.jsonl"

    code, out, err = run_show(path)

    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert str(path) in err and "step-tracer run" in err


def test_directory_instead_of_file_fails_cleanly(tmp_path: Path) -> None:
    code, out, err = run_show(tmp_path)

    assert (code, out) == (1, "")
    assert err.startswith(f"step-tracer: cannot read {tmp_path}:") and err.count("\n") == 1


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    path.write_text("", encoding="utf-8")

    assert run_show(path) == (0, f"no spans in {path}\n", "")


def test_collector_file_exporter_line(tmp_path: Path) -> None:
    """Shaped like the Collector's `file` exporter output, not our encoder's: other key order, no flags."""
    line = (
        '{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"ci"}}]},'
        '"scopeSpans":[{"scope":{"name":"step-tracer"},"spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C",'
        '"spanId":"EEE19B7EC3C1B174","parentSpanId":"EEE19B7EC3C1B173","name":"unit-tests","kind":1,'
        '"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661500000000",'
        '"attributes":[{"key":"process.exit.code","value":{"intValue":"1"}},'
        '{"key":"process.memory.peak","value":{"intValue":"5242880"}}],'
        '"droppedAttributesCount":0,"status":{"code":2,"message":"exit 1"}}]}],'
        '"schemaUrl":"https://opentelemetry.io/schemas/1.4.0"}]}'
    )
    path = tmp_path / "collector.json"
    path.write_text(line + "\n", encoding="utf-8")

    code, out, err = run_show(path, trace_id="5b8e")

    assert (code, err) == (0, "")
    assert out == (
        "trace 5b8efff798038103d269b633813fc60c  1 span  1.5s\n"
        "unit-tests  1.5s  error  exit=1  mem=5.0MiB  (parent eee19b7e not in file)\n"
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("env", "stream", "expected"),
    [
        ({}, _Terminal(), True),
        ({"NO_COLOR": "1"}, _Terminal(), False),
        ({"NO_COLOR": ""}, _Terminal(), True),  # https://no-color.org: set and not empty
        ({}, io.StringIO(), False),
    ],
)
def test_colour_only_on_a_terminal_and_never_under_no_color(
    env: dict[str, str], stream: io.StringIO, expected: bool
) -> None:
    assert use_color(stream, env) is expected


# --- the waterfall (the default view) -------------------------------------------------------------


GOLDEN_80 = (
    "trace aaaa0000000000000000000000000001  9 spans  1m40s  2 failed steps\n"
    "  step                    result        exit  0s       50.0s   1m40s\n"
    "  PipelineRun:docker-bu…                      ██████████████████████       1m40s\n"
    "  ├─ TaskRun:clone                            ████▋                        20.0s\n"
    "✓ │  └─ clone             success          0  ████▍                        18.0s\n"
    "  ├─ TaskRun:build                                 ███████████████▎        1m10s\n"
    "✓ │  ├─ prepare           success          0       ▏                       500ms\n"
    "✗ │  ├─ build-and-push-…  failure          2       █████████████▌          1m00s\n"
    "… │  └─ sbom                                                     ░░░  unfinished\n"
    "✗ └─ TaskRun:show-summa…  error                                   ██        7.0s\n"
    "○    └─ cancelled         cancellation   143                       ▏         0ms\n"
)


def pipeline_run() -> list[Span]:
    """A PipelineRun as Tekton and step-tracer record it: Tekton's run spans (no result) over the steps' spans."""
    ok, failed = "success", "failure"

    def step(name: str, span_id: str, parent: str, start: int, duration: int, result: str, code: int) -> Span:
        attributes: Attributes = {"cicd.pipeline.task.run.result": result, "process.exit.code": code}
        return span(name, TRACE_A, span_id, parent, start=start, duration=duration, attributes=attributes)

    return [
        span("PipelineRun:docker-build", TRACE_A, "01", start=0, duration=100 * S),
        span("TaskRun:clone", TRACE_A, "02", "01", start=1 * S, duration=20 * S),
        step("clone", "03", "02", 2 * S, 18 * S, ok, 0),
        span("TaskRun:build", TRACE_A, "04", "01", start=22 * S, duration=70 * S),
        step("prepare", "05", "04", 23 * S, 500 * MS, ok, 0),
        step("build-and-push-an-image-with-a-very-long-name", "06", "04", 24 * S, 60 * S, failed, 2),
        span("sbom", TRACE_A, "07", "04", start=85 * S, finished=False),
        span("TaskRun:show-summary", TRACE_A, "08", "01", start=93 * S, duration=7 * S, status=STATUS_ERROR),
        step("cancelled", "09", "08", 94 * S, 0, "cancellation", 143),
    ]


def run_waterfall(path: Path, *, width: int = 80, color: bool = False) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = show(str(path), trace_id=None, last=None, out=out, color=color, err=err, width=width)
    return code, out.getvalue(), err.getvalue()


def test_waterfall_golden_plain(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "spans.jsonl", pipeline_run())

    code, out, err = run_waterfall(path)

    assert (code, err) == (0, "")
    assert out == GOLDEN_80, "\n" + out


def test_waterfall_bars_sit_on_the_traces_time_axis(tmp_path: Path) -> None:
    spans = [
        span("whole", TRACE_A, "01", start=0, duration=8 * S),
        span("first-half", TRACE_A, "02", "01", start=0, duration=4 * S),
        span("second-half", TRACE_A, "03", "01", start=4 * S, duration=4 * S),
        span("last-eighth", TRACE_A, "04", "01", start=7 * S, duration=1 * S),
        span("a-third", TRACE_A, "05", "01", start=0, duration=8 * S // 3),
    ]
    path = write_lines(tmp_path / "spans.jsonl", spans)

    _, out, _ = run_waterfall(path, width=60)

    axis, *rows = out.splitlines()[1:]
    left, width = axis.index("0s"), len(axis) - axis.index("0s")
    names = ("whole", "first-half", "second-half", "last-eighth", "a-third")
    bars = {name: row[left : left + width].rstrip() for row in rows for name in names if f" {name} " in row}
    assert axis.endswith("8.0s") and "4.0s" in axis and max(len(row) for row in rows) == 60
    assert bars["whole"] == "█" * width
    assert bars["first-half"] == "█" * (width // 2)
    assert bars["second-half"] == " " * (width // 2) + "█" * (width - width // 2)
    seven_eighths = round(width * 7 / 8)  # a bar starts at the nearest cell edge
    assert bars["last-eighth"] == " " * seven_eighths + "█" * (width - seven_eighths)
    eighths = round(width * 8 / 3)  # and ends to the eighth of a cell
    assert bars["a-third"] == "█" * (eighths // 8) + " ▏▎▍▌▋▊▉"[eighths % 8].strip()


@pytest.mark.parametrize("width", [60, 67, 80, 101, 132, 200])
def test_waterfall_rows_fit_the_width(tmp_path: Path, width: int) -> None:
    path = write_lines(tmp_path / "spans.jsonl", pipeline_run())

    _, out, _ = run_waterfall(path, width=width)

    lines = out.splitlines()
    assert all(len(line) <= width for line in lines), [len(line) for line in lines]
    assert max(len(line) for line in lines[2:]) == width  # the bars take what the names leave
    assert lines[0] == f"trace {TRACE_A}" if width < 70 else lines[0].startswith(f"trace {TRACE_A}  9 spans")


def test_waterfall_marks_failures_without_colour_and_paints_them_with_it(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "spans.jsonl", pipeline_run())

    _, plain, _ = run_waterfall(path, color=False)
    _, colored, _ = run_waterfall(path, color=True)

    assert "\x1b" not in plain
    failed = [line for line in plain.splitlines() if line.startswith("✗")]
    assert len(failed) == 2 and "build-and-push-…" in failed[0] and "TaskRun:show-summa…" in failed[1]
    red_row = next(line for line in colored.splitlines() if "build-and-push" in line)
    assert (
        red_row.startswith("\x1b[31m✗\x1b[0m") and "\x1b[31mfailure\x1b[0m" in red_row and "  \x1b[31m████" in red_row
    )
    green_row = next(line for line in colored.splitlines() if "prepare" in line)
    assert green_row.startswith("\x1b[32m✓\x1b[0m")
    assert "\x1b[31m2 failed steps\x1b[0m" in colored.splitlines()[0]
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored) == plain


def test_waterfall_notes_parents_outside_the_file(tmp_path: Path) -> None:
    spans = [
        span("clone", TRACE_A, "01", "ff", start=0),
        span("build", TRACE_A, "02", "ff", start=S),
        span("local", TRACE_A, "03", start=2 * S),
    ]
    path = write_lines(tmp_path / "spans.jsonl", spans)

    _, out, _ = run_waterfall(path)

    assert out.splitlines()[-1] == "  ↑ parent ff000000 not in file: clone, build"


def test_waterfall_escapes_control_characters_and_cuts_long_names(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "spans.jsonl", [span("evil\x1b[2J" + "x" * 200, TRACE_A, "01")])

    _, out, _ = run_waterfall(path, color=True)

    assert "\x1b[2J" not in out
    row = out.splitlines()[2]
    assert row.startswith("  evil\\x1b[2Jxxx") and "…" in row and len(row) == 80


def test_waterfall_cuts_overlong_results_and_exit_codes(tmp_path: Path) -> None:
    attributes: Attributes = {"cicd.pipeline.task.run.result": "r" * 300, "process.exit.code": "9" * 300}
    path = write_lines(tmp_path / "spans.jsonl", [span("step", TRACE_A, "01", attributes=attributes)])

    _, out, _ = run_waterfall(path)

    row = out.splitlines()[2]
    assert len(row) == 80 and f"{'r' * 13}…  {'9' * 13}…  " in row


def test_the_tree_view_is_still_there(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "spans.jsonl", pipeline_run())

    _, out, _ = run_show(path, view=TREE)

    assert "├─ TaskRun:build  1m10s\n│  ├─ prepare  500ms  success  exit=0\n" in out


@pytest.mark.parametrize(
    ("env", "stream", "expected"),
    [
        ({"COLUMNS": "123"}, io.StringIO(), 123),
        ({"COLUMNS": "wide"}, io.StringIO(), PLAIN_WIDTH),
        ({}, io.StringIO(), PLAIN_WIDTH),
    ],
)
def test_width_is_columns_else_the_terminal_else_fixed(env: dict[str, str], stream: io.StringIO, expected: int) -> None:
    assert terminal_width(stream, env) == expected


def test_the_command_shows_the_waterfall_by_default_and_the_tree_on_request(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "spans.jsonl", pipeline_run())
    launcher = str(Path(sys.executable).parent / "step-tracer")
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "80"}

    waterfall = subprocess.run([launcher, "show", str(path)], capture_output=True, text=True, env=env, check=True)
    narrow = subprocess.run([launcher, "show", "--width", "60", str(path)], capture_output=True, text=True, env=env)
    tree = subprocess.run([launcher, "show", "--tree", str(path)], capture_output=True, text=True, env=env)

    assert (waterfall.stdout, waterfall.stderr) == (GOLDEN_80, "")
    assert max(len(line) for line in narrow.stdout.splitlines()) == 60
    assert tree.stdout.splitlines()[1] == "PipelineRun:docker-build  1m40s"

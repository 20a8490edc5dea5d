"""`step-tracer show`: print the spans of OTLP JSON lines files, or of one trace in Jaeger, per trace.

So a new user sees what the wrapper recorded without running a collector, and anyone sees a pipeline's steps
without leaving the terminal. The file is the wrapper's file exporter output or the Collector's `file` exporter
output (one ExportTraceServiceRequest per line); both decode with `step_tracer.otlp.json_codec`, as does Jaeger's
api_v3 answer (see `step_tracer.jaeger`). Two views: the waterfall (default: where the time went and what failed,
bars on the trace's own time axis) and the tree (every resource figure of every span).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from step_tracer import jaeger
from step_tracer.otlp import json_codec
from step_tracer.span import STATUS_ERROR, STATUS_OK, Span

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import TextIO

    from step_tracer.span import AttributeValue

RESULT = "cicd.pipeline.task.run.result"
EXIT_CODE = "process.exit.code"
ERROR_TYPE = "error.type"
CPU_USER = "process.cpu.time.user"
CPU_SYSTEM = "process.cpu.time.system"
MEMORY_PEAK = "process.memory.peak"
CONTAINER_MEMORY_PEAK = "container.memory.peak"
OOM_KILLS = "container.memory.oom_kills"

HOW_TO_RECORD = (
    "run a command under `step-tracer run` first (with no collector configured it records there), "
    "or point at a Collector `file` exporter's output"
)

_GREEN, _RED, _YELLOW, _RESET = "\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[0m"
_GOOD_RESULTS = frozenset({"success", "ok"})
_BAD_RESULTS = frozenset({"failure", "error", "timeout"})

# (tree-drawing prefix, span, whether its parent is missing from the file)
TreeRow = tuple[str, Span, bool]


WATERFALL, TREE = "waterfall", "tree"
MIN_WIDTH = 60
PLAIN_WIDTH = 100  # not a terminal (a file, a pipe, CI logs): a fixed width, so the text is the same everywhere


class Layout:
    """How to draw: which view, how wide, whether in colour."""

    __slots__ = ("color", "view", "width")

    def __init__(self, *, color: bool, view: str = WATERFALL, width: int = PLAIN_WIDTH) -> None:
        self.color = color
        self.view = view
        self.width = width


def show(
    path: str,
    *,
    trace_id: str | None,
    last: int | None,
    out: TextIO,
    color: bool,
    err: TextIO | None = None,
    view: str = WATERFALL,
    width: int = PLAIN_WIDTH,
) -> int:
    """Render the traces in `path` to `out`, problems to `err` (stderr by default); returns the exit code."""
    err = err if err is not None else sys.stderr
    layout = Layout(color=color, view=view, width=width)
    if last is not None and last < 1:
        err.write(f"step-tracer: --last must be at least 1, got {last}\n")
        return 2
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            spans, malformed = read_spans(lines)
    except FileNotFoundError:
        err.write(f"step-tracer: no span file at {path}; {HOW_TO_RECORD}\n")
        return 1
    except OSError as error:
        err.write(f"step-tracer: cannot read {path}: {error.strerror or error}\n")
        return 1
    if malformed and not spans:  # binary, another format, or not UTF-8: one line says so
        err.write(f"step-tracer: {path} holds no spans: {_plural(malformed, 'line')} not OTLP JSON ({HOW_TO_RECORD})\n")
        return 1
    code = _render_file(path, spans, trace_id=trace_id, last=last, out=out, err=err, layout=layout)
    if malformed:
        err.write(malformed_summary(malformed, path) + "\n")
    return code


def show_jaeger(
    url: str,
    trace_id: str,
    *,
    out: TextIO,
    color: bool,
    err: TextIO | None = None,
    view: str = WATERFALL,
    width: int = PLAIN_WIDTH,
    timeout: float = jaeger.TIMEOUT,
) -> int:
    """Render one trace read from the Jaeger query service at `url`; a problem is one line on `err`."""
    err = err if err is not None else sys.stderr
    try:
        spans = jaeger.fetch_trace(url, trace_id, timeout=timeout)
    except jaeger.JaegerError as error:
        err.write(f"step-tracer: {error}\n")
        return 1
    source = f"Jaeger at {jaeger.display_url(url)}"
    render_traces(
        group_traces(dedupe(spans)), out=out, layout=Layout(color=color, view=view, width=width), source=source
    )
    return 0


def use_color(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Colour for a terminal, unless NO_COLOR is set to anything but the empty string (https://no-color.org)."""
    if env.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False


def terminal_width(stream: TextIO, env: Mapping[str, str]) -> int:
    """COLUMNS when set (as shells and `shutil` honour it), else the terminal's width, else a fixed plain width.

    Never below MIN_WIDTH: narrower than that a row cannot hold a name, a result and a bar, so it wraps instead.
    """
    columns = env.get("COLUMNS", "")
    width = PLAIN_WIDTH
    if columns.isdigit() and int(columns) > 0:
        width = int(columns)
    else:
        try:
            if stream.isatty():
                width = os.get_terminal_size(stream.fileno()).columns or PLAIN_WIDTH
        except (OSError, ValueError):  # closed, or not a real file descriptor
            pass
    return max(width, MIN_WIDTH)


def _render_file(
    path: str,
    spans: list[Span],
    *,
    trace_id: str | None,
    last: int | None,
    out: TextIO,
    err: TextIO,
    layout: Layout,
) -> int:
    if not spans:
        out.write(f"no spans in {path}\n")
        return 0
    traces = group_traces(dedupe(spans))
    if trace_id is not None:
        traces = matching_traces(traces, trace_id)
        if len(traces) != 1:
            err.write(_trace_mismatch(trace_id, len(traces), path) + "\n")
            return 1
    if last is not None:
        traces = traces[-last:]
    render_traces(traces, out=out, layout=layout, source="file")
    return 0


def render_traces(traces: Sequence[list[Span]], *, out: TextIO, layout: Layout, source: str) -> None:
    """Each trace in the chosen view, a blank line between traces."""
    if layout.view == TREE:
        blocks = [render_trace(t, color=layout.color) for t in traces]
    else:
        blocks = [render_waterfall(t, color=layout.color, width=layout.width, source=source) for t in traces]
    out.write("\n\n".join("\n".join(block) for block in blocks) + "\n")


def _trace_mismatch(trace_id: str, matches: int, path: str) -> str:
    if matches == 0:
        return f"step-tracer: no trace matching {_printable(trace_id)} in {path}"
    return f"step-tracer: {_printable(trace_id)} matches {matches} traces in {path}; give more digits"


def malformed_summary(count: int, path: str) -> str:
    return f"step-tracer: skipped {_plural(count, 'malformed line')} in {path}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def read_spans(lines: Iterable[str]) -> tuple[list[Span], int]:
    """Every span in the lines, in file order, and how many non-blank lines did not decode."""
    spans: list[Span] = []
    malformed = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            batches = json_codec.decode(line)
        except (ValueError, RecursionError):
            malformed += 1
            continue
        for batch in batches:
            spans.extend(batch.spans)
    return spans, malformed


def dedupe(spans: Iterable[Span]) -> list[Span]:
    """One record per (trace, span) id: a finished record beats a write-ahead one; otherwise the last wins."""
    kept: dict[tuple[str, str], Span] = {}
    for span in spans:
        key = (span.trace_id, span.span_id)
        previous = kept.get(key)
        if previous is None or span.end_ns or not previous.end_ns:
            kept[key] = span
    return list(kept.values())


def _start_order(span: Span) -> tuple[int, str, str]:
    return (span.start_ns, span.name, span.span_id)


def group_traces(spans: Iterable[Span]) -> list[list[Span]]:
    """Spans grouped by trace, each group sorted by start, groups ordered by their earliest start."""
    by_trace: dict[str, list[Span]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    traces = [sorted(group, key=_start_order) for group in by_trace.values()]
    return sorted(traces, key=lambda trace: (trace[0].start_ns, trace[0].trace_id))


def matching_traces(traces: Sequence[list[Span]], trace_id: str) -> list[list[Span]]:
    """Traces whose id starts with `trace_id` (case-insensitive), or only the exact match if there is one."""
    wanted = trace_id.strip().lower()
    exact = [t for t in traces if t[0].trace_id == wanted]
    return exact or [t for t in traces if t[0].trace_id.startswith(wanted)]


def tree_rows(spans: Sequence[Span]) -> list[TreeRow]:
    """Depth-first rows with their tree-drawing prefix; spans whose parent is absent become roots.

    Spans caught in a parent cycle (bad data) are unreachable from any root, so the earliest
    unvisited one is then drawn as a root, until every span has been shown exactly once.
    """
    present = {s.span_id for s in spans}
    children: dict[str, list[Span]] = {}
    for span in spans:
        if span.parent_span_id in present and span.parent_span_id != span.span_id:
            children.setdefault(span.parent_span_id, []).append(span)
    rows: list[TreeRow] = []
    visited: set[str] = set()
    roots = [s for s in spans if s.parent_span_id not in present or s.parent_span_id == s.span_id]
    for span in [*roots, *spans]:
        if span.span_id not in visited:
            _walk(span, "", "", children, visited, rows)
    return [(prefix, span, not prefix and _parent_missing(span, present)) for prefix, span, _ in rows]


def _parent_missing(span: Span, present: set[str]) -> bool:
    return bool(span.parent_span_id) and span.parent_span_id not in present


def _walk(
    span: Span,
    own_prefix: str,
    child_prefix: str,
    children: dict[str, list[Span]],
    visited: set[str],
    rows: list[TreeRow],
) -> None:
    visited.add(span.span_id)
    rows.append((own_prefix, span, False))
    kids = [k for k in children.get(span.span_id, []) if k.span_id not in visited]
    for index, kid in enumerate(kids):
        connector, continuation = ("└─ ", "   ") if index == len(kids) - 1 else ("├─ ", "│  ")
        _walk(kid, child_prefix + connector, child_prefix + continuation, children, visited, rows)


def render_trace(spans: Sequence[Span], *, color: bool) -> list[str]:
    """The header line and one line per span of one trace (spans sorted by start)."""
    lines = [trace_header(spans)]
    for prefix, span, orphan in tree_rows(spans):
        parts = [_printable(span.name) or "(unnamed)", *span_details(span, color=color)]
        if orphan:
            parts.append(f"(parent {_printable(span.parent_span_id[:8])} not in file)")
        lines.append(prefix + "  ".join(parts))
    return lines


def trace_header(spans: Sequence[Span]) -> str:
    count = len(spans)
    ends = [s.end_ns for s in spans if s.end_ns]
    wall = format_duration(max(ends) - spans[0].start_ns) if ends else "unfinished"
    trace_id = _printable(spans[0].trace_id) or "(no trace id)"
    return f"trace {trace_id}  {_plural(count, 'span')}  {wall}"


_FULL, _EIGHTHS, _UNFINISHED = "█", " ▏▎▍▌▋▊▉", "░"
_MIN_BAR, _MIN_NAME, _MAX_FIELD = 10, 8, 14
_MARKS = {"good": "✓", "bad": "✗", "other": "○", "none": " ", "unfinished": "…"}


def outcome(span: Span) -> str:
    """good, bad, other (cancellation, skip, ...), none (no result recorded) or unfinished: the row's marker."""
    if not span.end_ns:
        return "unfinished"
    result = (span_result(span) or "").lower()
    if not result:
        return "none"
    return "good" if result in _GOOD_RESULTS else "bad" if result in _BAD_RESULTS else "other"


def render_waterfall(spans: Sequence[Span], *, color: bool, width: int, source: str) -> list[str]:
    """One trace as a waterfall: header, axis, then one row per span in tree order.

    Each row is a marker (✓ ✗ ○ …), the indented name, the result, the exit code, a bar placed on the trace's own
    time axis (eighth-cell precision at its end) and the duration; the row fits `width` columns, names giving way
    first. Colour, when asked, marks failures red and successes green; the markers say the same without it.
    """
    rows = tree_rows(spans)
    start = min(s.start_ns for s in spans)
    end = max([s.end_ns for s in spans if s.end_ns] + [s.start_ns for s in spans])
    total = max(end - start, 1)
    cells = [_waterfall_cells(prefix, span) for prefix, span, _ in rows]
    result_w = max([len("result"), *(len(c[1]) for c in cells)])
    exit_w = max([len("exit"), *(len(c[2]) for c in cells)])
    duration_w = max(len(c[3]) for c in cells)
    fixed = 2 + 2 + result_w + 2 + exit_w + 2 + 2 + duration_w
    name_w = min(max(len(c[0]) for c in cells), max(_MIN_NAME, (width - fixed) // 2))
    bar_w = max(_MIN_BAR, width - fixed - name_w)

    failed = sum(1 for _, span, _ in rows if outcome(span) == "bad")
    failures = _plural(failed, "failed step")
    header = trace_header(spans) + (f"  {failures}" if failed else "")
    if len(header) > width:  # the trace id is never cut (it is what one copies): the figures go below it
        header = header.replace("  ", "\n  ", 1)
    if failed:
        header = header.replace(failures, paint(failures, "failure", color=color))
    axis = _axis(total, bar_w)
    lines = [
        *header.split("\n"),
        f"  {'step'.ljust(name_w)}  {'result'.ljust(result_w)}  {'exit'.rjust(exit_w)}  {axis}".rstrip(),
    ]
    orphans: dict[str, list[str]] = {}
    for (_, span, orphan), (name, result, exit_code, duration) in zip(rows, cells, strict=True):
        kind = outcome(span)
        tint = {"good": "success", "bad": "failure", "other": "other"}.get(kind)
        bar = _bar(span, start, total, bar_w)
        padding = " " * (result_w - len(result))
        if tint is not None:  # paint what is drawn, not the spaces around it
            body = bar.strip(" ")
            bar = bar.replace(body, paint(body, tint, color=color), 1)
            result = paint(result, tint, color=color)
        mark = paint(_MARKS[kind], tint, color=color) if tint is not None else _MARKS[kind]
        result += padding
        lines.append(
            f"{mark} {_fit(name, name_w)}  {result}  {exit_code.rjust(exit_w)}  {bar}  {duration.rjust(duration_w)}"
        )
        if orphan:
            orphans.setdefault(span.parent_span_id, []).append(_printable(span.name) or "(unnamed)")
    for parent, names in orphans.items():  # the TaskRun's span, typically, when only the steps were recorded
        note = f"  ↑ parent {_printable(parent[:8])} not in {source}: {', '.join(names)}"
        lines.append(_fit(note, width).rstrip())
    return lines


def _waterfall_cells(prefix: str, span: Span) -> tuple[str, str, str, str]:
    """The row's texts before padding: indented name, result, exit code, duration."""
    exit_code = span.attributes.get(EXIT_CODE)
    return (  # a result or exit code of any length (bad data) must not push the bars off the screen
        prefix + (_printable(span.name) or "(unnamed)"),
        _fit(_printable(span_result(span) or ""), _MAX_FIELD).rstrip(),
        "" if exit_code is None else _fit(_printable(str(exit_code)), _MAX_FIELD).rstrip(),
        format_duration(span.end_ns - span.start_ns) if span.end_ns else "unfinished",
    )


def _fit(text: str, width: int) -> str:
    return text.ljust(width) if len(text) <= width else text[: width - 1] + "…"


def _axis(total: int, width: int) -> str:
    """0 at the bar's left edge, the trace's duration at its right, half of it in the middle when there is room."""
    left, right, middle = "0s", format_duration(total), format_duration(total / 2)
    line = left + right.rjust(width - len(left))
    centre = width // 2 - len(middle) // 2
    if centre > len(left) + 1 and centre + len(middle) < width - len(right) - 1:
        line = line[:centre] + middle + line[centre + len(middle) :]
    return line


def _bar(span: Span, start: int, total: int, width: int) -> str:
    """The span's bar on the trace's axis: from the cell edge nearest its start to its end in eighths; never empty."""
    scale = width * 8 / total
    first = min(round((span.start_ns - start) * scale / 8), width - 1)  # the nearest cell edge: off by half at most
    if not span.end_ns:  # still running when the trace was read: shaded to the trace's end
        return " " * first + _UNFINISHED * (width - first)
    stop = min(max(round((span.end_ns - start) * scale), first * 8 + 1), width * 8)
    length = stop - first * 8
    body = _FULL * (length // 8) + (_EIGHTHS[length % 8] if length % 8 else "")
    return (" " * first + body).ljust(width)


def span_details(span: Span, *, color: bool) -> list[str]:
    """The fields after the name, in a fixed order, omitting those the span lacks."""
    attributes = span.attributes
    parts = [format_duration(span.end_ns - span.start_ns) if span.end_ns else "unfinished"]
    result = span_result(span)
    if result:
        parts.append(paint(_printable(result), result, color=color))
    if EXIT_CODE in attributes:
        parts.append(f"exit={_printable(str(attributes[EXIT_CODE]))}")
    if ERROR_TYPE in attributes:
        parts.append(f"error={_printable(str(attributes[ERROR_TYPE]))}")
    cpu = cpu_seconds(attributes)
    if cpu is not None:
        parts.append(f"cpu={format_cpu(cpu)}")
    for label, key in (("mem", MEMORY_PEAK), ("ctr", CONTAINER_MEMORY_PEAK)):
        size = _number(attributes.get(key))
        if size is not None:
            parts.append(f"{label}={format_bytes(size)}")
    oom = _number(attributes.get(OOM_KILLS))
    if oom:
        parts.append(paint(f"oom={oom:g}", "error", color=color))
    return parts


def span_result(span: Span) -> str | None:
    """The CICD result attribute; failing that, what the OTLP status says (nothing when unset)."""
    result = span.attributes.get(RESULT)
    if result is not None and str(result):
        return str(result)
    if span.status_code == STATUS_OK:
        return "ok"
    if span.status_code == STATUS_ERROR:
        return "error"
    return None


def paint(text: str, result: str, *, color: bool) -> str:
    """Green for success, red for failures, yellow for anything else (cancellation, skip, unknown)."""
    if not color:
        return text
    lowered = result.lower()
    code = _GREEN if lowered in _GOOD_RESULTS else _RED if lowered in _BAD_RESULTS else _YELLOW
    return f"{code}{text}{_RESET}"


def _number(value: AttributeValue | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def cpu_seconds(attributes: dict[str, AttributeValue]) -> float | None:
    """User plus system CPU seconds; None when the span recorded neither."""
    times = [t for t in (_number(attributes.get(CPU_USER)), _number(attributes.get(CPU_SYSTEM))) if t is not None]
    return sum(times) if times else None


def format_cpu(seconds: float) -> str:
    """`1.23s` below a minute, where the hundredths matter; the human duration above."""
    if round(seconds, 2) < 60:
        return f"{max(seconds, 0.0):.2f}s"
    return format_duration(int(seconds * 1e9))


def format_duration(ns: int | float) -> str:
    """850ms, 12.3s, 4m05s, 1h02m: each unit is rounded before choosing it, so 59.97s is 1m00s, not 60.0s."""
    ns = max(ns, 0)
    millis = round(ns / 1e6)
    if millis < 1000:
        return f"{millis}ms"
    tenths = round(ns / 1e8)
    if tenths < 600:
        return f"{tenths // 10}.{tenths % 10}s"
    seconds = round(ns / 1e9)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    minutes = round(ns / 6e10)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def format_bytes(size: float) -> str:
    """Binary units; one decimal below 10 of a unit (1.5GiB), whole numbers above (210MiB)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value = max(size, 0.0)
    for unit in units:
        text = f"{value:.1f}" if unit != "B" and value < 9.95 else f"{value:.0f}"
        if float(text) < 1024 or unit == units[-1]:
            return text + unit
        value /= 1024
    raise AssertionError("unreachable")


def _printable(text: str) -> str:
    """Escape control characters so a hostile or broken file cannot break the tree or drive the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)

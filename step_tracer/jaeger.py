"""One trace from Jaeger's HTTP query API, for `step-tracer show --from-jaeger URL --trace ID`.

Jaeger v2 (and v1 since api_v3) answers `GET {base}/api/v3/traces/{trace_id}` with
`{"result": TracesData}`: the trace as OTLP JSON, rendered by the Collector's `ptrace.JSONMarshaler` (ids as hex,
enums as numbers, 64-bit integers as strings), so `step_tracer.otlp.json_codec` decodes it; errors come as
`{"error": {"httpCode": N, "message": "..."}}`, "not found" as HTTP 404. Read from Jaeger's source:
cmd/jaeger/internal/extension/jaegerquery/internal/apiv3/http_gateway.go (returnTrace, tryHandleError),
its snapshots/GetTrace.json, internal/jptrace/traces.go (MarshalJSONPB) and the api_v3 OpenAPI description
("the JSON response over HTTP is wrapped into result envelope"). Older gateways sent TracesData bare; both are read.

Stdlib only (urllib): reads are bounded in size and time, and every problem is one JaegerError line.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request

from step_tracer.otlp import json_codec
from step_tracer.span import Span

TIMEOUT = 10.0  # seconds for the whole answer: a query service that hangs must not hang the terminal
MAX_BYTES = 64 * 1024 * 1024  # a CI trace of thousands of spans is a few MiB
_CHUNK = 64 * 1024
_HEX = frozenset("0123456789abcdef")


class JaegerError(Exception):
    """A problem reading the trace, as one line for the user."""


def display_url(url: str) -> str:
    """The URL as shown to the user: without user:password, which may be given for a proxy's basic auth."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")


def trace_url(base: str, trace_id: str) -> str:
    """The api_v3 GetTrace URL under `base` (which may carry Jaeger's base path, such as /jaeger)."""
    parts = urllib.parse.urlsplit(base.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JaegerError(
            f"--from-jaeger wants Jaeger's http(s) query URL, such as http://localhost:16686, got {base!r}"
        )
    path = parts.path.rstrip("/") + "/api/v3/traces/" + _valid_trace_id(trace_id)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], path, "", ""))


def _valid_trace_id(trace_id: str) -> str:
    wanted = trace_id.strip().lower()
    if not wanted or len(wanted) > 32 or not set(wanted) <= _HEX:
        raise JaegerError(f"--trace for Jaeger is a whole trace id, up to 32 hex digits, got {trace_id!r}")
    return wanted


def fetch_trace(base: str, trace_id: str, *, timeout: float = TIMEOUT) -> list[Span]:
    """Every span of the trace; raises JaegerError when Jaeger is unreachable, has no such trace or answers garbage."""
    url = trace_url(base, trace_id)
    where = display_url(base)
    request = urllib.request.Request(url, headers={"Accept": "application/json", **_basic_auth(base)})
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = _read_bounded(response, deadline, MAX_BYTES, where)
    except urllib.error.HTTPError as error:
        with error:
            detail = _error_message(error.read(_CHUNK))
        if error.code == 404:
            raise JaegerError(f"no trace {trace_id.strip()} in Jaeger at {where} ({detail or 'HTTP 404'})") from None
        raise JaegerError(f"Jaeger at {where} answered HTTP {error.code}{': ' + detail if detail else ''}") from None
    except (TimeoutError, urllib.error.URLError, OSError) as error:
        raise JaegerError(f"cannot read from Jaeger at {where}: {_reason(error, timeout)}") from None
    spans = parse_answer(body, where)
    if not spans:
        raise JaegerError(f"no trace {trace_id.strip()} in Jaeger at {where} (the answer holds no spans)")
    return spans


def _basic_auth(base: str) -> dict[str, str]:
    parts = urllib.parse.urlsplit(base.strip())
    if parts.username is None:
        return {}
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _read_bounded(response: object, deadline: float, max_bytes: int, where: str) -> bytes:
    """The body, refusing more than max_bytes and stopping at the deadline (each read also has the socket timeout)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read1(_CHUNK)  # type: ignore[attr-defined]
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise JaegerError(f"the answer from Jaeger at {where} is over {max_bytes // (1024 * 1024)} MiB; not read")
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        chunks.append(chunk)


def _reason(error: BaseException, timeout: float) -> str:
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"no answer within {timeout:g}s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is it running, and is that its query port, 16686 by default?)"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return _one_line(str(reason))


def _error_message(body: bytes) -> str:
    """The message of Jaeger's error answer (`{"error": {"message": ...}}`), else its text, shortened."""
    text = body.decode("utf-8", "replace").strip()
    try:
        answer = json.loads(text)
    except ValueError:
        return _one_line(text)
    error = answer.get("error") if isinstance(answer, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return _one_line(str(message if message is not None else text))


def parse_answer(body: bytes, where: str) -> list[Span]:
    """The spans of an api_v3 GetTrace answer: `{"result": TracesData}`, or TracesData itself."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise JaegerError(f"Jaeger at {where} answered something that is not JSON ({_one_line(str(error))})") from None
    result = answer.get("result", answer) if isinstance(answer, dict) else answer
    if not isinstance(result, dict) or not ("resourceSpans" in result or result == {}):
        raise JaegerError(f"Jaeger at {where} answered JSON that is not an api_v3 trace (no result.resourceSpans)")
    try:
        batches = json_codec.decode_request(result)
    except ValueError as error:
        raise JaegerError(f"Jaeger at {where} answered a malformed trace ({_one_line(str(error))})") from None
    return [span for batch in batches for span in batch.spans]


def _one_line(text: str, limit: int = 160) -> str:
    """Whitespace collapsed, control characters escaped, cut at `limit`: a server's text must not drive the terminal."""
    flat = " ".join(text.split())
    flat = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in flat)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"

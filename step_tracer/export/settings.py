"""Exporter settings from the OpenTelemetry SDK environment variables, read once per wrapped step.

Parsed by hand (no re, no urllib.parse) because this runs on every step. A bad value never stops the step: it
costs one warning line and the default is used instead. Where the spec and opentelemetry-python disagree (OTLP
timeouts are milliseconds) the spec wins.
"""

from __future__ import annotations

import os

from step_tracer import __version__

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs a step ~20 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from step_tracer.span import AttributeValue

EXPORTERS = ("otlp", "console", "none", "file")
PROTOCOLS = ("grpc", "http/protobuf", "http/json")
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318/v1/traces"
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
DEFAULT_TIMEOUT = 10.0
DEFAULT_DEADLINE = 2.0
SERVICE_NAME = "step-tracer"

_P = "OTEL_EXPORTER_OTLP_"
_T = "OTEL_EXPORTER_OTLP_TRACES_"
# RFC 9110 token characters: what a header name may contain (http.client and grpc refuse anything else).
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class Settings:
    """Everything the exporters need; build with `from_env`, or directly in tests and callers.

    `timeout` is per attempt, `deadline` bounds the whole network export (retries included), both in seconds.
    """

    __slots__ = (
        "certificate",
        "client_certificate",
        "client_key",
        "compression",
        "deadline",
        "disabled",
        "endpoint",
        "exporters",
        "file_path",
        "headers",
        "insecure",
        "protocol",
        "resource",
        "timeout",
    )

    def __init__(
        self,
        *,
        disabled: bool = False,
        exporters: tuple[str, ...] = ("file",),
        protocol: str = "http/protobuf",
        endpoint: str = DEFAULT_HTTP_ENDPOINT,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        certificate: str = "",
        client_key: str = "",
        client_certificate: str = "",
        insecure: bool = False,
        compression: str = "none",
        resource: Mapping[str, AttributeValue] | None = None,
        file_path: str = "",
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.disabled = disabled
        self.exporters = exporters
        self.protocol = protocol
        self.endpoint = endpoint
        self.headers: dict[str, str] = dict(headers) if headers else {}
        self.timeout = timeout
        self.certificate = certificate
        self.client_key = client_key
        self.client_certificate = client_certificate
        self.insecure = insecure
        self.compression = compression
        self.resource: dict[str, AttributeValue] = dict(resource) if resource is not None else default_resource()
        self.file_path = file_path or _default_file_path(os.environ)
        self.deadline = deadline

    def __repr__(self) -> str:
        # Headers are credentials more often than not, and so are the endpoint's user:password@ and query: a
        # repr ends up in logs and tracebacks, so it shows neither (only how many headers are set).
        return (
            f"Settings(exporters={self.exporters}, protocol={self.protocol!r}, endpoint={redact(self.endpoint)!r}, "
            f"headers=<{len(self.headers)} set>, timeout={self.timeout}, deadline={self.deadline}, "
            f"file_path={self.file_path!r}, disabled={self.disabled})"
        )

    def grpc_target(self) -> tuple[str, bool]:
        """(host:port target, use TLS) for the gRPC channel.

        An https:// endpoint always uses TLS and http:// never does; OTEL_EXPORTER_OTLP_INSECURE only decides
        for a scheme-less endpoint, as the spec says.
        """
        scheme, rest = _split_scheme(self.endpoint)
        authority = rest.split("/", 1)[0].rpartition("@")[2]
        if scheme:
            return authority, scheme == "https"
        return authority, not self.insecure

    @classmethod
    def from_env(cls, env: Mapping[str, str], warn: Callable[[str], None]) -> Settings:
        """Read the OTEL_* (and STEP_TRACER_*) variables. Never raises.

        Each invalid value produces exactly one `warn` call naming the variable, without the "step-tracer: "
        prefix (the caller adds its own, as for every other warning) and without a newline; header values are
        never echoed.
        """
        get = _Reader(env, warn)
        protocol = get.choice("protocol", PROTOCOLS, "http/protobuf")
        traces_endpoint = get.value(_T + "ENDPOINT")
        generic_endpoint = get.value(_P + "ENDPOINT")
        return cls(
            disabled=get.flag("OTEL_SDK_DISABLED"),
            exporters=get.exporters("otlp" if traces_endpoint is not None or generic_endpoint is not None else "file"),
            protocol=protocol,
            endpoint=get.endpoint(protocol, traces_endpoint, generic_endpoint),
            headers=get.headers(),
            timeout=get.timeout(),
            certificate=get.path("CERTIFICATE"),
            client_key=get.path("CLIENT_KEY"),
            client_certificate=get.path("CLIENT_CERTIFICATE"),
            insecure=get.flag(_T + "INSECURE", _P + "INSECURE"),
            compression=get.choice("compression", ("gzip", "none"), "none"),
            resource=get.resource(),
            file_path=_default_file_path(env),
            deadline=get.deadline(),
        )


def default_resource() -> dict[str, AttributeValue]:
    return {
        "service.name": SERVICE_NAME,
        "telemetry.sdk.name": "step-tracer",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": __version__,
    }


class _Reader:
    """Variable lookups that treat empty as unset (per the spec) and report bad values once each."""

    __slots__ = ("env", "warn")

    def __init__(self, env: Mapping[str, str], warn: Callable[[str], None]) -> None:
        self.env = env
        self.warn = warn

    def value(self, name: str) -> str | None:
        text = self.env.get(name, "").strip()
        return text or None

    def first(self, *names: str) -> tuple[str, str] | None:
        """(name, value) of the first set variable: TRACES-specific before generic."""
        for name in names:
            text = self.value(name)
            if text is not None:
                return name, text
        return None

    def bad(self, name: str, value: str, expected: str, fallback: object) -> None:
        self.warn(f"ignoring {name}={value!r}: expected {expected}; using {fallback}")

    def flag(self, *names: str) -> bool:
        found = self.first(*names)
        if found is None:
            return False
        name, text = found
        lowered = text.lower()
        if lowered not in ("true", "false"):
            self.bad(name, text, "true or false", "false")
        return lowered == "true"

    def choice(self, what: str, allowed: tuple[str, ...], default: str) -> str:
        found = self.first(_T + what.upper(), _P + what.upper())
        if found is None:
            return default
        name, text = found
        lowered = text.lower()
        if lowered not in allowed:
            self.bad(name, text, " or ".join(allowed), default)
            return default
        return lowered

    def path(self, what: str) -> str:
        found = self.first(_T + what, _P + what)
        return found[1] if found else ""

    def exporters(self, default: str) -> tuple[str, ...]:
        text = self.value("OTEL_TRACES_EXPORTER")
        if text is None:
            return (default,)
        chosen: list[str] = []
        for item in text.split(","):
            item = item.strip().lower()
            if not item or item in chosen:
                continue
            if item not in EXPORTERS:
                self.bad("OTEL_TRACES_EXPORTER", item, ", ".join(EXPORTERS), "the other entries")
                continue
            chosen.append(item)
        if "none" in chosen:
            if len(chosen) > 1:
                self.warn(f"OTEL_TRACES_EXPORTER={text!r} combines none with exporters; using none")
            return ()
        if not chosen:
            return (default,)
        return tuple(chosen)

    def endpoint(self, protocol: str, traces: str | None, generic: str | None) -> str:
        grpc = protocol == "grpc"
        default = DEFAULT_GRPC_ENDPOINT if grpc else DEFAULT_HTTP_ENDPOINT
        if traces is not None:
            name, raw, url = _T + "ENDPOINT", traces, traces
        elif generic is not None:
            name, raw = _P + "ENDPOINT", generic
            url = generic if grpc else _traces_url(generic)
        else:
            return default
        problem = _endpoint_problem(url, grpc)
        if problem:
            self.bad(name, redact(raw), problem, default)
            return default
        return url

    def headers(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for name in (_P + "HEADERS", _T + "HEADERS"):
            text = self.value(name)
            if text is None:
                continue
            for position, entry in enumerate(text.split(","), 1):
                if not entry.strip():
                    continue
                key, sep, raw = entry.partition("=")
                key = key.strip()
                value = _unquote(raw.strip()) if sep else None
                if not key or value is None or not _TOKEN.issuperset(key) or _unsendable(value):
                    self.warn(
                        f"ignoring malformed entry {position} of {name} "
                        "(expected key=value, percent-encoded to printable ASCII)"
                    )
                    continue
                for existing in [k for k in merged if k.lower() == key.lower()]:
                    del merged[existing]
                merged[key] = value
        return merged

    def timeout(self) -> float:
        found = self.first(_T + "TIMEOUT", _P + "TIMEOUT")
        if found is None:
            return DEFAULT_TIMEOUT
        name, text = found
        millis = _positive(text)
        if millis is None:
            self.bad(name, text, "a positive number of milliseconds", f"{DEFAULT_TIMEOUT * 1000:.0f}")
            return DEFAULT_TIMEOUT
        return millis / 1000.0

    def deadline(self) -> float:
        text = self.value("STEP_TRACER_EXPORT_DEADLINE")
        if text is None:
            return DEFAULT_DEADLINE
        seconds = _positive(text)
        if seconds is None:
            self.bad("STEP_TRACER_EXPORT_DEADLINE", text, "a positive number of seconds", DEFAULT_DEADLINE)
            return DEFAULT_DEADLINE
        return seconds

    def resource(self) -> dict[str, AttributeValue]:
        attributes = default_resource()
        text = self.value("OTEL_RESOURCE_ATTRIBUTES")
        if text is not None:
            parsed = _resource_attributes(text)
            if parsed is None:
                self.warn(
                    "ignoring OTEL_RESOURCE_ATTRIBUTES: expected comma-separated "
                    "key=value pairs with percent-encoded values"
                )
            else:
                attributes.update(parsed)
        service = self.value("OTEL_SERVICE_NAME")
        if service is not None:
            attributes["service.name"] = service
        return attributes


def redact(url: str) -> str:
    """`url` fit for a log line: user:password@ and the query (some vendors put API keys there) elided."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest, question, _ = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return scheme + sep + authority + slash + path + ("?***" if question else "")


def _traces_url(generic: str) -> str:
    """The spec's signal path appended to OTEL_EXPORTER_OTLP_ENDPOINT's path, before any query string."""
    base, question, query = generic.partition("?")
    return base.rstrip("/") + "/v1/traces" + question + query


def _split_scheme(url: str) -> tuple[str, str]:
    """("http"|"https"|"", rest). A scheme-less "host:port" stays whole."""
    head, sep, rest = url.partition("://")
    if sep and head.lower() in ("http", "https"):
        return head.lower(), rest
    return "", url


def _endpoint_problem(url: str, grpc: bool) -> str:
    """Why `url` is unusable, or "" when it is fine."""
    head, sep, _ = url.partition("://")
    if sep and head.lower() not in ("http", "https"):
        return "an http:// or https:// URL"
    scheme, rest = _split_scheme(url)
    if not scheme and not grpc:
        return "an http:// or https:// URL"
    authority = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    if authority.startswith("["):
        host, bracket, port = authority[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return "a URL with a valid [IPv6] host"
        port = port[1:]
    else:
        host, _, port = authority.partition(":")
    if not host or any(c in host for c in " \t\r\n"):
        return "a URL with a host"
    if port and not (port.isdigit() and port.isascii() and 0 < int(port) < 65536):
        return "a URL with a numeric port"
    return ""


def _positive(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    if not 0 < number < float("inf"):
        return None
    return number


def _unsendable(value: str) -> bool:
    """gRPC metadata and portable HTTP header values are printable ASCII only."""
    return not all(" " <= c <= "~" for c in value)


def _unquote(text: str) -> str | None:
    """Percent-decode as UTF-8; None when the result is not valid UTF-8."""
    if "%" not in text:
        return text
    from urllib.parse import unquote

    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        return None


def _resource_attributes(text: str) -> dict[str, AttributeValue] | None:
    """W3C-baggage-like key=value list; None (discard it all, as the spec asks) if any entry is malformed."""
    attributes: dict[str, AttributeValue] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        key, sep, raw = entry.partition("=")
        key = key.strip()
        value = _unquote(raw.strip())
        if not sep or not key or value is None:
            return None
        attributes[key] = value
    return attributes


def _default_file_path(env: Mapping[str, str]) -> str:
    """STEP_TRACER_FILE, else the XDG state directory (relative XDG paths are ignored, per the XDG spec)."""
    explicit = env.get("STEP_TRACER_FILE", "")
    if explicit:
        return explicit
    state = env.get("XDG_STATE_HOME", "")
    if state.startswith("/"):
        return state.rstrip("/") + "/step-tracer/spans.jsonl"
    home = env.get("HOME", "")
    if home:
        return home.rstrip("/") + "/.local/state/step-tracer/spans.jsonl"
    return f"/tmp/step-tracer-{os.getuid()}/spans.jsonl"

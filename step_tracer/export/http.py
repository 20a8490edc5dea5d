"""OTLP/HTTP transport on http.client: one POST per attempt, classified the way the OTLP spec asks.

http.client and ssl are imported when the first request is made, never by merely importing this module, so a
step that exports to a file pays nothing for them.
"""

from __future__ import annotations

from step_tracer import __version__
from step_tracer.export import ExportError, one_line, partial_success

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs a step ~20 ms
if TYPE_CHECKING:
    import ssl

    from step_tracer.export.settings import Settings

RETRYABLE_STATUS = (429, 502, 503, 504)
_MAX_REPLY = 64 * 1024


class HttpTransport:
    """POSTs to `settings.endpoint`. Raises ExportError for a configuration the endpoint cannot work with."""

    def __init__(self, settings: Settings) -> None:
        scheme, _, rest = settings.endpoint.partition("://")
        self.https = scheme.lower() == "https"
        if scheme.lower() not in ("http", "https"):
            raise ExportError("the endpoint is not an http:// or https:// URL")
        rest = rest.split("#", 1)[0]
        slash = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority, self.path = rest[:slash], rest[slash:] or "/"
        if self.path.startswith("?"):
            self.path = "/" + self.path
        userinfo, _, hostport = authority.rpartition("@")
        self.host, self.port = _host_port(hostport, 443 if self.https else 80)
        self.gzip = settings.compression == "gzip"
        self.json = json = settings.protocol == "http/json"
        headers = {"user-agent": ("User-Agent", f"step-tracer/{__version__}")}
        if userinfo:
            headers["authorization"] = ("Authorization", _basic(userinfo))
        for name, value in settings.headers.items():
            headers[name.lower()] = (name, value)
        headers["content-type"] = ("Content-Type", "application/json" if json else "application/x-protobuf")
        if self.gzip:
            headers["content-encoding"] = ("Content-Encoding", "gzip")
        self.headers = dict(headers.values())
        self.context = _tls_context(settings) if self.https else None

    def send(self, payload: bytes, timeout: float) -> None:
        import http.client
        import ssl

        body = payload
        if self.gzip:
            import zlib

            body = zlib.compress(payload, 6, 31)
        connection: http.client.HTTPConnection
        if self.context is not None:
            connection = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request("POST", self.path, body, self.headers)
            response = connection.getresponse()
            reply = response.read(_MAX_REPLY)
        except ssl.SSLEOFError as exc:
            raise ExportError("the collector closed the connection during the TLS handshake", True) from exc
        except ssl.SSLCertVerificationError as exc:
            raise ExportError(
                f"TLS certificate verification failed: {exc.verify_message or exc.reason}", False
            ) from exc
        except ssl.SSLError as exc:
            raise ExportError(f"TLS handshake failed: {exc.reason or one_line(str(exc))}", False) from exc
        except TimeoutError as exc:
            raise ExportError(f"no answer within {timeout:.1f} s", True) from exc
        except http.client.RemoteDisconnected as exc:
            raise ExportError("connection closed without an answer", True) from exc
        except OSError as exc:
            raise ExportError(_connection_reason(exc), True) from exc
        except http.client.HTTPException as exc:
            raise ExportError(f"bad HTTP answer: {type(exc).__name__}", True) from exc
        finally:
            connection.close()
        status = response.status
        if 200 <= status < 300:
            rejected = _json_partial_success(reply) if self.json else partial_success(reply)
            if rejected:
                raise ExportError(rejected, False)
            return
        detail = _detail(response.getheader("Content-Type") or "", reply)
        message = f"HTTP {status}" + (f": {detail}" if detail else "")
        if status in RETRYABLE_STATUS:
            raise ExportError(message, True, _retry_after(response.getheader("Retry-After")))
        raise ExportError(message, False)

    def close(self) -> None:
        """Nothing to release: each attempt opens and closes its own connection."""


def _host_port(hostport: str, default: int) -> tuple[str, int]:
    if hostport.startswith("["):
        host, _, port = hostport[1:].partition("]")
        port = port[1:]
    else:
        host, _, port = hostport.partition(":")
    if not host:
        raise ExportError("the endpoint has no host")
    if not port:
        return host, default
    if not port.isdigit():
        raise ExportError(f"the endpoint port {port!r} is not a number")
    return host, int(port)


def _basic(userinfo: str) -> str:
    """Basic credentials from an endpoint's user:password@, as curl and browsers would send them."""
    from binascii import b2a_base64
    from urllib.parse import unquote

    user, _, password = userinfo.partition(":")
    token = f"{unquote(user)}:{unquote(password)}".encode()
    return "Basic " + b2a_base64(token, newline=False).decode("ascii")


def _tls_context(settings: Settings) -> ssl.SSLContext:
    """Trust only `certificate` when set (as the spec and the SDK do), else the system store; add mTLS."""
    import ssl

    try:
        context = ssl.create_default_context(cafile=settings.certificate or None)
    except (OSError, ssl.SSLError) as exc:
        raise ExportError(f"cannot load CA certificate {settings.certificate}: {_file_reason(exc)}") from exc
    if settings.client_certificate:
        try:
            context.load_cert_chain(settings.client_certificate, settings.client_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise ExportError(
                f"cannot load client certificate {settings.client_certificate}: {_file_reason(exc)}"
            ) from exc
    return context


def _file_reason(exc: OSError) -> str:
    return str(exc.strerror or getattr(exc, "reason", None) or exc)


def _connection_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if exc.strerror:
        return str(exc.strerror)
    return one_line(str(exc)) or type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds; the HTTP-date form is ignored (ordinary backoff applies)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


def _json_partial_success(reply: bytes) -> str | None:
    """partial_success() for the JSON mapping: {"partialSuccess": {"rejectedSpans": "1", ...}}."""
    import json

    try:
        partial = json.loads(reply or b"{}").get("partialSuccess") or {}
        rejected = int(partial.get("rejectedSpans") or 0)
        message = str(partial.get("errorMessage") or "")
    except (ValueError, TypeError, AttributeError):
        return None
    if not rejected:
        return None
    return f"collector rejected {rejected} span{'s' if rejected != 1 else ''}" + (
        f": {one_line(message)}" if message else ""
    )


def _detail(content_type: str, reply: bytes) -> str:
    """The collector's own explanation: google.rpc.Status.message (protobuf or JSON), or a line of text."""
    content_type = content_type.split(";", 1)[0].strip().lower()
    try:
        if content_type == "application/x-protobuf":
            from step_tracer.otlp.proto_codec import read_fields

            for field, value in read_fields(reply):
                if field == 2 and isinstance(value, bytes):
                    return one_line(value.decode("utf-8", "replace"))
            return ""
        if content_type == "application/json":
            import json

            message = json.loads(reply).get("message", "")
            return one_line(message) if isinstance(message, str) else ""
    except (ValueError, AttributeError):
        return ""
    if content_type.startswith("text/"):
        return one_line(reply.decode("utf-8", "replace"))
    return ""

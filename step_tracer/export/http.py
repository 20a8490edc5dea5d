"""OTLP/HTTP transport: one POST per attempt, classified the way the OTLP spec asks.

A small HTTP/1.1 client of its own (`Connection: close`, Content-Length or chunked replies) rather than
http.client, which imports the email package and ssl: ~60 ms on the dev machine, twice the rest of a traced
step. Plain http:// endpoints use the `_socket` C module only; ssl (and socket) are imported for https:// alone,
when the first request is made.
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
        body = payload
        if self.gzip:
            import zlib

            body = zlib.compress(payload, 6, 31)
        request = self._request(len(body)) + body
        if self.context is None:
            status, headers, reply = self._exchange(_connect(self.host, self.port, timeout), request)
        else:
            import ssl

            try:
                status, headers, reply = self._exchange(self._tls(timeout), request, ssl.SSLError)
            except ssl.SSLEOFError as exc:
                raise ExportError("the collector closed the connection during the TLS handshake", True) from exc
            except ssl.SSLCertVerificationError as exc:
                raise ExportError(
                    f"TLS certificate verification failed: {exc.verify_message or exc.reason}", False
                ) from exc
            except ssl.SSLError as exc:
                raise ExportError(f"TLS handshake failed: {exc.reason or one_line(str(exc))}", False) from exc
        if 200 <= status < 300:
            rejected = _json_partial_success(reply) if self.json else partial_success(reply)
            if rejected:
                raise ExportError(rejected, False)
            return
        detail = _detail(headers.get("content-type", ""), reply)
        message = f"HTTP {status}" + (f": {detail}" if detail else "")
        if status in RETRYABLE_STATUS:
            raise ExportError(message, True, _retry_after(headers.get("retry-after")))
        raise ExportError(message, False)

    def _request(self, length: int) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.https else 80
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {host}" + (f":{self.port}" if self.port != default else ""),
            f"Content-Length: {length}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "strict")

    def _tls(self, timeout: float) -> _Conn:
        import socket

        assert self.context is not None
        try:
            raw = socket.create_connection((self.host, self.port), timeout)
        except TimeoutError as exc:
            raise ExportError(f"no connection within {timeout:.1f} s", True) from exc
        except OSError as exc:
            raise ExportError(_connection_reason(exc), True) from exc
        try:
            return self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def _exchange(
        self, conn: _Conn, request: bytes, tls_error: type[OSError] | tuple[()] = ()
    ) -> tuple[int, dict[str, str], bytes]:
        """Send the request, read the whole answer; OSError and timeouts become retryable ExportErrors, except
        `tls_error`, which the caller reports itself."""
        try:
            conn.sendall(request)
            return _read_response(conn)
        except TimeoutError as exc:
            raise ExportError(f"no answer within {conn.gettimeout() or 0:.1f} s", True) from exc
        except _BadAnswer as exc:
            raise ExportError(f"bad HTTP answer: {exc}", True) from exc
        except ConnectionResetError as exc:
            raise ExportError("connection closed without an answer", True) from exc
        except tls_error:
            raise
        except OSError as exc:
            raise ExportError(_connection_reason(exc), True) from exc
        finally:
            conn.close()

    def close(self) -> None:
        """Nothing to release: each attempt opens and closes its own connection."""


class _BadAnswer(Exception):
    """The reply is not HTTP/1.x as we can read it."""


if TYPE_CHECKING:
    from typing import Protocol

    class _Conn(Protocol):
        def sendall(self, data: bytes, /) -> None: ...

        def recv(self, size: int, /) -> bytes: ...

        def gettimeout(self) -> float | None: ...

        def close(self) -> None: ...


def _connect(host: str, port: int, timeout: float) -> _Conn:
    """A connected TCP socket from the C module (the `socket` module would import enum and selectors)."""
    import _socket

    # A str host goes through the idna codec, which imports re and stringprep (~15 ms): pass ASCII as bytes.
    name: str | bytes = host.encode("ascii") if host.isascii() else host
    try:
        addresses = _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM)
    except _socket.gaierror as exc:
        raise ExportError(f"cannot resolve {host}: {exc.strerror or exc}", True) from exc
    error: OSError | None = None
    for family, kind, proto, _, address in addresses:
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    if isinstance(error, TimeoutError):
        raise ExportError(f"no connection within {timeout:.1f} s", True) from error
    raise ExportError(_connection_reason(error) if error else f"cannot resolve {host}", True) from error


def _read_response(conn: _Conn) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, at most _MAX_REPLY bytes of body) of an HTTP/1.x response."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(16384)
        if not chunk:
            if not buffer:
                raise ConnectionResetError("connection closed without an answer")
            raise _BadAnswer("truncated header")
        buffer += chunk
        if len(buffer) > _MAX_REPLY:
            raise _BadAnswer("header too long")
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, _, status_text = lines[0].partition(" ")
    code = status_text[:3]
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise _BadAnswer(f"status line {lines[0][:40]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    status = int(code)
    if status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    if headers.get("transfer-encoding", "").lower().endswith("chunked"):
        return status, headers, _dechunk(conn, rest)
    length = headers.get("content-length")
    want = int(length) if length and length.isdigit() else None
    body = rest
    while want is None or len(body) < want:
        if len(body) >= _MAX_REPLY:
            break
        chunk = conn.recv(16384)
        if not chunk:
            if want is not None:
                raise _BadAnswer("truncated body")
            break
        body += chunk
    return status, headers, body[: want if want is not None else _MAX_REPLY][:_MAX_REPLY]


def _dechunk(conn: _Conn, data: bytes) -> bytes:
    body = b""
    while len(body) < _MAX_REPLY:
        while b"\r\n" not in data:
            more = conn.recv(16384)
            if not more:
                raise _BadAnswer("truncated chunk")
            data += more
        size_line, _, data = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
        except ValueError:
            raise _BadAnswer("bad chunk size") from None
        if size == 0:
            break
        while len(data) < size + 2:
            more = conn.recv(16384)
            if not more:
                raise _BadAnswer("truncated chunk")
            data += more
        body, data = body + data[:size], data[size + 2 :]
    return body[:_MAX_REPLY]


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


#: Where distributions keep their CA bundle (Debian/Ubuntu/Alpine, Fedora/RHEL/UBI, SUSE, others). The
#: self-contained wrapper's OpenSSL looks where its build machine keeps it, which a step image may not have.
CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
)


def _tls_context(settings: Settings, bundles: tuple[str, ...] = CA_BUNDLES) -> ssl.SSLContext:
    """Trust only `certificate` when set (as the spec and the SDK do), else the system store; add mTLS.

    When OpenSSL's own default store does not exist here (SSL_CERT_FILE/SSL_CERT_DIR or the built-in paths),
    the first CA bundle of `bundles` that does is used instead.
    """
    import os
    import ssl

    cafile = settings.certificate or None
    if cafile is None:
        paths = ssl.get_default_verify_paths()
        if not (paths.cafile and os.path.isfile(paths.cafile)) and not (paths.capath and os.path.isdir(paths.capath)):
            cafile = next((b for b in bundles if os.path.isfile(b)), None)
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ExportError(f"cannot load CA certificate {cafile}: {_file_reason(exc)}") from exc
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

"""The OTLP/HTTP transport's own HTTP/1.1 client against a server that answers with exact bytes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from step_tracer.export import ExportError
from step_tracer.export.http import HttpTransport
from step_tracer.export.settings import Settings


class CannedServer:
    """Accepts one connection at a time, records the request, answers with `reply` and closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.reply = b""
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next(v for k, _, v in (ln.partition(b": ") for ln in head.split(b"\r\n"))
                                  if k.lower() == b"content-length"))  # fmt: skip
                while len(body) < length:
                    body += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + body)
                if self.reply:
                    conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[CannedServer]:
    s = CannedServer()
    yield s
    s.close()


def transport(port: int, **kwargs: object) -> HttpTransport:
    return HttpTransport(Settings(endpoint=f"http://127.0.0.1:{port}/v1/traces", **kwargs))  # type: ignore[arg-type]


def test_request_bytes(server: CannedServer) -> None:
    server.reply = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    transport(server.port, headers={"x-api-key": "k"}).send(b"\x0a\x00", 5)
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/traces HTTP/1.1"
    assert {b"Host: 127.0.0.1:%d" % server.port, b"Content-Length: 2", b"Connection: close", b"x-api-key: k",
            b"Content-Type: application/x-protobuf"} <= set(lines)  # fmt: skip
    assert body == b"\x0a\x00"


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\n",  # no length: the body ends with the connection
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ],
)
def test_success_forms(server: CannedServer, reply: bytes) -> None:
    server.reply = reply
    transport(server.port).send(b"x", 5)


def test_chunked_error_body_is_read(server: CannedServer) -> None:
    message = b"quota exceeded"
    server.reply = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nquota\r\n"
        + b"%x\r\n" % (len(message) - 5)
        + message[5:]
        + b"\r\n0\r\n\r\n"
    )
    with pytest.raises(ExportError) as caught:
        transport(server.port).send(b"x", 5)
    assert (caught.value.message, caught.value.retryable, caught.value.retry_after) == (
        "HTTP 503: quota exceeded",
        True,
        3.0,
    )


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"", "connection closed without an answer"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "bad HTTP answer: status line 'SSH-2.0-OpenSSH'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "bad HTTP answer: truncated body"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad HTTP answer: bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nX: y", "bad HTTP answer: truncated header"),
    ],
)
def test_broken_answers_are_retryable_errors(server: CannedServer, reply: bytes, message: str) -> None:
    server.reply = reply
    with pytest.raises(ExportError) as caught:
        transport(server.port).send(b"x", 5)
    assert (caught.value.message, caught.value.retryable) == (message, True)


def test_non_retryable_status(server: CannedServer) -> None:
    server.reply = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nbad"
    with pytest.raises(ExportError) as caught:
        transport(server.port).send(b"x", 5)
    assert (caught.value.message, caught.value.retryable) == ("HTTP 400: bad", False)


def test_ipv6_literal_host_header() -> None:
    try:
        sock = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    port = sock.getsockname()[1]
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = sock.accept()
        with conn:
            got.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    HttpTransport(Settings(endpoint=f"http://[::1]:{port}/v1/traces")).send(b"", 5)
    sock.close()
    assert f"Host: [::1]:{port}\r\n".encode() in got[0]

"""A collector that restarts: a TCP front for an OTLP receiver that goes down and comes back on the same address."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class _Link:
    """One proxied connection; `busy` from the first byte of a request until its answer went back."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.lock = threading.Lock()
        self.busy = False
        self.closing = False

    def close(self) -> None:
        for conn in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class RestartingCollector:
    """A TCP front for the receiver on a fixed port that goes down and comes back on the same address, as a
    collector Deployment does when it restarts.

    Going down is a graceful server shutdown (Go's http.Server.Shutdown, what the collector runs on SIGTERM):
    no new connections, in-flight exports still get their answer, idle keep-alive connections are closed. Cutting
    a request the collector already accepted would make any OTLP client send it again (OTLP is at-least-once),
    which is not what a restart does to a client.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._links: list[_Link] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self, drain: float = 10.0) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            links, self._links = self._links, []
        deadline = time.monotonic() + drain
        for link in links:
            while True:
                with link.lock:
                    if not link.busy or time.monotonic() > deadline:
                        link.closing = True
                        break
                time.sleep(0.005)
            link.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._requests, args=(link,), daemon=True).start()
            threading.Thread(target=self._answers, args=(link,), daemon=True).start()

    def _requests(self, link: _Link) -> None:
        try:
            while data := link.client.recv(65536):
                with link.lock:
                    if link.closing:
                        break
                    link.busy = True
                    link.upstream.sendall(data)
        except OSError:
            pass
        link.close()

    def _answers(self, link: _Link) -> None:
        try:
            while data := link.upstream.recv(65536):
                link.client.sendall(data)
                with link.lock:
                    link.busy = False
        except OSError:
            pass
        link.close()

"""A server TLS context that follows its certificate files: rotation (cert-manager, a re-created Secret) needs no
restart.

Checked on every new connection by reading both files (a few kilobytes, tens of microseconds; the API server keeps
its connections open, so this is rare). Comparing contents rather than stat results also catches a rewrite in
place within one filesystem timestamp tick. The kubelet updates a mounted Secret by swapping a symlink, so
certificate and key change together; a writer that replaces them one at a time can leave a mismatched pair for a
moment, and then the previous context keeps serving until the pair loads.
"""

from __future__ import annotations

import logging
import ssl
import threading

log = logging.getLogger(__name__)


class ReloadingContext:
    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.reloads = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._signature = self._read()
        self._failed: tuple[bytes, bytes] | None = None
        self._context = self._load()  # the first load must succeed: nothing to fall back on

    def context(self) -> ssl.SSLContext:
        """The context for a new connection, reloaded first when the files changed since the last load."""
        try:
            signature = self._read()
        except OSError:
            return self._context  # mid-swap or briefly absent: keep serving with what we have
        if signature in (self._signature, self._failed):
            return self._context
        with self._lock:
            if signature not in (self._signature, self._failed):
                try:
                    self._context = self._load()
                except (OSError, ssl.SSLError, ValueError) as err:
                    # Probably half-written: the files change again when the writer finishes, and then we retry.
                    self._failed = signature
                    self.failures += 1
                    log.warning("certificate reload failed, still serving the previous one: %s", err)
                    return self._context
                self._signature = signature
                self.reloads += 1
                log.info("certificate reloaded from %s", self.cert_file)
        return self._context

    def _read(self) -> tuple[bytes, bytes]:
        with open(self.cert_file, "rb") as cert, open(self.key_file, "rb") as key:
            return cert.read(), key.read()

    def _load(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

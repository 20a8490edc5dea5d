"""Sleeping until something happens: a record renamed into the spool, SIGTERM/SIGINT, or a finished export.

inotify (through ctypes: the stdlib has no binding) keeps an idle sidecar at zero CPU; without it (seccomp,
old kernels, exhausted watches) the spool is polled once a second.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import struct
import time
from collections.abc import Callable

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
POLL_INTERVAL = 1.0
_EVENT = struct.Struct("iIII")


class Inotify:
    """A non-blocking inotify descriptor watching one directory for files that appear in it whole."""

    def __init__(self, directory: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        init1 = libc.inotify_init1
        init1.argtypes = [ctypes.c_int]
        init1.restype = ctypes.c_int
        add_watch = libc.inotify_add_watch
        add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        add_watch.restype = ctypes.c_int
        fd = init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise _errno_error("inotify_init1")
        mask = IN_MOVED_TO | IN_CLOSE_WRITE | IN_ONLYDIR
        if add_watch(fd, os.fsencode(directory), mask) < 0:
            err = _errno_error(f"inotify_add_watch {directory}")
            os.close(fd)
            raise err
        self.fd = fd

    def drain(self) -> bool:
        """Consume every queued event; True if one may concern a record (not a writer's temporary file)."""
        relevant = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return relevant
            if not data:
                return relevant
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW or not name.startswith(b"."):
                    relevant = True

    def close(self) -> None:
        os.close(self.fd)


def _errno_error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


class Waiter:
    """One select() over the spool watch, the signal wake-up pipe and an extra descriptor (export finished).

    `install_signals` routes SIGTERM/SIGINT to `on_signal` in the main thread, and wakes a pending `wait`.
    """

    def __init__(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.inotify: Inotify | None = None
        self.reason = ""  # why the spool is polled instead of watched, for one log line

    def install_signals(self, on_signal: Callable[[int], None]) -> None:
        def handler(signum: int, _frame: object) -> None:
            on_signal(signum)

        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def watch(self, directory: str, *, use_inotify: bool = True) -> None:
        if not use_inotify:
            self.reason = "inotify disabled"
            return
        try:
            self.inotify = Inotify(directory)
        except (OSError, AttributeError) as err:  # AttributeError: a libc without inotify symbols
            self.reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)  # not "[Errno 2]"

    def wait(self, timeout: float | None, *, spool: bool = True, extra_fd: int | None = None) -> None:
        """Return when the spool may have changed (if `spool`), a signal arrived, `extra_fd` is readable, or
        `timeout` seconds passed. Without inotify the spool counts as changed every POLL_INTERVAL."""
        fds = [self._wake_r]
        if extra_fd is not None:
            fds.append(extra_fd)
        if spool:
            if self.inotify is not None:
                if self.inotify.drain():
                    return
                fds.append(self.inotify.fd)
            else:
                timeout = POLL_INTERVAL if timeout is None else min(timeout, POLL_INTERVAL)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                readable, _, _ = select.select(fds, [], [], remaining)
            except OSError as err:
                if err.errno == errno.EINTR:
                    continue
                raise
            if self._wake_r in readable:
                _drain_pipe(self._wake_r)
                return
            if self.inotify is not None and self.inotify.fd in readable:
                if self.inotify.drain():
                    return
                continue  # only temporary files moved: keep sleeping
            return

    def close(self) -> None:
        if self.inotify is not None:
            self.inotify.close()
            self.inotify = None


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass

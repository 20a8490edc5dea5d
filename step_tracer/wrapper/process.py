"""Run one child exactly as if it had not been wrapped, the way tini does it.

One thread, no handlers: the signals we care about are blocked before the child exists and collected with
`sigtimedwait`, which also serves as the clock for timeouts and memory samples. The child gets the signal mask
and dispositions the wrapper was started with, the wrapper's own stdin/stdout/stderr, cwd and environment.

Process groups: outside a terminal (Tekton, CI) the child gets its own process group and every signal the
wrapper receives is sent to that group once, as Tekton's entrypoint does for its child; a signal sent to the
wrapper's whole group therefore reaches the step exactly once. In a terminal's foreground the child stays in the
wrapper's group so job control and the tty keep working; there the terminal's own signals (Ctrl-C, window size)
already reach the child and only signals sent to the wrapper by a process are passed on.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~20 ms here)

if not TYPE_CHECKING:
    import _signal  # `signal` itself imports enum: milliseconds on every step

if TYPE_CHECKING:
    import signal as _signal  # the C module `_signal` has no stubs; same API
    from collections.abc import Mapping, Sequence
    from resource import struct_rusage
    from typing import NoReturn, Protocol

    class Sampler(Protocol):
        """What the loop needs from a memory sampler (see `sampler.TreeSampler`)."""

        next_due: float

        def sample(self, pid: int) -> None: ...


FORWARDED = (
    _signal.SIGHUP,
    _signal.SIGINT,
    _signal.SIGQUIT,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
    _signal.SIGTERM,
    _signal.SIGWINCH,
    _signal.SIGALRM,
)
TERMINATING = frozenset({_signal.SIGHUP, _signal.SIGINT, _signal.SIGQUIT, _signal.SIGTERM})
_SI_KERNEL = 0x80

# CPython ignores these at start-up; an unwrapped step would have them at their defaults.
_RESET_TO_DEFAULT = (_signal.SIGPIPE, _signal.SIGXFSZ)


def signal_name(signo: int) -> str:
    for name in ("SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGKILL",
                 "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGCHLD", "SIGCONT",
                 "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU", "SIGXFSZ", "SIGVTALRM",
                 "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS"):  # fmt: skip
        if getattr(_signal, name, None) == signo:
            return name
    return f"SIG{signo}"


class SpawnError(Exception):
    """The command could not be started; `exit_code` is what a shell would return (127 or 126)."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ChildExit:
    """How the child ended, and what the wrapper did to it on the way."""

    __slots__ = (
        "exit_code",
        "forwarded",
        "killed",
        "pid",
        "rusage",
        "signal",
        "spawner_peak",
        "timed_out",
    )

    def __init__(self, pid: int, status: int, rusage: struct_rusage | None) -> None:
        self.pid = pid
        self.rusage = rusage
        self.signal = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        self.exit_code = 128 + self.signal if self.signal else os.waitstatus_to_exitcode(status)
        self.timed_out = False
        self.killed = False
        self.forwarded: list[tuple[int, int]] = []  # (time_ns, signo)
        # The wrapper's own resident high-water mark once the child had exec'd, in bytes (0: unknown). The kernel
        # folds it into the child's ru_maxrss (see `own_peak_rss`), so a smaller ru_maxrss says nothing.
        self.spawner_peak = 0


def _foreground_tty() -> int | None:
    """The terminal fd when the wrapper runs in that terminal's foreground process group."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return fd
        except OSError:
            continue
    return None


def _not_started(command: str, err: OSError) -> SpawnError:
    if isinstance(err, FileNotFoundError):
        return SpawnError(127, f"{command}: command not found")
    return SpawnError(126, f"{command}: {err.strerror}")


def spawn(argv: Sequence[str], env: Mapping[str, str], sigmask: set[int], own_group: bool) -> int:
    try:
        if own_group:
            return os.posix_spawnp(
                argv[0], list(argv), env, setpgroup=0, setsigmask=sigmask, setsigdef=_RESET_TO_DEFAULT
            )
        return os.posix_spawnp(argv[0], list(argv), env, setsigmask=sigmask, setsigdef=_RESET_TO_DEFAULT)
    except OSError as err:
        raise _not_started(argv[0], err) from err


#: The step's environment, when the process that started Python had to take variables out of it (the
#: self-contained wrapper's boot.py moves LD_PRELOAD and friends past its own loader, then sets this).
STARTED_ENVIRON: dict[str, str] | None = None


def end_by_signal(signo: int) -> None:
    """End the wrapper as its child ended, by signal `signo`, so that the parent reads the wait status it would
    have read without the wrapper: Tekton's entrypoint records a signalled command as exit code -1 (a plain
    128+N would read as an exit), a shell prints "Segmentation fault" and sets $? to 128+N. No core file (the
    child dumped its own). Returns only when the signal cannot end this process."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, OSError, ValueError):
        pass
    try:
        _signal.signal(signo, _signal.SIG_DFL)
    except (OSError, ValueError, RuntimeError):
        pass  # SIGKILL, SIGSTOP: their action is the default anyway
    try:
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [signo])
        os.kill(os.getpid(), signo)
    except (OSError, ValueError):
        pass


def original_environ() -> dict[str, str]:
    """The environment this process was started with, which the command must get unchanged.

    os.environ is not it: CPython edits it at start-up (PEP 538 adds LC_CTYPE=C.UTF-8 under the C locale). The
    kernel keeps the original strings, readable at /proc/self/environ.
    """
    if STARTED_ENVIRON is not None:
        return dict(STARTED_ENVIRON)
    try:
        with open("/proc/self/environ", "rb") as f:
            data = f.read()
    except OSError:
        return dict(os.environ)
    env: dict[str, str] = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def replace(argv: Sequence[str], env: Mapping[str, str]) -> NoReturn:
    """exec the command in place of the wrapper, with the signal dispositions an unwrapped step would have."""
    for signo in _RESET_TO_DEFAULT:
        _signal.signal(signo, _signal.SIG_DFL)
    try:
        os.execvpe(argv[0], list(argv), env)
    except OSError as err:
        raise _not_started(argv[0], err) from err


def own_peak_rss(status_path: str = "/proc/self/status") -> int:
    """This process's resident high-water mark (VmHWM) in bytes; 0 when /proc cannot say.

    Why it matters: posix_spawn's child shares our memory until it execs, and exec records the old memory's
    high-water mark in the child's ru_maxrss (fs/exec.c, exec_mmap; a fork copies it just the same). A wrapped
    `true` therefore "peaks" at the wrapper's ~9 MiB. Read right after the spawn, this is an upper bound of what
    was folded in: a child ru_maxrss above it is the command's own.
    """
    try:
        with open(status_path, "rb", buffering=0) as f:
            data = f.readall()
    except OSError:
        return 0
    start = data.find(b"\nVmHWM:")
    if start < 0:
        return 0
    end = data.find(b"\n", start + 1)
    fields = data[start + 7 : end if end > 0 else len(data)].split()
    try:
        return int(fields[0]) * 1024 if fields and fields[-1] == b"kB" else 0
    except ValueError:
        return 0


def run(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout: float | None = None,
    kill_after: float | None = 2.0,
    sampler: Sampler | None = None,
) -> ChildExit:
    """Start `argv`, pass signals on, enforce `timeout` (SIGTERM, then SIGKILL `kill_after` later unless that is
    None), and return once the child has been reaped."""
    waited = {_signal.SIGCHLD, *FORWARDED}
    original_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, waited)
    tty = _foreground_tty()
    own_group = tty is None
    try:
        pid = spawn(argv, env, original_mask, own_group)
        spawner_peak = own_peak_rss()  # posix_spawn returns once the child has exec'd
        child = _supervise(pid, own_group, timeout, kill_after, sampler)
        child.spawner_peak = spawner_peak
        return child
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, original_mask)


def _signal_child(pid: int, signo: int, own_group: bool) -> None:
    try:
        if own_group:
            try:
                os.killpg(pid, signo)
                return
            except ProcessLookupError:
                pass  # the child left its group (setsid); reach it directly
        os.kill(pid, signo)
    except ProcessLookupError:
        pass


def _supervise(
    pid: int, own_group: bool, timeout: float | None, kill_after: float | None, sampler: Sampler | None
) -> ChildExit:
    waited = {_signal.SIGCHLD, *FORWARDED}
    start = time.monotonic()
    term_at = start + timeout if timeout is not None else None
    kill_at: float | None = None
    timed_out = killed = False
    forwarded: list[tuple[int, int]] = []
    while True:
        reaped, status, rusage = os.wait4(pid, os.WNOHANG)
        if reaped == pid:
            result = ChildExit(pid, status, rusage)
            result.timed_out = timed_out
            result.killed = killed
            result.forwarded = forwarded
            return result
        now = time.monotonic()
        if term_at is not None and now >= term_at:
            _signal_child(pid, _signal.SIGTERM, True)
            timed_out, term_at = True, None
            kill_at = None if kill_after is None else now + kill_after  # None: SIGTERM only (GNU timeout -k 0)
        if kill_at is not None and now >= kill_at:
            _signal_child(pid, _signal.SIGKILL, True)
            killed, kill_at = True, None
        if sampler is not None and sampler.next_due <= now:
            try:
                sampler.sample(pid)
            except Exception:  # a measurement must never cost the step its supervisor
                sampler = None
        wake = min(t for t in (term_at, kill_at, sampler.next_due if sampler else None, now + 3600.0) if t is not None)
        info = _signal.sigtimedwait(waited, max(wake - now, 0.0))
        if info is None or info.si_signo == _signal.SIGCHLD:
            continue
        if not own_group and info.si_code == _SI_KERNEL:
            continue  # from the terminal: it reached the child's (shared) group already
        forwarded.append((time.time_ns(), info.si_signo))
        _signal_child(pid, info.si_signo, own_group)

"""How a step ended, in the vocabulary of the CICD semantic conventions.

`cicd.pipeline.task.run.result` is one of success, failure, error, timeout, cancellation; `error.type` is a
low-cardinality reason: `exit_code_<N>`, a signal name (`SIGSEGV`), `timeout`, `oom_kill`, `command_not_found`
or `not_executable`.
"""

from __future__ import annotations

from step_tracer.wrapper.process import TERMINATING, signal_name

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~20 ms here)

if TYPE_CHECKING:
    from step_tracer.wrapper.process import ChildExit


class Outcome:
    __slots__ = ("error_type", "message", "result")

    def __init__(self, result: str, error_type: str = "", message: str = "") -> None:
        self.result = result
        self.error_type = error_type
        self.message = message

    def __repr__(self) -> str:
        return f"Outcome({self.result!r}, {self.error_type!r}, {self.message!r})"


def not_started(exit_code: int, message: str) -> Outcome:
    return Outcome("error", "command_not_found" if exit_code == 127 else "not_executable", message)


def classify(child: ChildExit, oom_kills: int = 0, timeout: float | None = None) -> Outcome:
    """Order matters: our own timeout explains a SIGTERM/SIGKILL better than the signal does, an OOM kill
    explains a failure better than its exit code, and a stop we passed on from outside is a cancellation."""
    if child.exit_code == 0:
        return Outcome("success")
    if child.timed_out:
        after = f" after {timeout:g}s" if timeout is not None else ""
        how = "killed" if child.killed else "terminated"
        return Outcome("timeout", "timeout", f"timed out{after}; {how}")
    if oom_kills > 0:
        return Outcome("error", "oom_kill", f"out of memory: {oom_kills} process(es) OOM-killed in the container")
    stops = [signo for _, signo in child.forwarded if signo in TERMINATING]
    if child.signal and child.signal not in stops:
        # Killed by a signal nobody asked us to pass on: a command that ignored the SIGINT we passed on and then
        # crashed (SIGSEGV) or was SIGKILLed died of that, not of the stop.
        name = signal_name(child.signal)
        after = f" after {signal_name(stops[0])} was passed on" if stops else ""
        return Outcome("failure", name, f"killed by {name}{after}")
    if stops:
        name = signal_name(child.signal or stops[0])
        return Outcome("cancellation", name, f"cancelled by {name}")
    return Outcome("failure", f"exit_code_{child.exit_code}", f"exit code {child.exit_code}")

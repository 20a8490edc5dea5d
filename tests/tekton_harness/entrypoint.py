"""Stand-in for Tekton's /tekton/bin/entrypoint (tektoncd/pipeline cmd/entrypoint + pkg/entrypoint), one process per
step container, run as `python -I -S entrypoint.py FLAGS -- ARGS`.

It reproduces what a wrapped step can observe: the wait for the previous step's post file (`.err` = skip), the child
in its own process group (Setpgid), every received signal but SIGCHLD re-sent to that group, `-timeout` as a SIGKILL
to the direct child only (Go's exec.CommandContext) with Reason=TimeoutExceeded and exit 1, `-on_error continue`
(recorded exit code, exit 0), exit 255 for a child killed by a signal (Go's os.Exit(-1)), the post file, the
exitCode file, results read into the termination message (JSON of {key,value,type}, at most 4096 bytes).

Stdlib only and no heavy imports: it starts once per step, 200 TaskRuns in a row included.
Harness-only flags (not Tekton's): `-harness_poll SECONDS` (wait-file polling; Tekton polls every 1 s),
`-harness_child_pid_file PATH` (where the harness learns the child's pid, to SIGKILL it mid-step) and
`-harness_results_dir DIR` (where /tekton/results is on this machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

MAX_TERMINATION_MESSAGE = 4096
TASKRUN_RESULT = 1
INTERNAL_RESULT = 3
STEP_RESULT = 4
PLATFORM_COMMANDS_ENV = "TEKTON_PLATFORM_COMMANDS"

_BOOL_FLAGS = frozenset({"wait_file_content", "breakpoint_on_failure", "debug_before_step"})
_VALUE_FLAGS = frozenset(
    {
        "entrypoint",
        "wait_file",
        "post_file",
        "termination_path",
        "results",
        "step_results",
        "timeout",
        "on_error",
        "step_metadata_dir",
        "harness_poll",
        "harness_child_pid_file",
        "harness_results_dir",
    }
)
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Skip(Exception):
    """The previous step failed: `<wait_file>.err` exists (Tekton's ErrSkipPreviousStepFailed)."""


class MessageTooLong(Exception):
    pass


def log(message: str) -> None:
    """Go's log package: date and time, then the message, on stderr."""
    stamp = time.strftime("%Y/%m/%d %H:%M:%S")
    sys.stderr.write(f"{stamp} {message}\n")
    sys.stderr.flush()


def parse_go_duration(text: str) -> float:
    """time.ParseDuration: "1h0m0s", "1.5s", "300ms", "0"; returns seconds."""
    if text in ("0", "+0", "-0"):
        return 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    rest = text.lstrip("+-")
    total, number, i = 0.0, "", 0
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    while i < len(rest):
        ch = rest[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = next((u for u in ("ns", "us", "µs", "ms") if rest.startswith(u, i)), ch)
        if unit not in _UNITS or not number:
            raise ValueError(f"invalid duration {text!r}")
        total += float(number) * _UNITS[unit]
        number, i = "", i + len(unit)
    if number:
        raise ValueError(f"missing unit in duration {text!r}")
    return sign * total


def parse_flags(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Go's flag package over what precedes the first "--" (extractArgs); what follows it is the command's."""
    args = list(argv)
    if "--" in args:
        cut = args.index("--")
        flags_part, command_args = args[:cut], args[cut + 1 :]
    else:
        flags_part, command_args = args, []
    flags: dict[str, str] = {}
    i = 0
    while i < len(flags_part):
        arg = flags_part[i]
        if not arg.startswith("-") or arg == "-":
            # flag.Parse stops at the first non-flag; Tekton never produces one before "--".
            command_args = flags_part[i:] + command_args
            break
        name, eq, value = arg.lstrip("-").partition("=")
        if name in _BOOL_FLAGS:
            flags[name] = value if eq else "true"
            i += 1
        elif name in _VALUE_FLAGS:
            if eq:
                flags[name] = value
                i += 1
            else:
                if i + 1 >= len(flags_part):
                    raise SystemExit(f"flag needs an argument: -{name}")
                flags[name] = flags_part[i + 1]
                i += 2
        else:
            raise SystemExit(f"flag provided but not defined: -{name}")
    return flags, command_args


def platform_key() -> str:
    machine = os.uname().machine.lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}
    return f"linux/{arch.get(machine, machine)}"


def go_json(value: object) -> str:
    """encoding/json.Marshal: compact, UTF-8 kept, HTML-sensitive characters escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028")):
        text = text.replace(raw, escaped)
    return text.replace("\u2029", "\\u2029")


def write_termination(path: str, results: list[dict[str, object]]) -> None:
    """termination.WriteMessage: appends to what the file already holds; fails above 4096 bytes."""
    if not path:
        return
    existing: list[dict[str, object]] = []
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data.strip():
            parsed = json.loads(data)
            if isinstance(parsed, list):
                existing = parsed
    except FileNotFoundError:
        pass
    except ValueError:
        existing = []
    output = go_json(existing + results).encode()
    if len(output) > MAX_TERMINATION_MESSAGE:
        raise MessageTooLong(
            f"termination message is above max allowed size {MAX_TERMINATION_MESSAGE}, caused by large task result"
        )
    with open(path, "wb") as f:
        f.write(output)


def write_post(path: str, content: str = "") -> None:
    if not path:
        return
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        f.write(content)


def write_exit_code(metadata: str, content: str) -> None:
    if metadata:
        write_post(os.path.join(metadata, "exitCode"), content)


def started_at() -> dict[str, object]:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return {"key": "StartedAt", "value": stamp, "type": INTERNAL_RESULT}


def reason(value: str) -> dict[str, object]:
    return {"key": "Reason", "value": value, "type": INTERNAL_RESULT}


def wait_for(path: str, expect_content: bool, poll: float) -> None:
    """realWaiter.Wait: the file (non-empty when asked), or `.err` next to it means skip."""
    if not path:
        return
    while True:
        try:
            st = os.stat(path)
            if not expect_content or st.st_size > 0:
                return
        except FileNotFoundError:
            pass
        if os.path.exists(path + ".err"):
            raise Skip("error file present, bail and skip the step")
        time.sleep(poll)


def read_results(directory: str, names: str, kind: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for name in names.split(","):
        if not name:
            continue
        try:
            with open(os.path.join(directory, name), "rb") as f:
                value = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            continue
        out.append({"key": name, "value": value, "type": kind})
    return out


def exec_environment() -> dict[bytes, bytes]:
    """The environment this process was started with: CPython's C-locale coercion (PEP 538) adds LC_CTYPE to
    os.environ, which Go's entrypoint would never pass on; /proc/self/environ still holds the original."""
    with open("/proc/self/environ", "rb") as f:
        block = f.read()
    env: dict[bytes, bytes] = {}
    for entry in block.split(b"\0"):
        key, eq, value = entry.partition(b"=")
        if eq and key:
            env.setdefault(key, value)
    return env


class ChildEnd:
    __slots__ = ("deadline_exceeded", "exit_code", "signaled", "start_error")

    def __init__(self) -> None:
        self.exit_code = 0
        self.signaled = False
        self.deadline_exceeded = False
        self.start_error = ""


def run(command: list[str], timeout: float, pid_file: str) -> ChildEnd:
    """realRunner.Run: Setpgid child, signals to its group, SIGKILL to the child alone when the deadline passes."""
    end = ChildEnd()
    forwardable = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
    # The child starts with default dispositions (Go leaves none ignored); CPython ignores SIGPIPE and SIGXFSZ.
    to_default = [s for s in forwardable if signal.getsignal(s) == signal.SIG_IGN]
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, forwardable)
    try:
        try:
            pid = os.posix_spawnp(
                command[0], command, exec_environment(), setpgroup=0, setsigmask=old_mask, setsigdef=to_default
            )
        except OSError as err:
            if "/" in command[0] or not isinstance(err, FileNotFoundError):
                end.start_error = f"fork/exec {command[0]}: {err.strerror.lower() if err.strerror else err}"
            else:
                end.start_error = f'exec: "{command[0]}": executable file not found in $PATH'
            return end
        if pid_file:
            tmp = pid_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(pid))
            os.replace(tmp, pid_file)
        deadline = time.monotonic() + timeout if timeout > 0 else None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                # context deadline: exec.CommandContext's default Cancel is Process.Kill, the child alone.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                end.deadline_exceeded = True
                deadline = None
                continue
            info = signal.sigwaitinfo(forwardable) if remaining is None else signal.sigtimedwait(forwardable, remaining)
            if info is None:
                continue
            if info.si_signo == signal.SIGCHLD:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == pid:
                    if os.WIFSIGNALED(status):
                        end.signaled = True
                        end.exit_code = -1
                    else:
                        end.exit_code = os.waitstatus_to_exitcode(status)
                    return end
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, info.si_signo)
    finally:
        # signal.Reset(): from here on a signal has its default effect on the entrypoint itself.
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def go(flags: dict[str, str], command: list[str]) -> int:
    """Entrypointer.Go plus main()'s exit-code mapping."""
    termination = flags.get("termination_path", "/tekton/termination")
    post = flags.get("post_file", "")
    metadata = flags.get("step_metadata_dir", "")
    on_error = flags.get("on_error", "")
    poll = float(flags.get("harness_poll", "1"))
    output: list[dict[str, object]] = []
    try:
        if metadata:
            os.makedirs(os.path.join(metadata, "results"), exist_ok=True)
            os.makedirs(os.path.join(metadata, "artifacts"), exist_ok=True)
        for wait_file in flags.get("wait_file", "").split(","):
            try:
                wait_for(wait_file, flags.get("wait_file_content") == "true", poll)
            except Skip:
                write_post(post + ".err" if post else "")
                output += [started_at(), reason("Skipped")]
                log("Skipping step because a previous step failed")
                return 1
        output.append(started_at())
        timeout = parse_go_duration(flags["timeout"]) if flags.get("timeout") else 0.0
        if timeout < 0:
            write_post(post + ".err" if post else "")
            log("Error executing command: negative timeout specified")
            return 1
        end = run(command, timeout, flags.get("harness_child_pid_file", ""))
        code: int
        if end.deadline_exceeded:
            write_post(post + ".err" if post else "")
            output.append(reason("TimeoutExceeded"))
            log("context deadline exceeded")
            code = 1
        elif end.start_error:
            write_post(post + ".err" if post else "")
            log(f"Error executing command: {end.start_error}")
            code = 1
        elif end.exit_code != 0 and on_error == "continue":
            output.append({"key": "ExitCode", "value": str(end.exit_code), "type": INTERNAL_RESULT})
            write_post(post)
            write_exit_code(metadata, str(end.exit_code))
            code = 0
        elif end.exit_code == 0:
            write_post(post)
            write_exit_code(metadata, "0")
            code = 0
        else:
            write_post(post + ".err" if post else "")
            code = 255 if end.signaled else end.exit_code
        results_dir = flags.get("harness_results_dir", "/tekton/results")
        results = read_results(results_dir, flags.get("results", ""), TASKRUN_RESULT)
        results += read_results(os.path.join(metadata, "results"), flags.get("step_results", ""), STEP_RESULT)
        if results:
            write_termination(termination, results)
        return code
    except MessageTooLong as err:
        log(str(err))
        return 1
    finally:
        try:
            write_termination(termination, output)
        except MessageTooLong as err:
            log(f"Error while writing message: {err}")
            os._exit(1)


def main(argv: Sequence[str]) -> int:
    # Go's runtime: until Run() calls signal.Notify, SIGINT/SIGTERM/SIGHUP end the process.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    flags, command_args = parse_flags(argv)
    if flags.get("entrypoint"):
        command = [flags["entrypoint"], *command_args]
    else:
        commands = json.loads(os.environ.get(PLATFORM_COMMANDS_ENV, "null") or "null")
        if not isinstance(commands, dict):
            log(f"{PLATFORM_COMMANDS_ENV} is not a JSON object")
            return 1
        key = platform_key()
        chosen = commands.get(key) or commands.get(key.rsplit("/", 1)[0])
        if not chosen:
            log(f'could not find command for platform "{key}"')
            return 1
        command = [*chosen, *command_args]
    return go(flags, command)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code & 0xFF)

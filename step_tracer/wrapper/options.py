"""Options of `step-tracer run`, parsed without click.

click costs more to import than a whole wrapped `true` may take, so the hot path parses its own small option
table. `step_tracer.cli` builds the click command (help text, `--help`) from the same table, so the two
cannot drift apart.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~20 ms here)

if TYPE_CHECKING:
    from collections.abc import Sequence

# (flag, takes a value, repeatable, help). The single source for the fast parser and click's help.
OPTIONS: tuple[tuple[str, bool, bool, str], ...] = (
    ("--name", True, False, "Span name (default: the executable's name, or the Tekton step name)."),
    ("--attr", True, True, "Extra span attribute KEY=VALUE (repeatable)."),
    ("--timeout", True, False, "Stop the command after DURATION: SIGTERM to its process group, then SIGKILL."),
    ("--kill-after", True, False, "Grace between SIGTERM and SIGKILL on timeout (default 2s)."),
    ("--record-args", False, False, "Record the command's arguments, with secret-looking values masked."),
    ("--sample-interval", True, False, "Process-tree memory sampling interval (default 2s; 0 turns it off)."),
    ("--tekton-step", True, False, "The Tekton step's name (set by the patcher)."),
    ("--tekton-step-index", True, False, "The Tekton step's index in its Task (set by the patcher)."),
    (
        "--tekton-step-timeout",
        True,
        False,
        "The Tekton step's timeout: the wrapper stops the command early enough to record the span before "
        "Tekton's SIGKILL.",
    ),
)

_TAKES_VALUE = {flag: takes for flag, takes, _, _ in OPTIONS}

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class UsageError(Exception):
    """Bad wrapper options. `command` is set when the command to run could still be found (after `--`)."""

    def __init__(self, message: str, command: list[str] | None = None) -> None:
        super().__init__(message)
        self.command = command


class RunOptions:
    __slots__ = (
        "attrs",
        "command",
        "display_command",
        "kill_after",
        "name",
        "program",
        "record_args",
        "sample_interval",
        "tekton_step",
        "tekton_step_index",
        "tekton_step_timeout",
        "timeout",
    )

    def __init__(self) -> None:
        self.command: list[str] = []
        # What the span names as the command when `command` is only how it runs (a script staged in a memfd).
        self.display_command: list[str] = []
        self.program = ""
        self.name = ""
        self.attrs: dict[str, str] = {}
        self.timeout: float | None = None
        self.kill_after = 2.0
        self.record_args = False
        self.sample_interval = 2.0
        self.tekton_step = ""
        self.tekton_step_index: int | None = None
        self.tekton_step_timeout: float | None = None


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration ("1h30m", "500ms", "1h0m0s") or a plain number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    total, number, i = 0.0, "", 0
    if not text:
        raise ValueError("empty duration")
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = text[i : i + 2] if text[i : i + 2] in _UNITS else ch
        if unit not in _UNITS or not number:
            raise ValueError(f"invalid duration {text!r}")
        total += float(number) * _UNITS[unit]
        number, i = "", i + len(unit)
    if number:
        raise ValueError(f"invalid duration {text!r}: missing unit after {number}")
    return total


def _apply(opts: RunOptions, flag: str, value: str) -> None:
    if flag == "--name":
        opts.name = value
    elif flag == "--attr":
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise ValueError(f"--attr takes KEY=VALUE, got {value!r}")
        opts.attrs[key] = val
    elif flag == "--timeout":
        opts.timeout = parse_duration(value)
    elif flag == "--kill-after":
        opts.kill_after = parse_duration(value)
    elif flag == "--sample-interval":
        opts.sample_interval = parse_duration(value)
    elif flag == "--tekton-step":
        opts.tekton_step = value
    elif flag == "--tekton-step-index":
        opts.tekton_step_index = int(value)
    elif flag == "--tekton-step-timeout":
        opts.tekton_step_timeout = parse_duration(value)


def wants_help(argv: Sequence[str]) -> bool:
    """True when `--help`/`-h` stands among the wrapper's own options (not in the command's arguments)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--help", "-h"):
            return True
        if arg == "--" or not arg.startswith("-"):
            return False
        i += 2 if _TAKES_VALUE.get(arg) else 1
    return False


def parse(argv: Sequence[str]) -> RunOptions:
    """Parse `run`'s arguments (without the leading "run"). Options end at `--` or at the first non-option."""
    opts = RunOptions()
    args = list(argv)
    after_dashdash = args[args.index("--") + 1 :] if "--" in args else None
    i = 0
    try:
        while i < len(args):
            arg = args[i]
            if arg == "--":
                i += 1
                break
            if not arg.startswith("-") or arg == "-":
                break
            flag, eq, inline = arg.partition("=")
            if flag not in _TAKES_VALUE:
                raise ValueError(f"unknown option {flag}")
            if flag == "--record-args":
                if eq:
                    raise ValueError("--record-args takes no value")
                opts.record_args = True
                i += 1
                continue
            if eq:
                value = inline
                i += 1
            elif i + 1 < len(args):
                value = args[i + 1]
                i += 2
            else:
                raise ValueError(f"{flag} needs a value")
            _apply(opts, flag, value)
    except ValueError as err:
        raise UsageError(str(err), after_dashdash or None) from err
    opts.command = args[i:]
    if not opts.command:
        raise UsageError("no command given: step-tracer run [OPTIONS] -- CMD [ARGS...]")
    return opts

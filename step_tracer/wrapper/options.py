"""Options of `step-tracer run`, parsed without click.

click costs more to import than a whole wrapped `true` may take, so the hot path parses its own small option
table. `step_tracer.cli` builds the click command (help text, `--help`) from the same table, so the two
cannot drift apart.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~20 ms here)

if TYPE_CHECKING:
    from collections.abc import Sequence

# (flag, placeholder of its value or "" for a flag without one, repeatable, help). The single source for the fast
# parser and click's help.
OPTIONS: tuple[tuple[str, str, bool, str], ...] = (
    ("--name", "NAME", False, "Span name (default: the executable's name, or the Tekton step name)."),
    ("--attr", "KEY=VALUE", True, "Extra span attribute (repeatable)."),
    (
        "--timeout",
        "DURATION",
        False,
        "Stop the command after DURATION: SIGTERM to its process group, SIGKILL --kill-after later; the span "
        "is still written, with the result `timeout`. 0 means no timeout.",
    ),
    ("--kill-after", "DURATION", False, "Grace between SIGTERM and SIGKILL on --timeout (default 2s; 0: no SIGKILL)."),
    ("--record-args", "", False, "Record the command's arguments, with secret-looking values masked."),
    ("--sample-interval", "DURATION", False, "Process-tree memory sampling interval (default 2s; 0 turns it off)."),
    ("--tekton-step", "NAME", False, "The Tekton step's name (set by the patcher)."),
    ("--tekton-step-index", "N", False, "The Tekton step's index in its Task, from 0 (set by the patcher)."),
    (
        "--tekton-step-timeout",
        "DURATION",
        False,
        "The Tekton step's timeout (set by the patcher; 0 means none). Recorded, not enforced: Tekton's entrypoint "
        "kills the step at the deadline, so the wrapper saves its measurements shortly before.",
    ),
)

_PLACEHOLDER = {flag: placeholder for flag, placeholder, _, _ in OPTIONS}
_TAKES_VALUE = {flag: bool(placeholder) for flag, placeholder in _PLACEHOLDER.items()}

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
        self.kill_after: float | None = 2.0
        self.record_args = False
        self.sample_interval = 2.0
        self.tekton_step = ""
        self.tekton_step_index: int | None = None
        self.tekton_step_timeout: float | None = None


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration ("1h30m", "500ms", "1h0m0s") or a plain number of seconds.

    Raises ValueError with a message fit for the user: a negative, infinite or NaN duration means nothing here.
    """
    text = text.strip()
    seconds = -1.0 if text.startswith("-") else _duration(text)
    if not seconds >= 0.0 or seconds == float("inf"):  # `not >=` also catches NaN
        raise ValueError(f"invalid duration {text!r}: must be 0 or more, e.g. 90s, 1h30m, 500ms")
    return seconds


def _duration(text: str) -> float:
    if not text:
        raise ValueError("empty duration: use e.g. 90s, 1h30m, 500ms")
    try:
        return float(text)
    except ValueError:
        pass
    total, number, i = 0.0, "", 0
    bad = f"invalid duration {text!r}: use e.g. 90s, 1h30m, 500ms"
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = text[i : i + 2] if text[i : i + 2] in _UNITS else ch
        if unit not in _UNITS or not number:
            raise ValueError(bad)
        try:
            total += float(number) * _UNITS[unit]
        except ValueError:  # "1..5s"
            raise ValueError(bad) from None
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
    elif flag == "--tekton-step":
        opts.tekton_step = value
    elif flag == "--tekton-step-index":
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"--tekton-step-index takes a step index N (0, 1, ...), got {value!r}")
        opts.tekton_step_index = int(value)
    else:
        try:
            seconds = parse_duration(value)
        except ValueError as err:
            raise ValueError(f"{flag}: {err}") from None
        if flag == "--timeout":
            opts.timeout = seconds or None  # 0: no timeout, as GNU timeout and Tekton read it
        elif flag == "--kill-after":
            opts.kill_after = seconds or None  # 0: never SIGKILL, as GNU timeout reads it
        elif flag == "--sample-interval":
            opts.sample_interval = seconds
        elif flag == "--tekton-step-timeout":
            opts.tekton_step_timeout = seconds or None  # Tekton: 0 means no timeout


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


def _is_ours(arg: str) -> bool:
    """`--` or one of our flags where a value should be: the value is missing."""
    return arg == "--" or arg.partition("=")[0] in _TAKES_VALUE


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
            elif i + 1 < len(args) and not _is_ours(args[i + 1]):
                value = args[i + 1]
                i += 2
            else:  # `--name -- cmd`: a value forgotten, not a span named "--" (`--name=--` says it on purpose)
                raise ValueError(f"{flag} needs a value: {flag} {_PLACEHOLDER[flag]}")
            _apply(opts, flag, value)
    except ValueError as err:
        raise UsageError(str(err), after_dashdash or None) from err
    opts.command = args[i:]
    if not opts.command:
        raise UsageError("no command given: step-tracer run [OPTIONS] -- CMD [ARGS...]")
    return opts

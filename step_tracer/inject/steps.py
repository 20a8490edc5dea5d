"""How each kind of step (or StepAction) gets wrapped.

- `command` steps: the wrapper and its options go in front of the command; `args` stay as they are.
- `script` steps: a new shebang line runs the wrapper, which runs the rest of the file (args still arrive
  as "$@", and `$(params...)` substitution in the script is unaffected).
- steps with neither: the image ENTRYPOINT runs; wrapped only when it is known (stepTemplate command or a
  registry lookup), otherwise left alone and reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from step_tracer.inject.model import (
    DEFAULT_SCRIPT_PREAMBLE,
    MAX_SHEBANG_BYTES,
    InjectError,
    InjectOptions,
    InsertItems,
    Location,
    Note,
    Op,
    Path,
    PrefixScript,
    Problem,
    Replace,
    ReplaceFirstLine,
    ReplaceItems,
    Resolver,
    SetKey,
    StepReport,
    StepState,
)


@dataclass
class StepPlan:
    location: Location
    index: int
    ops: list[Op] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    reports: list[StepReport] = field(default_factory=list)

    def finish(self, state: StepState, reason: str = "", level: Literal["info", "warning"] | None = None) -> StepPlan:
        self.reports.append(StepReport(self.location, self.index, state, reason))
        if level is not None:
            self.notes.append(Note(level, self.location, reason))
        return self


def step_label(step: Mapping[str, Any], index: int) -> str:
    """The name Tekton gives the step's container (minus "step-"): its name, or "unnamed-<index>"."""
    name = step.get("name")
    return str(name) if name not in (None, "") else f"unnamed-{index}"


def wrapper_command(options: InjectOptions, name: str, index: int, timeout: str | None) -> list[str]:
    argv = [options.wrapper, "run", "--tekton-step", name, "--tekton-step-index", str(index)]
    if timeout:
        argv += ["--tekton-step-timeout", timeout]
    return [*argv, "--"]


def shebang_line(options: InjectOptions, name: str, index: int, timeout: str | None) -> str:
    line = f"#!{options.wrapper} run-script --tekton-step={name} --tekton-step-index={index}"
    if timeout:
        line += f" --tekton-step-timeout={timeout}"
    return line


def plan_step(
    step: Any,
    *,
    path: Path,
    index: int,
    location: Location,
    options: InjectOptions,
    resolve: Resolver | None,
    template: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> StepPlan:
    """Plan the wrapping of one step (or of a StepAction's spec, with `name` = the StepAction's name).

    `path` addresses the step mapping; `template` is the Task's stepTemplate (image/command fallbacks).
    """
    if not isinstance(step, Mapping):
        raise InjectError([Problem(location.at_step(str(index)), "step is not a mapping")])
    label = name if name is not None else step_label(step, index)
    loc = location.at_step(label)
    plan = StepPlan(loc, index)
    if "ref" in step:
        return plan.finish("ref", "StepAction reference left as is (patch the StepAction resource itself)", "info")

    command = step.get("command")
    script = step.get("script")
    if command is not None and not (isinstance(command, list) and all(isinstance(c, str) for c in command)):
        raise InjectError([Problem(loc, "command must be a list of strings")])
    if script is not None and not isinstance(script, str):
        raise InjectError([Problem(loc, "script must be a string")])
    raw_timeout = step.get("timeout")
    timeout = None if raw_timeout in (None, "") else str(raw_timeout)

    if command and script:
        # Invalid for Tekton; validation of the result reports it with the file, resource and step.
        return plan.finish("unwrapped", "step sets both script and command", "warning")

    if script:
        return _plan_script(plan, path, label, script, timeout, options)

    if command:
        end = _wrapped_prefix(command, options)
        if end:
            want = wrapper_command(options, label, index, timeout)
            return _update_command(plan, (*path, "command"), command[:end], want)
        plan.ops.append(InsertItems((*path, "command"), 0, tuple(wrapper_command(options, label, index, timeout))))
        return plan.finish("wrapped")

    entrypoint, reason = _entrypoint(step, template, resolve)
    if entrypoint is None:
        return plan.finish("unwrapped", reason, "warning")
    wrapped = [*wrapper_command(options, label, index, timeout), *entrypoint]
    if command == []:
        plan.ops.append(InsertItems((*path, "command"), 0, tuple(wrapped)))
    else:
        plan.ops.append(SetKey(path, "command", wrapped, before=("args",), after=("image",)))
    plan.notes.append(Note("info", loc, f"{reason}: {entrypoint!r}"))
    return plan.finish("wrapped")


def _plan_script(
    plan: StepPlan, path: Path, label: str, script: str, timeout: str | None, options: InjectOptions
) -> StepPlan:
    loc, index = plan.location, plan.index
    have = script.partition("\n")[0]
    if _is_our_shebang(have, options):
        want, why_not = _shebang_for(options, label, index, timeout)
        if have.rstrip("\r") == want:
            return plan.finish("already")
        if why_not:
            plan.notes.append(Note("warning", loc, f"already wrapped, but cannot be brought up to date: {why_not}"))
            return plan.finish("already")
        plan.ops.append(ReplaceFirstLine(path, "script", want))
        return plan.finish("stale", _what_changed(_options_of(have.split()[2:]), want.split()[2:]))
    # Tekton decides on the trimmed script (strings.TrimSpace) whether it has a shebang or is PowerShell.
    trimmed = script.lstrip()
    if trimmed.startswith("#!win"):
        return plan.finish("unwrapped", "Windows (#!win) scripts are not wrapped", "warning")
    line, why_not = _shebang_for(options, label, index, timeout)
    if why_not:
        return plan.finish("unwrapped", why_not, "warning")
    prefix = line + "\n"
    if not trimmed.startswith("#!"):
        # Tekton adds this preamble only to scripts without "#!"; ours now has one, so add it ourselves.
        prefix += DEFAULT_SCRIPT_PREAMBLE
    elif not script.startswith("#!"):
        plan.notes.append(
            Note(
                "warning",
                loc,
                "the script's #! line is preceded by blank space: Tekton adds no preamble and the kernel "
                "does not honour that #!, so the rest of the script has no interpreter",
            )
        )
    plan.ops.append(PrefixScript(path, "script", prefix))
    return plan.finish("wrapped")


def _entrypoint(
    step: Mapping[str, Any], template: Mapping[str, Any] | None, resolve: Resolver | None
) -> tuple[list[str] | None, str]:
    """The command a command-less, script-less step runs, or None and why it is unknown."""
    template = template or {}
    inherited = template.get("command")
    if inherited and isinstance(inherited, list) and all(isinstance(c, str) for c in inherited):
        # stepTemplate fields apply to steps that leave them unset, command included.
        return list(inherited), "command taken from stepTemplate"
    image = step.get("image") or template.get("image")
    if resolve is None:
        return None, "runs its image ENTRYPOINT, which is unknown without an entrypoint lookup"
    if not isinstance(image, str) or not image:
        return None, "no image to look the entrypoint up in"
    if "$(" in image:
        return None, f"image {image} is parameterised; its entrypoint cannot be looked up"
    try:
        entrypoint = resolve(image)
    except Exception as exc:
        return None, f"entrypoint lookup for {image} failed: {exc}"
    if not entrypoint:
        return None, f"entrypoint of {image} is unknown"
    return list(entrypoint), f"entrypoint of {image} looked up"


def _shebang_for(options: InjectOptions, label: str, index: int, timeout: str | None) -> tuple[str, str]:
    """The #! line for a script step, and why it cannot be written ("" when it can)."""
    if any(c.isspace() for c in label) or (timeout is not None and any(c.isspace() for c in timeout)):
        return "", "step name or timeout contains whitespace (cannot go on a #! line)"
    line = shebang_line(options, label, index, timeout)
    if len(line.encode()) > MAX_SHEBANG_BYTES:
        return "", f"the #! line would exceed {MAX_SHEBANG_BYTES} bytes"
    return line, ""


def _is_wrapper(path: str, options: InjectOptions) -> bool:
    """The wrapper this run writes, or one an earlier run wrote with another --wrapper (same program name)."""
    return path == options.wrapper or (path.startswith("/") and path.rpartition("/")[2] == "step-tracer")


def _is_our_shebang(line: str, options: InjectOptions) -> bool:
    words = line[2:].split() if line.startswith("#!") else []
    return len(words) >= 2 and _is_wrapper(words[0], options) and words[1] == "run-script"


def _wrapped_prefix(command: list[str], options: InjectOptions) -> int:
    """The length of the wrapper's part of an already-wrapped command (through its `--`), or 0."""
    if len(command) < 3 or not _is_wrapper(command[0], options) or command[1] != "run" or "--" not in command:
        return 0
    return command.index("--") + 1


def _options_of(argv: list[str]) -> dict[str, str]:
    """The wrapper's --tekton-step* options, whichever of `--name value` and `--name=value` was written."""
    got: dict[str, str] = {}
    it = iter(argv)
    for arg in it:
        if arg == "--":
            break
        key, eq, value = arg.partition("=")
        if key.startswith("--tekton-step"):
            got[key] = value if eq else next(it, "")
    return got


def _what_changed(have: dict[str, str], want_argv: list[str]) -> str:
    """What an outdated wrapper's options say against what the step now needs, for --check and the summary."""
    want = _options_of(want_argv)
    words = {"--tekton-step": "name", "--tekton-step-index": "index", "--tekton-step-timeout": "timeout"}
    changes = [
        f"{word} {have.get(key, 'unset')} -> {want.get(key, 'unset')}"
        for key, word in words.items()
        if have.get(key) != want.get(key)
    ]
    return "wrapper options out of date (" + (", ".join(changes) or "wrapper path") + ")"


def _update_command(plan: StepPlan, path: Path, have: list[str], want: list[str]) -> StepPlan:
    """Bring an already-wrapped command's wrapper part up to date, item by item when only values changed."""
    if have == want:
        return plan.finish("already")
    if len(have) == len(want):
        plan.ops += [Replace((*path, i), w) for i, (h, w) in enumerate(zip(have, want, strict=True)) if h != w]
    else:
        plan.ops.append(ReplaceItems(path, 0, len(have), tuple(want)))
    return plan.finish("stale", _what_changed(_options_of(have[2:]), want[2:]))

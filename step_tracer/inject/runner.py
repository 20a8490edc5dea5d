"""Patch texts and files: the parts `step-tracer inject` calls."""

from __future__ import annotations

import copy
import difflib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from step_tracer.inject import documents
from step_tracer.inject.model import (
    InjectError,
    InjectOptions,
    Location,
    ParseError,
    PatchResult,
    Problem,
    Resolver,
)
from step_tracer.inject.resources import Plan, plan_document
from step_tracer.inject.validate import validate_document

SUFFIXES = (".yaml", ".yml", ".json")
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "node_modules"})


def patch_text(
    text: str, options: InjectOptions, *, source: str = "<text>", fmt: documents.Format = "auto"
) -> PatchResult:
    """Instrument every Task, Pipeline and StepAction in `text` (a YAML stream or a JSON document).

    Raises InjectError (collisions, invalid result) or its subclass ParseError (not YAML/JSON).
    """
    return _patch(text, options, source, fmt, _resolver(options))


def _resolver(options: InjectOptions) -> Resolver | None:
    if not options.resolve_entrypoints or options.resolve is None:
        return None
    lookup = options.resolve
    cache: dict[str, list[str] | None] = {}

    def resolve(image: str) -> list[str] | None:
        # One registry round trip per image per run, however many steps share it.
        if image not in cache:
            cache[image] = lookup(image)
        return cache[image]

    return resolve


def _patch(
    text: str, options: InjectOptions, source: str, fmt: documents.Format, resolve: Resolver | None
) -> PatchResult:
    stream = documents.parse(text, source, fmt)
    plans = [plan_document(doc, source=source, options=options, resolve=resolve) for doc in stream.docs]
    result = PatchResult(
        text=text,
        changed=False,
        notes=[n for p in plans for n in p.notes],
        steps=[s for p in plans for s in p.steps],
        additions_missing=[loc for p in plans for loc in p.additions_missing],
        additions_stale=[stale for p in plans for stale in p.additions_stale],
        resources=sum(p.resources for p in plans),
    )
    docs = stream.docs
    if any(p.ops for p in plans):
        new_text = documents.render(stream, [p.ops for p in plans], source)
        docs = _verify(stream, plans, new_text, source, options)
        result.text, result.changed = new_text, new_text != text
    problems = [p for doc in docs for p in validate_document(doc, source)]
    if problems:
        raise InjectError(problems)
    return result


def _verify(
    stream: documents.Stream, plans: Sequence[Plan], new_text: str, source: str, options: InjectOptions
) -> list[object]:
    """The output must parse to the input plus the planned edits, and need no further edits."""
    expected = copy.deepcopy(stream.docs)
    for doc, plan in zip(expected, plans, strict=True):
        documents.apply_to_data(doc, plan.ops)
    try:
        got = documents.load_data(new_text[len(stream.bom) :], stream.format)
    except Exception as exc:
        raise InjectError([Problem(Location(source), f"internal error: patched text does not parse: {exc}")]) from None
    if not _same(got, expected):
        raise InjectError([Problem(Location(source), "internal error: patched text differs from the planned edit")])
    again = [plan_document(doc, source=source, options=options, resolve=None) for doc in got]
    if any(p.ops for p in again):
        raise InjectError([Problem(Location(source), "internal error: patching is not idempotent here")])
    return got


def _same(a: object, b: object) -> bool:
    """Deep equality where NaN equals NaN (a `.nan` in the input must not look like a bad edit)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return type(a) is type(b) and a == b


def _expand(paths: Sequence[str], err: TextIO) -> Iterator[tuple[str, Path | None, bool]]:
    """(display name, path or None for stdin, explicitly named) for every input."""
    for arg in paths:
        if arg == "-":
            yield "<stdin>", None, True
            continue
        path = Path(arg)
        if not path.is_dir():
            yield arg, path, True
            continue
        found = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            found += [Path(root, f) for f in files if f.endswith(SUFFIXES)]
        if not found:
            err.write(f"warning: {arg}: no *.yaml, *.yml or *.json files\n")
        for f in sorted(found):
            yield str(f), f, False


def _read(path: Path | None, stdin: TextIO) -> str:
    """The input's text, as it is (line endings kept). Raises OSError or UnicodeDecodeError."""
    if path is None:
        buffer = getattr(stdin, "buffer", None)
        return buffer.read().decode("utf-8") if buffer is not None else stdin.read()
    with open(path, "rb") as f:
        return f.read().decode("utf-8")


def read_problem(display: str, exc: OSError | UnicodeDecodeError) -> str:
    """One line for an input that cannot be read as text: the system's words, or what the bytes are."""
    if isinstance(exc, UnicodeDecodeError):
        if b"\0" in exc.object[:8192]:
            return f"{display}: a binary file, not YAML or JSON text"
        return f"{display}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
    if isinstance(exc, IsADirectoryError):
        return f"{display}: is a directory"
    return f"{display}: cannot read: {exc.strerror or type(exc).__name__}"


def _write(path: Path, text: str) -> None:
    """Replace the file atomically, keeping its mode; through a symlink, the target is replaced."""
    target = Path(os.path.realpath(path))
    mode = target.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def _diff(display: str, old: str, new: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{display}", f"b/{display}"
    )
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def inject_paths(
    paths: list[str],
    *,
    write: bool,
    out: TextIO,
    check: bool,
    diff: bool,
    options: InjectOptions,
    err: TextIO,
    stdin: TextIO | None = None,
    verbose: bool = False,
    summary: bool = False,
) -> int:
    """Patch files, directories (recursively: *.yaml, *.yml, *.json) and "-" (stdin).

    Modes: `check` lists what is not instrumented (exit 1 if anything, else 0) and changes nothing;
    `diff` prints a unified diff; `write` rewrites changed files in place (stdin goes to `out`); with
    none of them the patched text goes to `out`. Warnings go to `err` (info notes too when `verbose`), and
    with `summary` a closing count of wrapped, stale and unwrapped steps. Exit 2 when an input
    could not be read or patched (the other inputs are still processed).
    """
    stdin = stdin if stdin is not None else sys.stdin
    resolve = _resolver(options)
    status = 0
    pending = 0
    printed = False
    tally = _Tally()
    if not paths:
        err.write("error: no input files\n")
        return 2
    for display, path, explicit in _expand(paths, err):
        try:
            text = _read(path, stdin)
        except (OSError, UnicodeDecodeError) as exc:
            if not explicit and isinstance(exc, UnicodeDecodeError):
                err.write(f"warning: {read_problem(display, exc)}; skipped\n")
                continue
            err.write(f"error: {read_problem(display, exc)}\n")
            status = 2
            continue
        fmt: documents.Format = "json" if display.endswith(".json") else "auto"
        try:
            result = _patch(text, options, display, fmt, resolve)
        except ParseError as exc:
            if not explicit:
                err.write(f"warning: {display}: skipped, {exc.problems[0].message.splitlines()[0]}\n")
                continue
            _errors(err, exc)
            status = 2
            continue
        except InjectError as exc:
            _errors(err, exc)
            status = 2
            continue
        tally.add(result)
        if explicit and not result.resources:
            err.write(f"warning: {display}: no Tekton Task, Pipeline or StepAction in it\n")
        for note in result.notes:
            if note.level == "warning" or verbose:
                err.write(f"{note}\n")
        if check:
            for line in result.pending():
                out.write(f"{line}\n")
                pending += 1
            continue
        if diff and result.changed:
            out.write(_diff(display, text, result.text))
        if write and path is not None:
            if result.changed:
                try:
                    _write(path, result.text)
                except OSError as exc:
                    err.write(f"error: {display}: cannot write: {exc.strerror or type(exc).__name__}\n")
                    status = 2
        elif not diff:
            if printed and not result.text.lstrip("\ufeff").startswith("---"):
                out.write("---\n")
            out.write(result.text)
            if result.text and not result.text.endswith("\n"):
                out.write("\n")
            printed = True
    if summary:
        err.write(tally.summary(check) + "\n")
    if status:
        return status
    return 1 if check and pending else 0


class _Tally:
    """The closing line: how many steps are traced, and why the others are not."""

    def __init__(self) -> None:
        self.files = 0
        self.resources = 0
        self.stale_additions = 0
        self.states: dict[str, int] = {}
        self.reasons: dict[str, int] = {}

    def add(self, result: PatchResult) -> None:
        self.files += 1
        self.resources += result.resources
        self.stale_additions += len(result.additions_stale)
        for step in result.steps:
            self.states[step.state] = self.states.get(step.state, 0) + 1
            if step.state == "unwrapped":
                reason = step.reason
                if "entrypoint" in reason.lower():
                    reason = "run their image's ENTRYPOINT, which needs --resolve-entrypoints or a command"
                self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def summary(self, check: bool) -> str:
        wrapped, already = self.states.get("wrapped", 0), self.states.get("already", 0)
        parts = [_count(self.files, "file"), f"{_count(wrapped, 'step')} {'to wrap' if check else 'wrapped'}"]
        parts.append(f"{already} already wrapped")
        if self.states.get("stale"):
            parts.append(f"{self.states['stale']} stale {'to update' if check else 'updated'}")
        if self.stale_additions:
            specs = _count(self.stale_additions, "Task spec")
            parts.append(f"{specs} with a stale sidecar, volumes or mounts {'to update' if check else 'updated'}")
        if self.states.get("ref"):
            refs = _count(self.states["ref"], "StepAction reference")
            parts.append(f"{refs} (traced through the StepAction)")
        line = "step-tracer inject: " + ", ".join(parts)
        if self.files and not self.resources:
            line += "; no Tekton Task, Pipeline or StepAction found"
        unwrapped = self.states.get("unwrapped", 0)
        if unwrapped:
            why = "; ".join(f"{n} {reason}" for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
            line += f"; {unwrapped} left unwrapped ({why})"
        return line


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _errors(err: TextIO, exc: InjectError) -> None:
    for problem in exc.problems:
        err.write(f"error: {problem}\n")

"""`step-tracer run`: spawn, wait, measure, record.

The order of work is the product: nothing that can fail or take time happens between the command's end and the
wrapper's exit except writing the span, and no failure of ours changes what the step sees. Modelled on Tekton's
pkg/entrypoint: this module decides, `process` runs the child, `sampler`/`cgroup` measure, `export` ships.
"""

from __future__ import annotations

import os
import sys
import time

from step_tracer import context
from step_tracer.span import STATUS_ERROR, Batch, Event, Span
from step_tracer.wrapper import cgroup, options, outcome, process

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~20 ms here)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from step_tracer.export.settings import Settings
    from step_tracer.span import Attributes
    from step_tracer.wrapper.outcome import Outcome
    from step_tracer.wrapper.sampler import TreeSampler

#: Time kept after Tekton's step timeout hits for writing the span: the entrypoint SIGKILLs us at the timeout.
_EXPORT_RESERVE_S = 1.0


def _warn(message: str) -> None:
    sys.stderr.write(f"step-tracer: {message}\n")
    sys.stderr.flush()


def effective_timeout(opts: options.RunOptions) -> tuple[float | None, float]:
    """(seconds until SIGTERM, grace until SIGKILL): `--timeout` as given, or early enough under a Tekton step
    timeout that the child is gone and the span written before Tekton's SIGKILL."""
    timeout, grace = opts.timeout, opts.kill_after
    step = opts.tekton_step_timeout
    if step is not None and step > 0:
        reserve = min(_EXPORT_RESERVE_S, step * 0.1)
        step_grace = min(grace, step * 0.2)
        term_at = step - step_grace - reserve
        if timeout is None or term_at < timeout:
            timeout, grace = term_at, step_grace
    return timeout, grace


def parent_context(env: Mapping[str, str]) -> context.SpanContext | None:
    value = env.get("TRACEPARENT")
    if not value:
        return None
    parent = context.parse_traceparent(value, env.get("TRACESTATE", ""))
    if parent is None:
        _warn(f"ignoring malformed TRACEPARENT {value[:80]!r}; starting a new trace")
    return parent


def _executable_path(command: str, env: Mapping[str, str]) -> str:
    if "/" in command:
        return os.path.abspath(command)
    for directory in env.get("PATH", os.defpath).split(":"):
        candidate = os.path.join(directory or ".", command)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return os.path.abspath(candidate)
    return ""


def describe(
    opts: options.RunOptions,
    span: Span,
    end: Outcome,
    *,
    pid: int = 0,
    exit_code: int,
    env: Mapping[str, str],
) -> None:
    """Fill in the attributes and status every step span carries (README: the span contract)."""
    attrs: Attributes = {
        "process.command": opts.command[0],
        "process.executable.name": os.path.basename(opts.command[0]),
        "process.exit.code": exit_code,
        "process.parent_pid": os.getpid(),
        "cicd.pipeline.task.run.result": end.result,
    }
    if pid:
        attrs["process.pid"] = pid
    path = _executable_path(opts.command[0], env)
    if path:
        attrs["process.executable.path"] = path
    if opts.record_args:
        from step_tracer.wrapper.redact import redact

        attrs["process.command_args"] = redact(list(opts.command))
    if end.error_type:
        attrs["error.type"] = end.error_type
        span.status_code = STATUS_ERROR
        span.status_message = end.message
    if opts.tekton_step:
        attrs["tekton.step.name"] = opts.tekton_step
    if opts.tekton_step_index is not None:
        attrs["tekton.step.index"] = opts.tekton_step_index
    if opts.tekton_step_timeout is not None:
        attrs["tekton.step.timeout"] = opts.tekton_step_timeout
    attrs.update(opts.attrs)
    span.attributes.update(attrs)


def _usage(child: process.ChildExit, sampler: TreeSampler | None) -> Attributes:
    attrs: Attributes = {}
    ru = child.rusage
    peak = 0
    if ru is not None:
        attrs["process.cpu.time.user"] = ru.ru_utime
        attrs["process.cpu.time.system"] = ru.ru_stime
        peak = ru.ru_maxrss * 1024
        attrs["process.disk.io.read"] = ru.ru_inblock * 512
        attrs["process.disk.io.write"] = ru.ru_oublock * 512
    if sampler is not None:
        peak = max(peak, sampler.peak_rss)
    if peak:
        attrs["process.memory.peak"] = peak
    return attrs


def _events(child: process.ChildExit) -> list[Event]:
    return [Event("signal.forwarded", t, {"signal": process.signal_name(s)}) for t, s in child.forwarded]


def _exec_untraced(command: list[str]) -> int:
    """Replace the wrapper with the command: tracing is off, so it should not even be in the process tree."""
    try:
        process.replace(command)
    except process.SpawnError as err:
        _warn(str(err))
        return err.exit_code


def main(argv: list[str]) -> int:
    """Run the step; whatever goes wrong on our side, the command still runs and its exit code is returned."""
    try:
        opts = options.parse(argv)
    except options.UsageError as err:
        if err.command:
            _warn(f"{err}; running the command untraced")
            return _exec_untraced(err.command)
        _warn(f"{err} (see step-tracer run --help)")
        return 2
    try:
        traced = _prepare(opts)
    except Exception as err:  # our bug must not become the step's failure
        _warn(f"internal error before the command started ({err!r}); running it untraced")
        return _exec_untraced(opts.command)
    if traced is None:
        return _exec_untraced(opts.command)
    return _run_traced(opts, *traced)


def _prepare(opts: options.RunOptions) -> tuple[Settings, Span, dict[str, str]] | None:
    """Settings, the step's span (ids, parent) and the child's environment; None when tracing is off."""
    from step_tracer.export.settings import Settings

    env = os.environ
    settings = Settings.from_env(env, _warn)
    if settings.disabled:
        return None
    parent = parent_context(env)
    trace_id = parent.trace_id if parent else context.new_trace_id()
    flags = parent.trace_flags if parent else 1
    span = Span(
        opts.name or opts.tekton_step or os.path.basename(opts.command[0]),
        trace_id,
        context.new_span_id(),
        parent.span_id if parent else "",
        trace_state=parent.trace_state if parent else "",
        trace_flags=flags,
    )
    child_env = dict(env)
    child_env["TRACEPARENT"] = context.SpanContext(trace_id, span.span_id, flags).traceparent()
    if span.trace_state:
        child_env["TRACESTATE"] = span.trace_state
    return settings, span, child_env


def _run_traced(opts: options.RunOptions, settings: Settings, span: Span, child_env: dict[str, str]) -> int:
    timeout, grace = effective_timeout(opts)
    sampler: TreeSampler | None = None
    if opts.sample_interval > 0:
        from step_tracer.wrapper.sampler import TreeSampler

        sampler = TreeSampler(opts.sample_interval)
    cgroup_before = cgroup.snapshot()
    span.start_ns = time.time_ns()
    started = time.monotonic_ns()
    try:
        child = process.run(opts.command, child_env, timeout=timeout, kill_after=grace, sampler=sampler)
    except process.SpawnError as err:
        span.end_ns = span.start_ns + (time.monotonic_ns() - started)
        _warn(str(err))
        describe(opts, span, outcome.not_started(err.exit_code, str(err)), exit_code=err.exit_code, env=child_env)
        return _finish(span, settings, err.exit_code)
    span.end_ns = span.start_ns + (time.monotonic_ns() - started)
    try:
        usage = _usage(child, sampler)
        cgroup_after = cgroup.snapshot()
        if cgroup_before is not None and cgroup_after is not None:
            usage.update(cgroup.usage_attributes(cgroup_before, cgroup_after))
        oom_kills = usage.get("container.memory.oom_kills", 0)
        end = outcome.classify(child, oom_kills if isinstance(oom_kills, int) else 0, timeout)
        describe(opts, span, end, pid=child.pid, exit_code=child.exit_code, env=child_env)
        span.attributes.update(usage)
        span.events = _events(child)
    except Exception as err:
        _warn(f"internal error while recording the span ({err!r}); the step's result is unchanged")
        return child.exit_code
    return _finish(span, settings, child.exit_code)


def _finish(span: Span, settings: Settings, exit_code: int) -> int:
    try:
        from step_tracer.export import export

        result = export([Batch(settings.resource, [span])], settings, err=sys.stderr)
    except Exception as err:
        _warn(f"internal error while exporting the span ({err!r}); the step's result is unchanged")
        return exit_code
    if result.abandoned:
        sys.stderr.flush()
        os._exit(exit_code)
    return exit_code
